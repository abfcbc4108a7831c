"""Pieces the medpipe DAGs use: retry policy, the run folder, the task that resolves the config, and the two
tasks the retraining DAG is made of (`start` and one `stage` task per medpipe stage).

Kept here (not in medpipe) because they need the Airflow task context; medpipe itself never imports Airflow.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import Param, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from medpipe_plugin import k8s, settings
from medpipe_plugin.aws import store_connection

if TYPE_CHECKING:
    from medpipe.config import Config
    from medpipe.run_folder import RunFolder

__all__ = ["default_args", "dag_arguments", "common_params", "run_dir", "load_run_config", "resolve_config", "start",
           "run_stage_task", "open_run", "announced_model"]


def default_args(retry_delay: timedelta, max_retry_delay: timedelta) -> dict[str, Any]:
    """Retries with exponential backoff: the delay doubles with every try, capped at max_retry_delay.

    Every task gets `MEDPIPE_TASK_TIMEOUT_MIN` as its execution_timeout (training tasks override it with
    `MEDPIPE_TRAIN_TIMEOUT_MIN`): a try past it is stopped and retried like any other failure.
    """
    # Under the KubernetesExecutor every task's pod mounts the work volume (k8s.py); GPU tasks replace this with
    # their own pod_override (GPUs, GPU nodes, the same volume).
    return {"owner": "medpipe", "retries": settings.task_retries(), "retry_delay": retry_delay,
            "retry_exponential_backoff": 2.0, "max_retry_delay": max_retry_delay,
            "execution_timeout": settings.task_timeout(), **k8s.pod_placement(gpus=0)}


def dag_arguments() -> dict[str, Any]:
    """What every medpipe DAG shares: no catch-up, one run at a time, the run timeout."""
    return {"start_date": datetime(2025, 1, 1), "catchup": False, "max_active_runs": 1,
            "dagrun_timeout": settings.dagrun_timeout()}


def common_params(overrides_example: str) -> dict[str, Param]:
    """The params every medpipe DAG takes: config file, overrides, model store and work folder."""
    return {
        "config": Param(settings.config_path(), type="string", description="config YAML ('' = packaged defaults)"),
        "overrides": Param([], type="array", items={"type": "string"},
                           description=f"config overrides, e.g. {overrides_example}"),
        "store_uri": Param(settings.store_uri(), type="string", description="model store: folder or s3://bucket/prefix"),
        "work_root": Param(settings.work_root(), type="string", description="folder for per-run working files"),
    }


def run_dir() -> Path:
    """This run's working folder: <work_root>/<run id>, so a retried task rewrites its own files."""
    context = get_current_context()
    return settings.run_dir(context["params"]["work_root"], context["run_id"])


def load_run_config(config_path: str) -> Config:
    """The config resolve_config saved for this run (heavy imports stay inside tasks)."""
    from medpipe.config import load_config

    return load_config(config_path)


@task
def resolve_config() -> str:
    """Load the config file + overrides once and save it in the run folder; later tasks read that copy."""
    from medpipe.config import load_config, save_config

    params = get_current_context()["params"]
    overrides = settings.config_overrides(params["work_root"], params["store_uri"], params["overrides"])
    cfg = load_config(params["config"] or None, overrides)
    return str(save_config(cfg, run_dir() / "config.yaml"))


def _run_config() -> Config:
    from medpipe.config import load_config

    params = get_current_context()["params"]
    overrides = settings.config_overrides(params["work_root"], params["store_uri"], params["overrides"])
    return load_config(params["config"] or None, overrides)


@task
def start() -> str:
    """medpipe's first stage: resolve the config, check the pretrained weights, hash the dataset and make the run
    folder (config.yaml, run.json). A retry of this run finds the same identity and goes on."""
    from medpipe.config import ConfigError
    from medpipe.run_folder import RunFolderError
    from medpipe.stages import start_run

    try:
        run = start_run(run_dir(), _run_config(), get_current_context()["params"]["data_root"], resume=True)
    except (ConfigError, RunFolderError) as exc:  # bad settings or another run's folder: retrying cannot help
        raise AirflowFailException(str(exc)) from exc
    return str(run.root)


def open_run() -> RunFolder:
    """This DAG run's run folder, made by `start`."""
    from medpipe.run_folder import RunFolder

    return RunFolder.open(run_dir())


def _jsonable(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


@task
def run_stage_task(stage: str, model: str | None = None, gpus: int = 1) -> Any:
    """One medpipe stage on this run's folder (medpipe.stages.run_stage); its inputs and outputs are files there.

    A model the run's config does not train (models.names) is skipped; a dataset that fails validation fails the
    run at once, without retries: bad data does not get better by retrying. `gpus` > 1 (train only, with as many
    pool slots): the stage leases that many GPUs and launches torchrun on them (medpipe.stages.train).
    """
    from medpipe.stages import PipelineError, run_stage

    run = open_run()
    cfg = run.config()
    options: dict[str, Any] = {}  # not **kwargs: a TaskFlow function's **kwargs receives the Airflow context
    if stage == "export":  # the registry version: sortable, unique per DAG run, the same on every retry
        context = get_current_context()
        options["version"] = settings.model_version(context["run_id"], context["dag_run"].run_after)
    if gpus > 1:
        options["gpus"] = gpus
    if stage == "record":  # the Runs view links each record to its Airflow run
        context = get_current_context()
        options.update(dag_id=context["dag_run"].dag_id, dag_run_id=context["run_id"])
    if model is not None and model not in cfg.models.names:
        raise AirflowSkipException(f"{model} is not in models.names {list(cfg.models.names)} of this run")
    try:
        with store_connection():  # gate reads the champion from the store, publish writes to it
            return _jsonable(run_stage(stage, run, cfg, model, **options))
    except PipelineError as exc:
        raise AirflowFailException(str(exc)) from exc


def announced_model(triggering_events: Any) -> dict[str, str] | None:
    """{"model_name", "version", "sha256"} from the newest champion Asset event that triggered this run (the
    publish task puts them in the event's extra), or None: a manual run, or events from before they carried it."""
    if not triggering_events:
        return None
    events = list(triggering_events.get(settings.CHAMPION_ASSET, None) or [])
    for event in reversed(events):  # several publishes queued into one run: the newest wins
        extra = dict(getattr(event, "extra", None) or {})
        if extra.get("model_name") and extra.get("version"):
            return {key: str(extra[key]) for key in ("model_name", "version", "sha256") if extra.get(key)}
    return None
