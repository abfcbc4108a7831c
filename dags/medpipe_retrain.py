"""
### medpipe_retrain — retrain the normal / benign / cancer classifier and publish a better model

Every run: resolve the config → validate the dataset → build the decoded-image cache → train the custom CNN
and ResNet-18 side by side (pool `gpu`, queue `$MEDPIPE_GPU_QUEUE`) → evaluate both → gate the better one
(absolute thresholds, majority-class baseline, not worse than the current champion) → export it to ONNX
(parity-checked against torch) → stage its version folder (ONNX, metrics, model card, plots, gate decision,
config) → publish it to the model store and move the champion pointer. The publish task's "Model page" link
opens the version in the Models page (Browse → Models).

A failed gate is not an error: `gate_passed` short-circuits, export and publish are skipped, the champion
stays, and the reasons are in the `gate` task's log and XCom (and in `gate.json` of the run folder).
Publishing updates the Asset `medpipe://champion`, which schedules `medpipe_score`.

**Params**: `data_root` (train/val[/test]/<class>/ images), `config` (YAML; empty = packaged defaults),
`overrides` (`section.key=value` strings), `store_uri` (directory or `s3://bucket/prefix`), `work_root`.
Outputs of a run live in `<work_root>/<run id>/`, so a retried task rewrites its own files. Each task body
imports medpipe inside the task and calls one medpipe stage function (see docs/stages.md).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task
from airflow.sdk.exceptions import AirflowFailException

from medpipe_plugin import settings
from medpipe_plugin.dag_common import common_params, default_args, load_run_config, resolve_config, run_dir
from medpipe_plugin.operators import PublishModelOperator

_logger = logging.getLogger(__name__)

MODEL_NAMES = ("custom_cnn", "resnet18")
DEFAULT_ARGS = default_args(retry_delay=timedelta(minutes=2), max_retry_delay=timedelta(minutes=30))


@task
def validate_data(config_path: str) -> str:
    """Check the dataset; errors (unreadable files, leakage, missing splits ...) fail the run without retries."""
    from medpipe.data.validate import validate_dataset

    data_root = get_current_context()["params"]["data_root"]
    report = validate_dataset(data_root, load_run_config(config_path), run_dir() / "validation")
    if not report.ok:  # bad data does not get better by retrying
        raise AirflowFailException(f"dataset {data_root} failed validation ({len(report.errors)} errors); "
                                   f"see {report.md_path}")
    return str(report.json_path)


@task
def build_cache(config_path: str) -> str:
    """Decode every image once at training size; reused by later runs while the dataset is unchanged."""
    from medpipe.data.cache import build_cache as _build_cache

    return str(_build_cache(get_current_context()["params"]["data_root"], load_run_config(config_path)))


@task(pool=settings.gpu_pool(), pool_slots=1, queue=settings.gpu_queue())
def train(model_name: str, cache_dir: str, config_path: str) -> str:
    """Train one model; a retry resumes from the last epoch checkpoint of the failed try."""
    from medpipe.train import train_model

    out_dir = run_dir() / "models" / model_name
    return str(train_model(cache_dir, model_name, load_run_config(config_path), out_dir,
                           resume=(out_dir / "last.pt").exists()))


@task
def evaluate(model_dir: str, cache_dir: str, config_path: str) -> str:
    """Metrics (val + test), plots and the model card of one trained model; returns metrics.json."""
    from medpipe.evaluate.stage import evaluate_model

    return str(evaluate_model(Path(model_dir) / "best.pt", cache_dir, load_run_config(config_path), Path(model_dir) / "eval"))


@task
def gate(metrics_paths: dict[str, str], cache_dir: str, config_path: str) -> dict[str, Any]:
    """Pick the challenger and check it against thresholds, the baseline and the current champion."""
    from medpipe.gate import gate_models
    from medpipe.store import open_store

    cfg = load_run_config(config_path)
    return gate_models({name: Path(p) for name, p in metrics_paths.items()}, cfg, run_dir() / "gate.json",
                       store=open_store(cfg.store), cache_dir=Path(cache_dir))


@task.short_circuit
def gate_passed(decision: dict[str, Any]) -> bool:
    """Continue to export/publish only when the gate passed; otherwise they are skipped (not failed)."""
    reasons = decision.get("reasons") or []
    if decision.get("passed"):
        _logger.info("challenger %s passed the gate: %s", decision.get("challenger"), "; ".join(map(str, reasons)))
        return True
    _logger.warning("challenger %s did not pass the gate; export and publish are skipped, the champion stays. "
                    "Reasons: %s", decision.get("challenger"), "; ".join(map(str, reasons)) or "none given")
    return False


def _version() -> str:
    context = get_current_context()
    return settings.model_version(context["run_id"], context["dag_run"].run_after)


@task
def export(decision: dict[str, Any], model_dirs: dict[str, str], metrics_paths: dict[str, str], cache_dir: str,
           config_path: str) -> str:
    """Export the challenger to ONNX with its version in the metadata; refused when ONNX and torch disagree."""
    from medpipe.export import export_onnx

    name = decision["challenger"]
    return str(export_onnx(Path(model_dirs[name]) / "best.pt", cache_dir, load_run_config(config_path),
                           run_dir() / "release" / "model.onnx", metrics_path=metrics_paths[name],
                           version=_version()))


@task
def stage_release(onnx_path: str, decision: dict[str, Any], metrics_paths: dict[str, str],
                  config_path: str) -> dict[str, str]:
    """Gather what a registry version holds beside model.onnx: metrics, model card, plots, gate decision, config.

    The same folder `medpipe export` writes for `medpipe publish`; copies (atomic), so the run folder can be
    cleaned without touching what was staged.
    """
    from medpipe.release import stage_release_files

    release = Path(onnx_path).parent
    eval_dir = Path(metrics_paths[decision["challenger"]]).parent
    stage_release_files(eval_dir, release, run_dir() / "gate.json", config_path)
    return {"version_dir": str(release), "model_name": decision["challenger"], "version": _version()}


@dag(
    dag_id="medpipe_retrain",
    schedule=settings.retrain_schedule(),
    start_date=datetime(2025, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=["medpipe", "training"],
    doc_md=__doc__,
    params={
        "data_root": Param(settings.data_root(), type="string", description="dataset root folder"),
        **common_params("train.epochs=5"),
    },
)
def medpipe_retrain() -> None:
    config_path = resolve_config()
    cache_dir = build_cache(config_path)
    validate_data(config_path) >> cache_dir
    model_dirs = {name: train.override(task_id=f"train_{name}")(name, cache_dir, config_path) for name in MODEL_NAMES}
    metrics = {name: evaluate.override(task_id=f"evaluate_{name}")(model_dirs[name], cache_dir, config_path)
               for name in MODEL_NAMES}
    decision = gate(metrics, cache_dir, config_path)
    onnx_path = export(decision, model_dirs, metrics, cache_dir, config_path)
    gate_passed(decision) >> onnx_path
    PublishModelOperator(
        task_id="publish",
        release=stage_release(onnx_path, decision, metrics, config_path),
        config_path=config_path,
        outlets=[settings.CHAMPION_ASSET],
    )

medpipe_retrain()
