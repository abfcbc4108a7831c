"""
### medpipe_retrain — retrain the normal / benign / cancer classifier and publish a better model

One task per stage of `medpipe.stages.STAGES`, in that order — the same stages `medpipe run --ship` runs (and
`medpipe run`, `gate`, `export`, `publish`, `record` one by one): `start` (resolve the config, check the pretrained
weights, hash the dataset, make the run folder) → `validate` → `cache` → `train_<model>` (pool `gpu`, queue
`$MEDPIPE_GPU_QUEUE`, the models side by side;
`$MEDPIPE_GPUS_PER_MODEL` pool slots each, and above 1 the task leases that many GPUs and trains under
`torchrun --standalone --nproc_per_node=N -m medpipe stage train`) → `evaluate_<model>` → `ensemble` (the mean of the models as one
more candidate; `evaluate.ensemble`) → `summarize` → `gate` → `export` (side files first, model.onnx last,
parity-checked against torch) → `publish` (to the model store, champion pointer last) → `record` (the run record,
`runs/<run_id>/record.json` in the store, shown in the Runs view; written whether the gate passed or not). The
publish task's "Model page" link opens the version in the Models page (Browse → Models).

A failed gate is not an error: `gate_passed` short-circuits, export and publish are skipped, the champion
stays, and the reasons are in the `gate` task's log and XCom, in `gate.json` of the run folder and in the run
record.
Publishing updates the Asset `medpipe://champion`, which schedules `medpipe_score`.

**Params**: `data_root` (train/val[/test]/<class>/ images), `config` (YAML; empty = packaged defaults),
`overrides` (`section.key=value` strings), `store_uri` (directory or `s3://bucket/prefix`), `work_root`.
A run's folder is `<work_root>/<run id>/`, laid out as `medpipe run` lays out its `--out` (medpipe.run_folder);
a retried task finds its stage's finished outputs there and does not redo them. Each task calls one medpipe stage
(docs/stages.md).

**Timeouts**: a training try is stopped after `$MEDPIPE_TRAIN_TIMEOUT_MIN` (12 h) and its retry resumes from the
`last.pt` of its last finished epoch; every other task after `$MEDPIPE_TASK_TIMEOUT_MIN` (2 h); a whole run is
failed after `$MEDPIPE_DAGRUN_TIMEOUT_MIN` (48 h).
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from airflow.sdk import Param, dag, task

from medpipe.config_training import MODEL_NAMES
from medpipe.stages import STAGES
from medpipe_plugin import k8s, settings
from medpipe_plugin.dag_common import common_params, dag_arguments, default_args, run_stage_task, start
from medpipe_plugin.operators import PublishModelOperator

_logger = logging.getLogger(__name__)

# MODEL_NAMES (medpipe.config_training): a task pair each; a model the run's models.names leaves out is skipped.
DEFAULT_ARGS = default_args(retry_delay=timedelta(minutes=2), max_retry_delay=timedelta(minutes=30))


# Only export (the direct downstream) is skipped; publish follows as skipped, and `record` (trigger rule none_failed)
# still runs: a rejected challenger's run is recorded too.
@task.short_circuit(ignore_downstream_trigger_rules=False)
def gate_passed(decision: dict[str, Any]) -> bool:
    """Continue to export/publish only when the gate passed; otherwise they are skipped (not failed)."""
    reasons = decision.get("reasons") or []
    if decision.get("passed"):
        _logger.info("challenger %s passed the gate: %s", decision.get("challenger"), "; ".join(map(str, reasons)))
        return True
    _logger.warning("challenger %s did not pass the gate; export and publish are skipped, the champion stays. "
                    "Reasons: %s", decision.get("challenger"), "; ".join(map(str, reasons)) or "none given")
    return False


def _wire(upstream: list[Any], tasks: list[Any]) -> None:
    """Per-model chains run side by side (train_m -> evaluate_m); otherwise every upstream task comes first."""
    if len(upstream) == len(tasks) > 1:
        for before, after in zip(upstream, tasks):
            before >> after
    else:
        for before in upstream:
            before >> tasks


def _stage_tasks(stage: Any, run_root: Any) -> list[Any]:
    """The task(s) of one medpipe stage: one per model for per-model stages."""
    if stage.name == "publish":  # an operator, for its "Model page" extra link
        return [PublishModelOperator(task_id="publish", run_dir=run_root, outlets=[settings.CHAMPION_ASSET])]
    placement = {"pool": settings.gpu_pool(), "pool_slots": 1, "queue": settings.gpu_queue()} if stage.gpu else {}
    extra: dict[str, Any] = {}
    if stage.name == "train":  # a timed-out try leaves last.pt (written at every epoch end); its retry resumes
        placement["execution_timeout"] = settings.train_timeout()
        # $MEDPIPE_GPUS_PER_MODEL GPUs per training: as many pool slots, and torchrun over them when above 1
        placement["pool_slots"] = settings.gpus_per_model()
        if placement["pool_slots"] > 1:
            extra["gpus"] = placement["pool_slots"]
    if stage.gpu:  # KubernetesExecutor: a pod with as many GPUs as the task holds pool slots (else nothing)
        placement.update(k8s.pod_placement(gpus=placement["pool_slots"]))
    if stage.per_model:
        return [run_stage_task.override(task_id=f"{stage.name}_{model}", **placement)(stage.name, model, **extra)
                for model in MODEL_NAMES]
    # After per-model stages: go on when at least one model ran and none failed (a model left out is skipped).
    # The record comes after publish whether it ran or was skipped by the gate.
    rule = "none_failed" if stage.name == "record" else "none_failed_min_one_success"
    return [run_stage_task.override(task_id=stage.name, trigger_rule=rule)(stage.name)]


@dag(
    dag_id="medpipe_retrain",
    schedule=settings.retrain_schedule(),
    default_args=DEFAULT_ARGS,
    tags=["medpipe", "training"],
    doc_md=__doc__,
    **dag_arguments(),
    params={
        "data_root": Param(settings.data_root(), type="string", description="dataset root folder"),
        **common_params("train.epochs=5"),
    },
)
def medpipe_retrain() -> None:
    run_root = start()
    upstream = [run_root]
    for stage in STAGES[1:]:
        tasks = _stage_tasks(stage, run_root)
        _wire(upstream, tasks)
        if stage.name == "gate":  # export and publish only for a challenger that passed
            passed = gate_passed(tasks[0])
            tasks = [passed]
        upstream = tasks


medpipe_retrain()
