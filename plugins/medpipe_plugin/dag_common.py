"""Pieces both medpipe DAGs use: retry policy, the run folder, and the task that resolves the config.

Kept here (not in medpipe) because they need the Airflow task context; medpipe itself never imports Airflow.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import Param, get_current_context, task

from medpipe_plugin import settings

if TYPE_CHECKING:
    from medpipe.config import Config

__all__ = ["default_args", "common_params", "run_dir", "load_run_config", "resolve_config"]


def default_args(retry_delay: timedelta, max_retry_delay: timedelta) -> dict[str, Any]:
    """Retries with exponential backoff: the delay doubles with every try, capped at max_retry_delay."""
    return {"owner": "medpipe", "retries": settings.task_retries(), "retry_delay": retry_delay,
            "retry_exponential_backoff": 2.0, "max_retry_delay": max_retry_delay}


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
