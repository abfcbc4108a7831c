"""The run record: one retraining run's metrics and decision, kept in the store as runs/<run_id>/record.json.

Written by the `record` stage, the last of medpipe.stages.STAGES (after publish, and also when the gate rejected
the challenger and nothing was published), so `medpipe run --ship` and the retrain DAG write the same record. The
Airflow plugin's Runs view lists these records; it never reads work folders, which live on workers and go away.

Integrity: a record is written once. The run folder keeps the copy it built (record.json), and that copy is what a
rerun uploads again, so rerunning a finished run finds the same bytes in the store and writes nothing. Different
bytes under the same key are refused (RunRecordError), never rewritten. The key carries a digest of run.json, so
two runs never share one.
"""

from __future__ import annotations

import json
import logging
import os
import re
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from medpipe.contracts import (HEADLINE_METRICS, ContractError, GateDecision, RunRecord, read_gate_decision,
                               read_metrics)
from medpipe.fileio import atomic_write_text
from medpipe.registry import MANIFEST_NAME, MODELS_PREFIX, read_champion
from medpipe.release import read_release
from medpipe.store import ObjectNotFoundError

if TYPE_CHECKING:
    from pathlib import Path

    from medpipe.run_folder import RunFolder
    from medpipe.store import Store

__all__ = ["RUNS_PREFIX", "RunRecordError", "build_run_record", "list_run_records", "read_run_record",
           "record_key", "write_run_record", "record_run"]

_logger = logging.getLogger(__name__)

RUNS_PREFIX = "runs/"
RECORD_NAME = "record.json"
# One key segment (the store's alphabet, not starting with '.'), as the plugin's check_segment.
_RUN_ID = re.compile(r"[A-Za-z0-9_+=-][A-Za-z0-9._+=-]{0,127}")
# Set by the Airflow task that runs the stage (medpipe_plugin.dag_common): medpipe itself never imports Airflow.
DAG_ID_ENV, DAG_RUN_ID_ENV = "MEDPIPE_DAG_ID", "MEDPIPE_DAG_RUN_ID"


class RunRecordError(RuntimeError):
    """A run record cannot be written as asked: the store holds different content under its key."""


def record_key(run_id: str) -> str:
    """runs/<run_id>/record.json; ValueError naming the id when it is not one safe key segment."""
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id):
        raise ValueError(f"invalid run id {run_id!r}: expected letters, digits and . _ + = - (not starting with '.'), "
                         "at most 128 characters")
    return f"{RUNS_PREFIX}{run_id}/{RECORD_NAME}"


def _model_entry(metrics_path: Path) -> dict[str, Any]:
    """Every split's headline metrics with their 95 % interval (None where metrics.json has none)."""
    report = read_metrics(metrics_path)
    splits = {}
    for split in report.splits:
        values, intervals = report.split(split), report.split(split).get("confidence_intervals") or {}
        splits[split] = {key: {"value": values.get(key), "interval": intervals.get(key)} for key in HEADLINE_METRICS}
    return {"device": report.device, "splits": splits}


def _hardware() -> dict[str, Any]:
    """What the machine that wrote the record has: CPU count and its accelerators (no host name: records are
    shown to every UI user). Each model's own evaluation device is in models.<name>.device."""
    import torch  # only this stage needs it; the CLI and DAG files stay light

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    gpus = [torch.cuda.get_device_name(i) for i in range(count)]
    return {"cpu_count": os.cpu_count(), "device_kind": "cuda" if gpus else "cpu", "gpus": gpus}


def _pointer(value: dict[str, Any] | None) -> dict[str, str] | None:
    return {"model_name": str(value["model_name"]), "version": str(value["version"])} if value else None


def _published(run: RunFolder, store: Store, passed: bool) -> dict[str, str] | None:
    """The version this run published: its export, once the store holds its manifest (written after every file)."""
    release = read_release(run.release_dir) if passed else None
    if release is None:
        return None
    key = f"{MODELS_PREFIX}{release['model_name']}/{release['version']}/{MANIFEST_NAME}"
    return _pointer(release) if store.exists(key) else None


def _champion_metric(decision: GateDecision) -> float | None:
    """The champion's primary metric as the gate re-scored it on this run's split (the trend chart's other line)."""
    value = ((decision.champion or {}).get("metrics") or {}).get(decision.primary_metric or "")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def build_run_record(run: RunFolder, models: list[str], store: Store, dag_id: str | None = None,
                     dag_run_id: str | None = None) -> RunRecord:
    """The record of a run whose gate has decided (gate.json); `models` are the candidates it evaluated."""
    decision = read_gate_decision(run.gate_path)
    identity, started = run.identity(), run.record().get("created_at")
    return RunRecord(
        run_id=run.run_id(), started_at=started,
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        status="passed" if decision.passed else "rejected", split=decision.split,
        primary_metric=decision.primary_metric,
        models={name: _model_entry(run.metrics_path(name)) for name in models},
        gate={"passed": decision.passed, "challenger": decision.challenger, "reasons": list(decision.reasons),
              "champion_metric": _champion_metric(decision)},
        champion_before=_pointer(decision.champion), champion_after=_pointer(read_champion(store)),
        published=_published(run, store, decision.passed), dag_id=dag_id, dag_run_id=dag_run_id,
        medpipe_version=identity.medpipe_version if identity else None,
        code_commit=identity.code_commit if identity else None,
        data_manifest_hash=identity.data_manifest_hash if identity else None,
        config_hash=identity.config_hash if identity else None,
        stage_seconds=run.timings(), hardware=_hardware())


def _encode(record: RunRecord) -> bytes:
    return (json.dumps(record.to_dict(), indent=2, allow_nan=False) + "\n").encode()


def write_run_record(store: Store, record: RunRecord) -> str:
    """Store the record at runs/<run_id>/record.json once; the same bytes again are a no-op.

    Raises:
        RunRecordError: the key holds a different record (named with both runs' start times).
    """
    key, data = record_key(record.run_id), _encode(record)
    try:
        existing = store.get_bytes(key)
    except ObjectNotFoundError:
        store.put_bytes(key, data)
        _logger.info("run record %s written", store.uri(key))
        return key
    if existing != data:
        raise RunRecordError(f"{store.uri(key)} holds a different record of run {record.run_id}; a run record is "
                             "never rewritten (compare it with the run folder's record.json)")
    _logger.info("run record %s is in the store already", store.uri(key))
    return key


def record_run(run: RunFolder, models: list[str], store: Store, dag_id: str | None = None,
               dag_run_id: str | None = None) -> str:
    """The `record` stage: build the record once (kept as the run folder's record.json), then store it."""
    copy = run.run_record_copy_path
    if copy.is_file():
        record = RunRecord.read(copy)
    else:
        record = build_run_record(run, models, store, dag_id or os.environ.get(DAG_ID_ENV),
                                  dag_run_id or os.environ.get(DAG_RUN_ID_ENV))
        atomic_write_text(copy, _encode(record).decode())
    return write_run_record(store, record)


def read_run_record(store: Store, run_id: str) -> RunRecord:
    """One stored record (ObjectNotFoundError when the store has none; ContractError when it cannot be read)."""
    key = record_key(run_id)
    return RunRecord.parse(store.get_bytes(key), key)


def list_run_records(store: Store) -> tuple[list[RunRecord], list[str]]:
    """(every readable record, newest first; a problem line for each one that cannot be read)."""
    records, problems = [], []
    for key in store.list(RUNS_PREFIX):
        if not key.endswith("/" + RECORD_NAME) or key.count("/") != 2:
            continue
        try:
            records.append(RunRecord.parse(store.get_bytes(key), key))
        except (ContractError, ObjectNotFoundError) as exc:
            problems.append(str(exc))
    records.sort(key=lambda r: (r.started_at or "", r.run_id), reverse=True)
    return records, problems
