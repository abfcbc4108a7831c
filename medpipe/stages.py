"""The retraining run as one ordered list of stages: `medpipe run` and the `medpipe_retrain` DAG are built from it.

Each stage is a function of the run folder and the config (and the model, for per-model stages) that reads its
inputs from the run folder and writes its outputs there (`medpipe.run_folder`). A stage whose outputs are complete
returns them as they are, so a resumed run or a retried Airflow task never redoes or rewrites finished work.

`medpipe run` runs the core stages in order (start ... ensemble, summarize); `medpipe run --ship` goes on through the
shipping stages (gate, export and publish when the gate passed, record); `medpipe gate`, `medpipe export`,
`medpipe publish` and `medpipe record` run one shipping stage each; the DAG has one task per stage and per model,
in the same order. Every stage's duration goes into the run folder (timings/) for the run record.

Modules that import torch or scikit-learn (the models, evaluation, the gate, the summary) are imported inside the
stage functions: the CLI's `--help` and the DAG files import this module and must not pay their start-up time
(a test checks that importing it loads neither).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medpipe import distributed
from medpipe.config import Config, config_to_dict
from medpipe.contracts import read_gate_decision, read_metrics
from medpipe.data.cache import build_cache, cache_dir_for, dataset_manifest, is_complete
from medpipe.data.validate import format_validation_summary, validate_dataset
from medpipe.device_lease import leased_device, leased_devices
from medpipe.drift import REFERENCE_NAME, write_reference
from medpipe.ensemble import write_ensemble_record
from medpipe.export import export_onnx
from medpipe.paired_predictions import write_paired_predictions
from medpipe.registry import new_version_name, publish_version, validate_name
from medpipe.release import read_release, stage_release_files
from medpipe.run_folder import ENSEMBLE_NAME, ONNX_NAME, PAIRED_NAME, RunFolder, RunFolderError
from medpipe.store import open_store
from medpipe.train import train_model

__all__ = ["Stage", "STAGES", "CORE_STAGES", "PipelineError", "stage", "stage_task_ids", "run_stage",
           "start_run", "run_pipeline", "validate", "cache", "train", "evaluate", "ensemble", "summarize", "gate",
           "export", "publish", "record"]

_logger = logging.getLogger(__name__)


class PipelineError(RuntimeError):
    """A stage refused to go on (validation found hard errors, the gate did not pass before export, ...)."""


def start_run(out_dir: str | Path, cfg: Config, data_root: str | Path, resume: bool = False) -> RunFolder:
    """The first stage: check the pretrained weights (a missing file stops the run in seconds, not after the first
    model trained for an hour), hash the dataset's manifest, and open `out_dir` as this run's folder
    (RunFolder.create: a folder holding another run is refused before anything is written)."""
    from medpipe.models import check_pretrained_weights  # torch stays off the CLI's and DAG files' start-up path

    started, clock = datetime.now(timezone.utc), time.monotonic()
    check_pretrained_weights(cfg)
    manifest, _ = dataset_manifest(data_root, cfg)
    run = RunFolder.create(out_dir, cfg, data_root, manifest["manifest_hash"], resume=resume)
    run.write_timing("start", started, time.monotonic() - clock)
    return run


def validate(run: RunFolder, cfg: Config) -> Path:
    """validation/validation.{json,md}; raises PipelineError when a check of severity "error" fired. A passed
    validation of this run is kept (a resumed run does not validate again)."""
    report_path = run.validation_report_path
    if report_path.is_file() and json.loads(report_path.read_text()).get("ok") is True:
        return report_path
    report = validate_dataset(run.data_root(), cfg, run.validation_dir)
    _logger.info("validation:\n%s", format_validation_summary(report))
    if not report.ok:
        raise PipelineError(f"dataset {run.data_root()} failed validation ({len(report.errors)} errors); see "
                            f"{report.md_path}\n{format_validation_summary(report)}")
    return report.json_path


def cache(run: RunFolder, cfg: Config) -> Path:
    """The decoded-image cache of the run's dataset (shared between runs: keyed by the dataset's content).

    Raises:
        PipelineError: the dataset's files changed since the run started (its manifest is not the run's).
    """
    built = build_cache(run.data_root(), cfg)
    identity = run.identity()
    if identity is not None and built != cache_dir_for(identity.data_manifest_hash, cfg):
        raise PipelineError(f"the dataset under {run.data_root()} changed since this run started (its manifest is "
                            f"no longer {identity.data_manifest_hash[:12]}); start a new run on it")
    return built


def _cache_dir(run: RunFolder, cfg: Config) -> Path:
    """The cache the cache stage made, found from the run's identity without hashing the dataset again; built
    when it is gone (a cleaned cache folder) or the run predates identities."""
    identity = run.identity()
    if identity is not None and is_complete(found := cache_dir_for(identity.data_manifest_hash, cfg)):
        return found
    return cache(run, cfg)


def _on_device(cfg: Config, device: str) -> Config:
    """cfg with train.device set to the device this task holds (a leased "cuda:N" instead of "auto")."""
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, device=device))


def train(run: RunFolder, cfg: Config, model: str, gpus: int = 1) -> Path:
    """models/<model>/: best.pt, last.pt, history.json; continues from last.pt when a try was interrupted. Runs on
    the GPU this task leases (medpipe.device_lease) when train.device is auto or cuda.

    gpus > 1: lease that many GPUs and train under `torchrun --nproc_per_node=<gpus>` (DDP; `medpipe stage train`
    in each rank) with exactly the leased GPUs in CUDA_VISIBLE_DEVICES; the ranks do not lease again (their
    cuda:LOCAL_RANK is one of the leased GPUs). Without GPUs (train.device cpu, or none visible) the ranks run on
    the CPU with gloo. Already inside torchrun (this stage run by a rank), each rank trains its share.
    """
    if run.history_path(model).is_file():
        _logger.info("%s is trained already (%s)", model, run.history_path(model))
        return run.model_dir(model)
    resume = run.checkpoint(model, "last").is_file()
    if distributed.is_distributed():
        distributed.setup(cfg.train.device)
        cache_dir = distributed.on_main(lambda: _cache_dir(run, cfg), f"find or build the cache of {run.root}")
        return train_model(cache_dir, model, cfg, run.model_dir(model), resume=resume)
    if gpus > 1:
        _cache_dir(run, cfg)  # built here, once, rather than by rank 0 while the other ranks wait
        with leased_devices(cfg.train.device, gpus, task=f"train {model} in {run.root}") as names:
            distributed.launch_torchrun(gpus, ["stage", "train", "--run", str(run.root), "--model", model], names)
        return run.model_dir(model)
    with leased_device(cfg.train.device, task=f"train {model} in {run.root}") as device:
        return train_model(_cache_dir(run, cfg), model, _on_device(cfg, device), run.model_dir(model), resume=resume)


def evaluate(run: RunFolder, cfg: Config, model: str) -> Path:
    """models/<model>/eval/: metrics.json (last), predictions, plots, model card (on a leased GPU, as train)."""
    from medpipe.evaluate.stage import evaluate_model  # scikit-learn stays off the CLI's and DAG files' start-up path

    if run.metrics_path(model).is_file():
        return run.metrics_path(model)
    with leased_device(cfg.train.device, task=f"evaluate {model} in {run.root}") as device:
        return evaluate_model(run.checkpoint(model), _cache_dir(run, cfg), _on_device(cfg, device),
                              run.eval_dir(model))


def _with_ensemble(cfg: Config) -> bool:
    return cfg.evaluate.ensemble and len(cfg.models.names) >= 2


def _candidates(run: RunFolder, cfg: Config) -> list[str]:
    """The models the summary and the gate compare: the run's models, and the ensemble when the run made one."""
    names = list(cfg.models.names)
    return names + [ENSEMBLE_NAME] if _with_ensemble(cfg) and run.metrics_path(ENSEMBLE_NAME).is_file() else names


def ensemble(run: RunFolder, cfg: Config) -> Path | None:
    """models/ensemble/: ensemble.json (the members' best.pt and sha256) and eval/ as a model's (medpipe.ensemble);
    None, writing nothing, when evaluate.ensemble is off or the run trains one model."""
    from medpipe.evaluate.ensemble import evaluate_ensemble  # scikit-learn stays off the CLI's and DAG files' start-up path

    if not _with_ensemble(cfg):
        _logger.info("no ensemble: evaluate.ensemble is %s and the run trains %s", cfg.evaluate.ensemble,
                     list(cfg.models.names))
        return None
    if run.metrics_path(ENSEMBLE_NAME).is_file():
        return run.metrics_path(ENSEMBLE_NAME)
    members = run.metrics_paths(list(cfg.models.names))  # every member evaluated
    record = write_ensemble_record({name: run.checkpoint(name) for name in members}, run.ensemble_record_path())
    with leased_device(cfg.train.device, task=f"evaluate the ensemble in {run.root}") as device:
        return evaluate_ensemble(record, _cache_dir(run, cfg), _on_device(cfg, device), run.eval_dir(ENSEMBLE_NAME),
                                 members)


def summarize(run: RunFolder, cfg: Config) -> Path:
    """summary.{json,md}: every model beside the majority baseline; marks the core run finished."""
    from medpipe.pipeline import summarize_models  # scikit-learn stays off the CLI's and DAG files' start-up path

    if run.finished:
        return run.summary_path
    return summarize_models(run.metrics_paths(_candidates(run, cfg)), cfg.evaluate.select_split,
                            (run.summary_path, run.summary_md_path),
                            cfg.data.patient_id_pattern, cfg.evaluate.bootstrap_resamples, data_root=run.data_root(),
                            relative_to=run.root)


def _gate_settings(cfg: Config) -> dict[str, Any]:
    """What a gate decision depends on besides the run: its thresholds and the store holding the champion."""
    return {"gate": config_to_dict(cfg)["gate"], "store": cfg.store.uri}


def gate(run: RunFolder, cfg: Config, decision_path: str | Path | None = None) -> dict[str, Any]:
    """gate.json: the challenger checked against thresholds, the baseline and the champion in cfg.store.

    The run's decision is taken once: asked again with the same gate settings and store, the recorded decision
    is returned (a retried task, a second look); with other settings it is refused, since export and the
    registry rely on it. `decision_path` writes a what-if decision elsewhere (never over an existing file),
    leaving the run's own as it is.
    """
    from medpipe.gate import gate_models  # scikit-learn stays off the CLI's and DAG files' start-up path

    target = Path(decision_path) if decision_path is not None else run.gate_path
    if target.is_file():
        recorded = read_gate_decision(target)
        if recorded.settings not in (None, _gate_settings(cfg)) or decision_path is not None:
            raise RunFolderError(f"{target} holds a gate decision already (taken with {recorded.settings}); it is "
                                 "never rewritten. Pass --decision NEW.json for a decision under other settings, "
                                 "outside the run")
        _logger.info("%s holds the gate's decision already; returning it", target)
        return recorded.to_dict()
    return gate_models(run.metrics_paths(_candidates(run, cfg)), cfg, target, store=open_store(cfg.store),
                       cache_dir=_cache_dir(run, cfg), settings=_gate_settings(cfg))


def _gated_model(run: RunFolder) -> str:
    if not run.gate_path.is_file():
        raise FileNotFoundError(f"{run.gate_path} does not exist: run `medpipe gate --run {run.root}` first, "
                                "or name the model with --model")
    decision = read_gate_decision(run.gate_path)
    if not decision.passed:
        raise PipelineError(f"{run.gate_path}: challenger {decision.challenger} did not pass the gate "
                            f"({'; '.join(decision.reasons)}); pass --model NAME to export it anyway")
    return decision.challenger


def export(run: RunFolder, cfg: Config, version: str | None = None, model: str | None = None,
           out_dir: str | Path | None = None) -> dict[str, str]:
    """release/ (or `out_dir`): the side files, then model.onnx last (a folder holding model.onnx is a finished
    export), parity-checked against torch.

    Args:
        version: recorded in the ONNX metadata; default a UTC timestamp.
        model: default the gate's challenger (which must have passed).
        out_dir: default the run's release/ folder.

    Returns:
        {"version_dir", "model_name", "version"}: what `publish` takes. An export already there is returned as it
        is when it matches the request, and refused when it does not.
    """
    name = model or _gated_model(run)
    out = Path(out_dir) if out_dir is not None else run.release_dir
    existing = read_release(out)
    if existing is not None:
        if (model, version) != (None, None) and (name, version or existing["version"]) != (
                existing["model_name"], existing["version"]):
            raise RunFolderError(f"{out} holds the export of {existing['model_name']} version {existing['version']}; "
                                 f"it is never rewritten (asked: {name} version {version}). Choose another --out")
        return existing
    version = validate_name(version or new_version_name(), "version")
    cache_dir = _cache_dir(run, cfg)
    stage_release_files(run.eval_dir(name), out, run.gate_path, run.config_path)
    _write_drift_reference(cache_dir, run.eval_dir(name), name, out)
    _write_paired_predictions(run, cfg, name, out)
    export_onnx(run.model_source(name), cache_dir, cfg, out / ONNX_NAME, run.metrics_path(name), version)
    return {"version_dir": str(out), "model_name": name, "version": version}


def _write_paired_predictions(run: RunFolder, cfg: Config, name: str, out: Path) -> None:
    """predictions.json on the gate's split (medpipe.paired_predictions), for paired comparisons of published
    versions; a model not evaluated on that split ships without it, and the compare page says so."""
    csv_path = run.eval_dir(name) / f"predictions_{cfg.gate.split}.csv"
    if not csv_path.is_file():
        _logger.info("no %s: %s ships without %s", csv_path, name, PAIRED_NAME)
        return
    report = read_metrics(run.metrics_path(name))
    write_paired_predictions(csv_path, cfg.gate.split, list(report.classes), report.manifest_hash, out / PAIRED_NAME)


def _write_drift_reference(cache_dir: Path, eval_dir: Path, name: str, out: Path) -> None:
    """reference.json beside the model (medpipe.drift): what scored batches are compared with. A run too small
    for one (fewer than drift.MIN_IMAGES train images) ships without it, and its batches say so."""
    try:
        write_reference(cache_dir, eval_dir / "predictions_val.csv", out / REFERENCE_NAME)
    except (ValueError, FileNotFoundError) as exc:
        _logger.warning("%s ships without a drift reference: %s", name, exc)


def publish(run: RunFolder, cfg: Config, release: dict[str, str] | None = None,
            promote: bool = False) -> dict[str, Any]:
    """Upload the release to cfg.store as models/<name>/<version>/ and move the champion pointer (last) when the
    release's gate.json passed that model, or with `promote` (medpipe.registry.promotion)."""
    release = release or read_release(run.release_dir)
    if release is None:
        raise FileNotFoundError(f"{run.release_dir} holds no export: run `medpipe export --run {run.root}` first")
    return publish_version(open_store(cfg.store), Path(release["version_dir"]), release["model_name"],
                           release["version"], promote=promote)


def record(run: RunFolder, cfg: Config, dag_id: str | None = None, dag_run_id: str | None = None) -> str:
    """runs/<run_id>/record.json in cfg.store (medpipe.run_record): the run's metrics, the gate's verdict and the
    champion before and after, whether the gate passed or not; written once. Returns the record's key."""
    from medpipe.run_record import record_run  # torch (hardware names) stays off the CLI's start-up path

    return record_run(run, _candidates(run, cfg), open_store(cfg.store), dag_id, dag_run_id)


@dataclass(frozen=True)
class Stage:
    name: str
    func: Callable[..., Any]
    per_model: bool = False  # one call (one DAG task) per model in cfg.models.names
    gpu: bool = False  # holds a GPU: Airflow pool `gpu`
    core: bool = True  # part of `medpipe run`; the rest are the shipping stages (gate, export, publish)


STAGES: tuple[Stage, ...] = (
    Stage("start", start_run),
    Stage("validate", validate),
    Stage("cache", cache),
    Stage("train", train, per_model=True, gpu=True),
    Stage("evaluate", evaluate, per_model=True),
    Stage("ensemble", ensemble),
    Stage("summarize", summarize),
    Stage("gate", gate, core=False),
    Stage("export", export, core=False),
    Stage("publish", publish, core=False),
    Stage("record", record, core=False),  # last: runs whether the gate passed (after publish) or not
)
CORE_STAGES = tuple(s for s in STAGES if s.core)


def stage(name: str) -> Stage:
    for candidate in STAGES:
        if candidate.name == name:
            return candidate
    raise ValueError(f"unknown stage {name!r}; stages: {', '.join(s.name for s in STAGES)}")


def stage_task_ids(models: list[str] | tuple[str, ...], stages: tuple[Stage, ...] = STAGES) -> list[str]:
    """The DAG's task ids in stage order: `<stage>` or `<stage>_<model>` for per-model stages."""
    return [f"{s.name}_{m}" if s.per_model else s.name for s in stages for m in (models if s.per_model else [None])]


def run_stage(name: str, run: RunFolder, cfg: Config, model: str | None = None, **options: Any) -> Any:
    """Run one stage (one DAG task): per-model stages need `model`, the others refuse one."""
    selected = stage(name)
    if selected.func is start_run:
        raise ValueError("the start stage makes the run folder: call start_run(out_dir, cfg, data_root)")
    if selected.per_model != (model is not None):
        raise ValueError(f"stage {name} " + ("runs once per model: name the model" if selected.per_model
                                             else f"is not per model (got model {model!r})"))
    args = (run, cfg, model) if selected.per_model else (run, cfg)
    started, clock = datetime.now(timezone.utc), time.monotonic()
    result = selected.func(*args, **options)
    run.write_timing(f"{name}_{model}" if model is not None else name, started, time.monotonic() - clock)
    return result


def run_pipeline(data_root: str | Path, cfg: Config, out_dir: str | Path, resume: bool = False,
                 ship: bool = False) -> Path:
    """`medpipe run`: the core stages in order, everything under out_dir; with `ship`, every stage as the DAG runs
    them: gate, then export and publish only when it passed (the DAG's short-circuit), then record.

    Refused before anything is written when out_dir holds another run (RunFolder.create). A finished run with
    the same identity is not run again; with `resume`, an interrupted one continues where it stopped. Finished
    stages return their outputs as they are, so `ship` on a finished run completes its shipping stages.

    Returns:
        out_dir/summary.json.
    """
    # Under torchrun (medpipe.distributed) only `train` runs on every rank; rank 0 alone runs the other stages,
    # which write the run folder, and the others wait for it (a failure there is raised on every rank).
    distributed.setup(cfg.train.device)
    run = distributed.on_main(lambda: start_run(out_dir, cfg, data_root, resume=resume), f"start the run in {out_dir}")
    for selected in STAGES[1:] if ship else CORE_STAGES[1:]:  # after start
        if run.finished and selected.core:
            continue
        if selected.name in ("export", "publish") and not read_gate_decision(run.gate_path).passed:
            _logger.info("stage %s skipped: the gate did not pass (%s)", selected.name, run.gate_path)
            continue
        for model in (cfg.models.names if selected.per_model else [None]):
            _logger.info("stage %s%s", selected.name, f" ({model})" if model else "")
            if selected.func is train:
                run_stage(selected.name, run, cfg, model)
            else:
                distributed.on_main(lambda: run_stage(selected.name, run, cfg, model), f"run stage {selected.name}")
    return run.summary_path
