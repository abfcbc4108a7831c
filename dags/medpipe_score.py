"""
### medpipe_score — score a folder of images with the champion model

Runs whenever `medpipe_retrain` publishes a new champion (it is scheduled on the Asset `medpipe://champion`)
and on demand. Tasks: resolve the config → download and verify the champion's `model.onnx` (sha256 against
the registry) → score every image under `input` with ONNX Runtime → upload the predictions CSV (and the CSV
of files that could not be scored) to the store as `scores/<run id>/`.

**Params**: `input` (folder of images; default `$MEDPIPE_SCORE_INBOX` or the bundled sample), `config`,
`overrides`, `store_uri`, `work_root` (as in `medpipe_retrain`). Outputs of a run live in
`<work_root>/<run id>/`; the uploaded keys are keyed by run id, so a retry rewrites the same objects.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import Param, dag, get_current_context, task

from medpipe_plugin import settings

if TYPE_CHECKING:
    from medpipe.config import Config

DEFAULT_ARGS: dict[str, Any] = {
    "owner": "medpipe",
    "retries": settings.task_retries(),
    "retry_delay": timedelta(minutes=1),
    "retry_exponential_backoff": 2.0,
    "max_retry_delay": timedelta(minutes=15),
}


def _run_dir() -> Path:
    context = get_current_context()
    return settings.run_dir(context["params"]["work_root"], context["run_id"])


def _load(config_path: str) -> Config:
    from medpipe.config import load_config

    return load_config(config_path)


@task
def resolve_config() -> str:
    """Load the config file + overrides once and save it in the run folder; later tasks read that copy."""
    from medpipe.config import load_config, save_config

    params = get_current_context()["params"]
    overrides = settings.config_overrides(params["work_root"], params["store_uri"], params["overrides"])
    cfg = load_config(params["config"] or None, overrides)
    return str(save_config(cfg, _run_dir() / "config.yaml"))


@task
def resolve_champion(config_path: str) -> dict[str, Any]:
    """Download the champion's model.onnx and check its sha256 against the registry."""
    from medpipe.registry import resolve_model
    from medpipe.store import open_store

    onnx_path, info = resolve_model(open_store(_load(config_path).store), "champion", _run_dir() / "model")
    return {"onnx": str(onnx_path), "model_name": info["model_name"], "version": info["version"],
            "sha256": info["sha256"]}


@task(pool=settings.gpu_pool(), pool_slots=1, queue=settings.gpu_queue())
def score(champion: dict[str, Any], config_path: str) -> dict[str, Any]:
    """Score every image of the input folder; unreadable files are listed in the errors CSV, not fatal.

    `resume=True`: a retry keeps the rows the failed try already wrote and scores only the rest.
    """
    from medpipe.score import score_folder

    input_dir = get_current_context()["params"]["input"]
    return score_folder(champion["onnx"], input_dir, _run_dir() / "predictions.csv", _load(config_path),
                        resume=True)


@task
def upload_results(summary: dict[str, Any], config_path: str) -> list[str]:
    """Put predictions.csv and predictions.errors.csv into the store under scores/<run id>/; returns their URIs."""
    from medpipe.store import open_store

    store = open_store(_load(config_path).store)
    prefix = f"scores/{settings.run_folder_name(get_current_context()['run_id'])}"
    uris = []
    for local in (Path(summary["output"]), Path(summary["errors_file"])):
        store.put_file(f"{prefix}/{local.name}", local)
        uris.append(store.uri(f"{prefix}/{local.name}"))
    return uris


@dag(
    dag_id="medpipe_score",
    schedule=[settings.CHAMPION_ASSET],
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["medpipe", "scoring"],
    doc_md=__doc__,
    params={
        "input": Param(settings.score_inbox(), type="string", description="folder of images to score"),
        "config": Param(settings.config_path(), type="string", description="config YAML ('' = packaged defaults)"),
        "overrides": Param([], type="array", items={"type": "string"},
                           description="config overrides, e.g. score.batch_size=128"),
        "store_uri": Param(settings.store_uri(), type="string", description="model store: folder or s3://bucket/prefix"),
        "work_root": Param(settings.work_root(), type="string", description="folder for per-run working files"),
    },
)
def medpipe_score() -> None:
    config_path = resolve_config()
    upload_results(score(resolve_champion(config_path), config_path), config_path)


medpipe_score()
