"""Run records in a real store: written when the gate rejects and when it passes (and published), never rewritten,
read back through the contract; and `medpipe run --ship` writes one from the CLI.

Most tests build a run folder by hand (run.json through RunFolder.create, metrics.json and gate.json through their
contracts) so they take milliseconds; the CLI test trains one tiny model for real.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from medpipe.config import Config
from medpipe.contracts import GateDecision, MetricsReport, RunRecord
from medpipe.run_folder import RunFolder
from medpipe.run_record import (RunRecordError, list_run_records, read_run_record, record_key, record_run,
                                write_run_record)
from medpipe.store import LocalStore, Store
from medpipe_testdata import CLASSES, write_dataset

MODELS = ["custom_cnn", "resnet18"]


def _split(auc: float) -> dict[str, Any]:
    per_class = {c: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 4, "roc_auc": auc} for c in CLASSES}
    return {"n": 12, "accuracy": 0.6, "balanced_accuracy": 0.55, "f1_weighted": 0.6, "f1_macro": 0.5,
            "macro_auc": auc, "per_class": per_class, "confusion_matrix": [[3, 1, 0], [1, 2, 1], [0, 1, 3]],
            "confidence_intervals": {"level": 0.95, "macro_auc": [auc - 0.1, auc + 0.05]}}


def _run(tmp_path: Path, cfg: Config, passed: bool, champion: dict[str, str] | None = None) -> RunFolder:
    """A run folder whose two models are evaluated and whose gate has decided."""
    from datetime import datetime, timezone

    run = RunFolder.create(tmp_path / "runs" / "20260101T000000Z", cfg, tmp_path, "f" * 64)
    for i, name in enumerate(MODELS):
        MetricsReport(model=name, classes=CLASSES, device="cpu", splits={"val": _split(0.7 + 0.1 * i)}).write(
            run.metrics_path(name))
    reasons = ["resnet18 passed all 4 checks"] if passed else ["macro_auc 0.80 < minimum 0.9", "<b>worse</b>"]
    rescored = None if champion is None else {**champion, "metrics": {"macro_auc": 0.82}}
    GateDecision(passed=passed, challenger="resnet18", split="val", primary_metric="macro_auc", reasons=reasons,
                 champion=rescored).write(run.gate_path)
    run.write_timing("train_resnet18", datetime.now(timezone.utc), 1.5)
    return run


def _publish(run: RunFolder, store: Store, version: str) -> None:
    """An export in release/ (model.onnx last, parity.json naming it) published as champion."""
    from medpipe.registry import publish_version

    release = run.release_dir
    release.mkdir()
    (release / "metrics.json").write_bytes(run.metrics_path("resnet18").read_bytes())
    (release / "parity.json").write_text(json.dumps({"model_name": "resnet18", "version": version}))
    (release / "gate.json").write_bytes(run.gate_path.read_bytes())  # the verdict that lets it become champion
    (release / "model.onnx").write_bytes(b"onnx bytes")
    publish_version(store, release, "resnet18", version)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return LocalStore(tmp_path / "store")


def test_a_rejected_run_is_recorded_with_its_reasons(tmp_path: Path, fast_config: Config, store: Store) -> None:
    run = _run(tmp_path, fast_config, passed=False, champion={"model_name": "custom_cnn", "version": "v0"})
    key = record_run(run, MODELS, store, dag_id="medpipe_retrain", dag_run_id="manual__2026-01-01T00:00:00+00:00")
    assert key == f"runs/{run.run_id()}/record.json" and run.run_id().startswith("20260101T000000Z-")
    record = read_run_record(store, run.run_id())
    assert record.status == "rejected" and record.published is None and record.champion_after is None
    assert record.gate == {"passed": False, "challenger": "resnet18", "champion_metric": 0.82,
                           "reasons": ["macro_auc 0.80 < minimum 0.9", "<b>worse</b>"]}
    assert record.champion_before == {"model_name": "custom_cnn", "version": "v0"}
    assert record.primary() == (pytest.approx(0.8), [pytest.approx(0.7), pytest.approx(0.85)])
    assert record.models["custom_cnn"]["splits"]["val"]["accuracy"] == {"value": 0.6, "interval": None}
    assert record.dag_id == "medpipe_retrain" and record.data_manifest_hash == "f" * 64
    assert record.stage_seconds == {"train_resnet18": 1.5}
    assert record.hardware["cpu_count"] >= 1 and record.hardware["device_kind"] in ("cpu", "cuda")
    assert "hostname" not in json.dumps(record.to_dict())
    assert RunRecord.read(run.run_record_copy_path) == record  # the run folder keeps what it stored


def test_a_passed_run_records_what_it_published_and_the_new_champion(tmp_path: Path, fast_config: Config,
                                                                     store: Store) -> None:
    run = _run(tmp_path, fast_config, passed=True)
    _publish(run, store, "v1")
    record_run(run, MODELS, store)
    record = read_run_record(store, run.run_id())
    assert record.status == "passed" and record.champion_before is None
    assert record.published == record.champion_after == {"model_name": "resnet18", "version": "v1"}
    assert list_run_records(store) == ([record], [])


def test_a_record_is_never_rewritten(tmp_path: Path, fast_config: Config, store: Store) -> None:
    run = _run(tmp_path, fast_config, passed=False)
    key = record_run(run, MODELS, store)
    stored = store.get_bytes(key)
    assert record_run(run, MODELS, store, dag_id="other") == key  # a rerun: the run folder's copy, uploaded again
    assert store.get_bytes(key) == stored
    changed = RunRecord.parse(json.loads(stored), key)
    changed = RunRecord.parse({**changed.to_dict(), "status": "passed"}, key)
    with pytest.raises(RunRecordError, match=f"{key} holds a different record of run {run.run_id()}"):
        write_run_record(store, changed)
    assert store.get_bytes(key) == stored


def test_bad_run_ids_and_unreadable_records(store: Store) -> None:
    for bad in ("../x", ".hidden", "a/b", ""):
        with pytest.raises(ValueError, match="invalid run id"):
            record_key(bad)
    store.put_bytes("runs/broken/record.json", b"{not json")
    records, problems = list_run_records(store)
    assert records == [] and "runs/broken/record.json is not valid JSON" in problems[0]


def test_records_go_to_s3_too(tmp_path: Path, fast_config: Config, s3_server) -> None:
    from medpipe.store import open_store

    s3 = open_store(s3_server.store_config(prefix="medpipe"))
    run = _run(tmp_path, fast_config, passed=False)
    key = record_run(run, MODELS, s3)
    assert read_run_record(s3, run.run_id()).status == "rejected"
    assert record_run(run, MODELS, s3) == key and [r.run_id for r in list_run_records(s3)[0]] == [run.run_id()]


def test_medpipe_run_ship_records_a_rejected_run_once(tmp_path: Path) -> None:
    """The CLI runs every stage as the DAG does: the gate rejects (an impossible image count), export and publish
    are skipped, the record is stored; running it again changes nothing."""
    from medpipe.cli import main

    data = write_dataset(tmp_path / "data", per_class=4, size=32)
    sets = ["data.image_size=32", f"data.cache_dir={tmp_path / 'cache'}", "train.epochs=1", "train.batch_size=8",
            "train.device=cpu", "models.names=[custom_cnn]", "evaluate.splits=[val]", "evaluate.bootstrap_resamples=0",
            f"store.uri={tmp_path / 'store'}", "gate.min_metrics={n: 100000}"]
    args = ["run", "--ship", "--data", str(data), "--out", str(tmp_path / "run"),
            *[a for s in sets for a in ("--set", s)]]
    assert main(args) == 3
    store = LocalStore(tmp_path / "store")
    [key] = store.list("runs/")
    record = RunRecord.parse(store.get_bytes(key), key)
    assert record.status == "rejected" and any("n " in r or "n=" in r or "100000" in r for r in record.gate["reasons"])
    assert not (tmp_path / "run" / "release").exists() and store.list("models/") == []
    assert {"start", "validate", "cache", "train_custom_cnn", "evaluate_custom_cnn", "summarize", "gate"
            } <= set(json.loads((tmp_path / "run" / "record.json").read_text())["stage_seconds"])
    stored = store.get_bytes(key)
    assert main(args) == 3 and store.list("runs/") == [key] and store.get_bytes(key) == stored


def test_the_run_record_contract_round_trips_and_refuses_a_newer_schema() -> None:
    from medpipe.contracts import ContractError

    record = RunRecord(run_id="r-1", status="rejected", models={}, gate={"passed": False, "challenger": "x",
                                                                         "reasons": ["why"]})
    assert RunRecord.parse(json.dumps(record.to_dict()), "runs/r-1/record.json") == record
    assert record.primary() == (None, None)  # no metric recorded: nothing invented
    with pytest.raises(ContractError, match="runs/r-1/record.json was written by a newer medpipe"):
        RunRecord.parse({**record.to_dict(), "schema_version": 2}, "runs/r-1/record.json")
    with pytest.raises(ContractError, match=r"lacks the required key\(s\) 'gate' of a run record"):
        RunRecord.parse({"run_id": "r", "status": "passed", "models": {}}, "k")
