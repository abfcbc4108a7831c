"""The run folder: one object owns its layout and its identity.

Every stage, the CLI, the retraining DAG and the Airflow plugin find a run's files through `RunFolder`; no other
module joins run paths by hand. A run's identity is what it computed from: the dataset (manifest hash over every
file's sha256, labels, splits and patients), the settings that shape the models and their evaluation (hash of the
resolved config), and the code (medpipe version and git commit). `RunFolder.create` compares a new run's
identity with the one a folder already holds and refuses, before writing anything, when they differ: a finished
run is never rewritten, and a folder is never half old run, half new.

Layout (relative to the run folder):

    run.json                          identity, data root, creation time (written once, when the run starts)
    config.yaml                       the resolved config
    validation/validation.{json,md}
    models/<name>/{best.pt,last.pt,history.json,history.png,config.yaml}
    models/<name>/eval/{metrics.json,model_card.md,predictions_<split>.csv,plots/*.png}
    models/ensemble/ensemble.json     the ensemble's members and their best.pt sha256 (medpipe.ensemble)
    models/ensemble/eval/...          evaluated like a model
    summary.{json,md}                 the models beside the majority baseline (the end of `medpipe run`)
    gate.json                         the gate's decision
    timings/<task>.json               a stage's (or a per-model stage's) duration, written when it first finished
    record.json                       the run record (medpipe.run_record), also stored as runs/<run_id>/record.json
    release/{model.onnx,parity.json,model.int8.onnx,int8.json,metrics.json,model_card.md,gate.json,config.yaml,
             reference.json,predictions.json,plots/*.png}
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import subprocess
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medpipe import __version__
from medpipe.config import Config, config_to_dict, load_config, save_config
from medpipe.fileio import atomic_write_text

__all__ = ["RunFolder", "RunIdentity", "RunFolderError", "RUN_RECORD", "RELEASE_FILES", "RELEASE_EVAL_FILES",
           "CHECKPOINT_NAMES", "HISTORY_NAME", "HISTORY_PLOT_NAME", "METRICS_NAME", "CARD_NAME", "GATE_NAME",
           "PARITY_NAME", "PAIRED_NAME", "ONNX_NAME", "INT8_ONNX_NAME", "INT8_REPORT_NAME", "CONFIG_NAME", "ENSEMBLE_NAME",
           "ENSEMBLE_RECORD",
           "code_commit", "config_hash", "default_run_dir", "identity_settings"]

_logger = logging.getLogger(__name__)

RUN_RECORD = "run.json"
RUN_SCHEMA_VERSION = 1
CONFIG_NAME = "config.yaml"
GATE_NAME = "gate.json"
SUMMARY_NAME = "summary.json"
METRICS_NAME = "metrics.json"
CARD_NAME = "model_card.md"
ONNX_NAME = "model.onnx"
# A model folder (models/<name>/ of a run, or `medpipe train --out DIR/<name>`), written by medpipe.train.
CHECKPOINT_NAMES = {"best": "best.pt", "last": "last.pt"}
HISTORY_NAME = "history.json"
HISTORY_PLOT_NAME = "history.png"
PARITY_NAME = "parity.json"
# The mean of the run's models (medpipe.ensemble): a model folder holding a record of its members, not weights.
ENSEMBLE_NAME = "ensemble"
ENSEMBLE_RECORD = "ensemble.json"
RUN_RECORD_COPY = "record.json"  # the run record as stored (medpipe.run_record)
# A run id is a store key segment (medpipe.store.base); anything else in a folder name becomes "_".
_UNSAFE_ID_CHARS = re.compile(r"[^A-Za-z0-9._+=-]+")
# What a release folder (and so a published registry version) holds beside model.onnx, from the run.
RELEASE_EVAL_FILES = (METRICS_NAME, CARD_NAME)  # from models/<name>/eval/, required
REFERENCE_NAME = "reference.json"  # the training reference for drift (medpipe.drift), when the run had enough images
# The INT8 copy for CPU scoring (medpipe.quantize), present only when it passed its check, and its report (always
# written when export.int8 is on: the figures, or why it was not shipped).
INT8_ONNX_NAME = "model.int8.onnx"
INT8_REPORT_NAME = "int8.json"
# Per-image labels and probabilities on the gate's split without names or ids (medpipe.paired_predictions), so any
# two published versions scored on the same images can be compared pairwise.
PAIRED_NAME = "predictions.json"
RELEASE_FILES = (ONNX_NAME, INT8_ONNX_NAME, PARITY_NAME, INT8_REPORT_NAME, METRICS_NAME, CARD_NAME, GATE_NAME,
                 CONFIG_NAME, REFERENCE_NAME, PAIRED_NAME)
# Settings that say where things are kept, or what is decided after the run (the gate, export, publishing and
# scoring): the same trained models and metrics come out whatever they are, so they are not part of the identity
# (`medpipe gate --set gate.min_metrics=...` on a finished run is an ordinary use, not a different run).
_NOT_IDENTITY = ("gate", "export", "store", "score", "data.cache_dir")


class RunFolderError(ValueError):
    """A run folder cannot be used as asked (another run's identity, not a run folder, unfinished without
    --resume); the message says what differs and what to do. Raised before anything is written."""


def identity_settings(cfg: Config) -> dict[str, Any]:
    """The part of the resolved config that is the run's identity (everything but _NOT_IDENTITY)."""
    tree = config_to_dict(cfg)
    for dotted in _NOT_IDENTITY:
        section, _, key = dotted.partition(".")
        if key:
            tree.get(section, {}).pop(key, None)
        else:
            tree.pop(section, None)
    return tree


def config_hash(cfg: Config) -> str:
    return hashlib.sha256(json.dumps(identity_settings(cfg), sort_keys=True).encode()).hexdigest()


def code_commit() -> str | None:
    """The git commit of the medpipe source, or None outside a checkout (an installed wheel, a Docker image)."""
    try:
        proc = subprocess.run(["git", "-C", str(Path(__file__).parent), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def default_run_dir(parent: str | Path = "runs", now: datetime | None = None) -> Path:
    """A new folder per run, `runs/<UTC timestamp>`, never a shared "latest" that a second run would mix into."""
    now = now or datetime.now(timezone.utc)
    return Path(parent) / now.strftime("%Y%m%dT%H%M%S.%fZ")


@dataclass(frozen=True)
class RunIdentity:
    data_manifest_hash: str
    config_hash: str
    medpipe_version: str
    code_commit: str | None

    @classmethod
    def of(cls, cfg: Config, data_manifest_hash: str) -> "RunIdentity":
        return cls(data_manifest_hash, config_hash(cfg), __version__, code_commit())


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        flat.update(_flatten(value, name) if isinstance(value, dict) and value else {name: value})
    return flat


def _setting_changes(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    old_flat, new_flat = _flatten(old), _flatten(new)
    return [f"{key}: {old_flat.get(key, '<unset>')!r} -> {new_flat.get(key, '<unset>')!r}"
            for key in sorted(set(old_flat) | set(new_flat)) if old_flat.get(key) != new_flat.get(key)]


class RunFolder:
    """One run folder: every path in it, and its identity record."""

    def __init__(self, root: str | Path, data_root: str | Path | None = None) -> None:
        self.root = Path(root)
        self._data_root = Path(data_root) if data_root else None  # --data: the dataset moved since the run

    def __repr__(self) -> str:
        return f"RunFolder({str(self.root)!r})"

    # -- layout ---------------------------------------------------------------------------------------------
    @property
    def record_path(self) -> Path:
        return self.root / RUN_RECORD

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def validation_dir(self) -> Path:
        return self.root / "validation"

    @property
    def validation_report_path(self) -> Path:
        return self.validation_dir / "validation.json"

    def model_dir(self, model: str) -> Path:
        return self.root / "models" / model

    def checkpoint(self, model: str, kind: str = "best") -> Path:
        if kind not in CHECKPOINT_NAMES:
            raise ValueError(f"checkpoint kind {kind!r}: expected 'best' or 'last'")
        return self.model_dir(model) / CHECKPOINT_NAMES[kind]

    def ensemble_record_path(self) -> Path:
        return self.model_dir(ENSEMBLE_NAME) / ENSEMBLE_RECORD

    def model_source(self, model: str) -> Path:
        """What export rebuilds `model` from: best.pt, or for the ensemble its record (members' best.pt)."""
        return self.ensemble_record_path() if model == ENSEMBLE_NAME else self.checkpoint(model)

    def history_path(self, model: str) -> Path:
        return self.model_dir(model) / HISTORY_NAME

    def eval_dir(self, model: str) -> Path:
        return self.model_dir(model) / "eval"

    def metrics_path(self, model: str) -> Path:
        return self.eval_dir(model) / METRICS_NAME

    @property
    def summary_path(self) -> Path:
        return self.root / SUMMARY_NAME

    @property
    def summary_md_path(self) -> Path:
        return self.root / "summary.md"

    @property
    def gate_path(self) -> Path:
        return self.root / GATE_NAME

    @property
    def release_dir(self) -> Path:
        return self.root / "release"

    @property
    def run_record_copy_path(self) -> Path:
        return self.root / RUN_RECORD_COPY

    def timing_path(self, task: str) -> Path:
        return self.root / "timings" / f"{task}.json"

    def write_timing(self, task: str, started_at: datetime, seconds: float) -> None:
        """Record how long `task` (a stage, or `<stage>_<model>`) took, the first time it finished: a resumed run or
        a retried task returns finished outputs in no time, which is not the stage's duration."""
        path = self.timing_path(task)
        if not path.is_file():
            atomic_write_text(path, json.dumps({"task": task, "started_at": started_at.isoformat(timespec="seconds"),
                                                "seconds": round(seconds, 3)}) + "\n")

    def timings(self) -> dict[str, float]:
        """task -> seconds, in the order the tasks started."""
        entries = [json.loads(p.read_text()) for p in sorted((self.root / "timings").glob("*.json"))]
        return {e["task"]: float(e["seconds"]) for e in sorted(entries, key=lambda e: e.get("started_at", ""))}

    def run_id(self) -> str:
        """The run's id in the store: the folder name (made key-safe) and 8 hex digits of run.json's sha256, so two
        runs in folders of the same name (on two workers, in two temp folders) never share a record."""
        digest = hashlib.sha256(self.record_path.read_bytes()).hexdigest()[:8]
        name = _UNSAFE_ID_CHARS.sub("_", self.root.resolve().name).lstrip("._")[:100] or "run"
        return f"{name}-{digest}"

    def relative(self, path: str | Path) -> str:
        """`path` relative to the run folder (what summaries and records store, so a run folder can move)."""
        return Path(path).resolve().relative_to(self.root.resolve()).as_posix()

    def metrics_paths(self, models: list[str] | tuple[str, ...]) -> dict[str, Path]:
        """model -> its metrics.json; every one must exist (the models were evaluated)."""
        paths = {name: self.metrics_path(name) for name in models}
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{self.root} is not a complete `medpipe run` folder: missing "
                                    f"{', '.join(missing)}; finish it with `medpipe run --resume --out {self.root}`")
        return paths

    # -- identity ---------------------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """The core run (`medpipe run`: validate ... summary) is complete."""
        return self.summary_path.is_file()

    def record(self) -> dict[str, Any]:
        """run.json; for a folder written before medpipe kept one, what its summary.json recorded."""
        if self.record_path.is_file():
            record = json.loads(self.record_path.read_text())
            if int(record.get("schema_version", 0)) > RUN_SCHEMA_VERSION:
                raise RunFolderError(f"{self.record_path} has schema version {record['schema_version']}, newer than "
                                     f"this medpipe ({RUN_SCHEMA_VERSION}) reads; use the medpipe that wrote it")
            return record
        if self.summary_path.is_file() and self.config_path.is_file():  # a run folder from before run.json
            return {"schema_version": 0, "identity": None,
                    "data_root": json.loads(self.summary_path.read_text()).get("data_root")}
        raise RunFolderError(f"{self.root} is not a medpipe run folder (no {RUN_RECORD}); "
                             f"make one with `medpipe run --out {self.root}`")

    def identity(self) -> RunIdentity | None:
        recorded = self.record().get("identity")
        return RunIdentity(**recorded) if recorded else None

    def config(self, overrides: list[str] | tuple[str, ...] = ()) -> Config:
        """The run's resolved config, with `overrides` (`section.key=value`) on top."""
        if not self.config_path.is_file():
            raise RunFolderError(f"{self.config_path} does not exist: {self.root} is not a medpipe run folder")
        return load_config(self.config_path, overrides)

    def data_root(self) -> Path:
        """--data, or the dataset root the run recorded (the gate refuses a dataset whose manifest differs)."""
        if self._data_root is not None:
            return self._data_root
        recorded = self.record().get("data_root")
        if not recorded:
            raise RunFolderError(f"{self.root} does not record the run's dataset; pass --data with the dataset root "
                                 "the run used")
        if not Path(recorded).is_dir():
            raise FileNotFoundError(f"the dataset this run used, {recorded} (from {self.record_path}), no longer "
                                    "exists; pass --data with its new location")
        return Path(recorded)

    @classmethod
    def open(cls, root: str | Path, data_root: str | Path | None = None) -> "RunFolder":
        """An existing run folder (for gate, export, publish, the DAG's later tasks); `data_root` replaces the
        recorded dataset location (the same files, moved)."""
        run = cls(root, data_root)
        run.record()  # raises for a folder that is not a run
        return run

    @classmethod
    def create(cls, root: str | Path, cfg: Config, data_root: str | Path, data_manifest_hash: str,
               resume: bool = False) -> "RunFolder":
        """Start a run in `root`, or continue the one there when its identity is the same.

        An empty or missing folder gets config.yaml and run.json. A folder holding a run of the same identity is
        returned as it is when that run finished (nothing to redo) or when `resume` is set (an interrupted run:
        stages with complete outputs are skipped, training continues from last.pt). Anything else is refused
        before a file is written.

        Raises:
            RunFolderError: another run's identity (the message lists the data, settings and code that differ), an
                unfinished run without `resume`, or a folder that is not a medpipe run.
        """
        run = cls(root)
        identity = RunIdentity.of(cfg, data_manifest_hash)
        existing = [p.name for p in run.root.iterdir()] if run.root.is_dir() else []
        if not run.record_path.is_file():
            if [name for name in existing if name != CONFIG_NAME]:  # a config.yaml alone: a start cut short
                raise RunFolderError(f"{run.root} is not empty and holds no {RUN_RECORD} (not a medpipe run, or one "
                                     "from an older medpipe); nothing was written. Choose a new --out")
            run.root.mkdir(parents=True, exist_ok=True)
            save_config(cfg, run.config_path)
            record = {"schema_version": RUN_SCHEMA_VERSION, "identity": asdict(identity),
                      "data_root": str(Path(data_root).resolve()),
                      "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            atomic_write_text(run.record_path, json.dumps(record, indent=1) + "\n")  # last: marks a started run
            return run
        run._check_identity(identity, cfg)
        if run.finished:
            _logger.info("%s is a finished run with the same identity: nothing to redo", run.root)
        elif not resume:
            raise RunFolderError(f"{run.root} holds an unfinished run with the same data, settings and code; pass "
                                 "--resume to continue it (from the last checkpoints), or choose a new --out")
        return run

    def _check_identity(self, identity: RunIdentity, cfg: Config) -> None:
        recorded = self.identity()
        if recorded is None:
            raise RunFolderError(f"{self.root} holds a run from an older medpipe without an identity record; it is "
                                 "kept as it is. Choose a new --out")
        differences = []
        if recorded.data_manifest_hash != identity.data_manifest_hash:
            differences.append(f"data: manifest {recorded.data_manifest_hash[:12]} there, "
                               f"{identity.data_manifest_hash[:12]} now (files, labels, splits or patients differ)")
        if recorded.config_hash != identity.config_hash:
            old = identity_settings(load_config(self.config_path)) if self.config_path.is_file() else {}
            changes = _setting_changes(old, identity_settings(cfg)) or ["(the saved config.yaml is missing)"]
            differences.append("settings: " + "; ".join(changes))
        if (recorded.medpipe_version, recorded.code_commit) != (identity.medpipe_version, identity.code_commit):
            differences.append(f"code: medpipe {recorded.medpipe_version} commit {recorded.code_commit} there, "
                               f"{identity.medpipe_version} commit {identity.code_commit} now")
        if differences:
            raise RunFolderError(f"{self.root} holds another run; it is never rewritten, and nothing was written.\n  "
                                 + "\n  ".join(differences)
                                 + "\nChoose a new --out (by default every run gets its own runs/<timestamp>).")
