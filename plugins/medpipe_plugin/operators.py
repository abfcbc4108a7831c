"""PublishModelOperator: publish one staged model version to the registry, with a link to its Models page.

Why an operator and not a `@task`: an Airflow extra link belongs to an operator *class*
(`operator_extra_links`). In Airflow 3 the worker calls each link's `get_link` after the task ran and stores
the URL in XCom (key `_link_<LinkClass>`); the API server shows that URL on the task instance. A `@task`
function is always a `_PythonDecoratedOperator`, whose class we do not own, so the publish step is this thin
operator: `__init__` stores arguments, `execute` runs medpipe's publish stage once.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

from airflow.sdk import BaseOperator, BaseOperatorLink, conf

from medpipe_plugin import settings
from medpipe_plugin.aws import store_connection

if TYPE_CHECKING:
    from airflow.sdk import Context
    from airflow.sdk.types import TaskInstanceKey

__all__ = ["ModelPageLink", "PublishModelOperator", "model_page_url", "announcement"]

_logger = logging.getLogger(__name__)


def model_page_url(model_name: str, version: str) -> str:
    """Absolute URL when `[api] base_url` is set, else a path on the API server (same origin as the UI)."""
    from medpipe_plugin.app import model_page_path

    base = conf.get("api", "base_url", fallback="/") or "/"
    return urljoin(base.rstrip("/") + "/", model_page_path(model_name, version).lstrip("/"))


def announcement(published: dict[str, Any]) -> dict[str, str]:
    """The champion Asset event's extra: which version was published, and its model.onnx's sha256."""
    return {"model_name": published["model_name"], "version": published["version"],
            "sha256": published["sha256"]}


class ModelPageLink(BaseOperatorLink):
    """"Model page" button on the publish task: the published version on the Models page."""

    name = "Model page"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow.sdk.execution_time.xcom import XCom

        published = XCom.get_value(ti_key=ti_key, key="return_value")
        if not isinstance(published, dict) or "model_name" not in published:
            return ""  # the task did not publish (failed or skipped): no page to link to
        return model_page_url(published["model_name"], published["version"])


class PublishModelOperator(BaseOperator):
    """medpipe's publish stage: upload the run's export as `models/<model_name>/<version>/` and make it champion.

    The DAG reaches this task only after a passed gate, whose gate.json the export copied into the release: that
    verdict is what lets the pointer move (medpipe.registry.promotion); the DAG never promotes by hand.

    Args:
        run_dir: the run folder (an XComArg from the `start` task); its release/ and its config's store are used.
    """

    template_fields = ("run_dir",)
    operator_extra_links = (ModelPageLink(),)
    ui_color = "#ffe8a3"

    def __init__(self, *, run_dir: str | Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.run_dir = run_dir

    def execute(self, context: Context) -> dict[str, Any]:
        from medpipe.run_folder import RunFolder
        from medpipe.stages import run_stage

        run = RunFolder.open(self.run_dir)
        with store_connection():
            result = run_stage("publish", run, run.config())
        # The asset event names the version it announces, so the scoring run it triggers scores that version, not
        # whatever the champion pointer says when it starts (after two quick publishes, the second model twice).
        context["outlet_events"][settings.CHAMPION_ASSET].extra = announcement(result)
        _logger.info("%s %s/%s at %s; champion updated: %s", result["status"], result["model_name"],
                     result["version"], result["uri"], result["champion_updated"])
        return result
