"""The contracts between stages: round trips, files as medpipe wrote them before schema_version, refusals that
name the file and how to write it again, and one reader per file across the code base."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from medpipe.contracts import (HEADLINE_METRICS, CheckpointMeta, ContractError, GateDecision, MetricsReport,
                               read_gate_decision, read_metrics)

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["normal", "benign", "cancer"]


def _split(accuracy: float = 0.75) -> dict:
    per_class = {c: {"precision": 0.5, "recall": 0.25 * (i + 1), "f1": 0.5, "support": 4, "roc_auc": 0.7,
                     "average_precision": 0.6} for i, c in enumerate(CLASSES)}
    return {"n": 12, "accuracy": accuracy, "balanced_accuracy": 0.6, "f1_weighted": 0.7, "f1_macro": 0.65,
            "macro_auc": None, "per_class": per_class, "confusion_matrix": [[3, 1, 0], [1, 2, 1], [0, 1, 3]],
            "baseline": {"majority_class": "normal", "majority_source": "given", "accuracy": 0.33,
                         "balanced_accuracy": 0.33, "f1_weighted": 0.17, "f1_macro": 0.17, "macro_auc": 0.5}}


def _metrics_as_main_wrote_them() -> dict:
    """metrics.json as `evaluate_model` wrote it before contracts (613091f): every key, no schema_version."""
    return {"model": "resnet18", "classes": CLASSES, "manifest_hash": "abc", "checkpoint_manifest_hash": "abc",
            "checkpoint": "../best.pt", "checkpoint_sha256": "0" * 64, "epoch": 3, "preprocess_version": "1",
            "device": "cpu", "training": {"epochs_run": 4, "best_epoch": 3, "stopped_early": False,
                                          "monitor": "macro_auc", "best_score": 0.8, "train_images": 40},
            "split_counts": {"train": {"normal": 3, "benign": 4, "cancer": 6}},
            "prior_correction": {"factors": [1.0, 1.0, 1.0], "source": "checkpoint", "training_prior": None,
                                 "train_class_counts": None},
            "splits": {"val": _split()}}


def _gate_as_main_wrote_it() -> dict:
    """gate.json as `gate_models` wrote it before contracts: every key, no schema_version."""
    check = {"name": "min_macro_auc", "value": 0.9, "threshold": 0.8, "passed": True, "reason": "ok"}
    return {"passed": True, "challenger": "resnet18", "split": "val", "primary_metric": "macro_auc",
            "candidates": {"resnet18": {"primary": 0.9, "metrics": "run/models/resnet18/eval/metrics.json"}},
            "challenger_metrics": {"macro_auc": 0.9}, "champion": None, "champion_comparison": None,
            "first_run": True, "tolerance": 0.01, "checks": [check], "reasons": ["first run", "passed all 1 checks"]}


def _checkpoint_meta_as_main_wrote_it() -> dict:
    """A checkpoint's meta as `train._checkpoint_meta` wrote it before contracts."""
    return {"train_class_counts": [3, 4, 6], "training_prior": [0.1, 0.4, 0.5], "output_prior": [1 / 3] * 3,
            "logit_offset": [1.2, -0.2, -0.4], "prior_correction": [0.7, 0.9, 1.4], "model_name": "custom_cnn",
            "classes": CLASSES, "image_size": 32, "manifest_hash": "abc", "epoch": 2, "monitor": "macro_auc",
            "best_score": 0.8, "config": {"models": {"resnet18": {"weights": "none"}}}, "preprocess_version": "1",
            "input": "float32 (N,1,H,W) raw pixels 0..255", "output": "logits"}


def test_metrics_round_trip_and_accessors(tmp_path):
    report = MetricsReport(model="resnet18", classes=CLASSES, manifest_hash="abc", splits={"val": _split()})
    path = report.write(tmp_path / "metrics.json")
    assert json.loads(path.read_text())["schema_version"] == MetricsReport.SCHEMA_VERSION
    again = read_metrics(path)
    assert again == report and again.to_dict() == report.to_dict()
    assert list(again.headline("val")) == list(HEADLINE_METRICS) and again.headline("val")["macro_auc"] is None
    assert again.recall("val") == {"normal": 0.25, "benign": 0.5, "cancer": 0.75}
    with pytest.raises(ContractError, match=r"metrics.json has no metrics for split 'test' \(it has \['val'\]\)"):
        again.split("test")


def test_gate_decision_and_checkpoint_meta_round_trip(tmp_path):
    decision = GateDecision.parse(_gate_as_main_wrote_it(), "xcom")
    assert read_gate_decision(decision.write(tmp_path / "gate.json")) == decision
    meta = CheckpointMeta.parse(_checkpoint_meta_as_main_wrote_it(), tmp_path / "best.pt")
    assert CheckpointMeta.parse(meta.to_dict(), "again") == meta
    # Readable as the dict it was: unchanged consumers index it.
    assert meta["classes"] == meta.classes == CLASSES and meta.get("prior_correction") == [0.7, 0.9, 1.4]
    assert dict(meta) == meta.to_dict() and meta["schema_version"] == 0  # as read


def test_the_training_writer_records_a_readable_meta():
    from medpipe.config import load_config
    from medpipe.train import _checkpoint_meta

    data = SimpleNamespace(classes=CLASSES, image_size=32, manifest_hash="abc", preprocessing="1")
    priors = {k: v for k, v in _checkpoint_meta_as_main_wrote_it().items() if k in (
        "train_class_counts", "training_prior", "output_prior", "logit_offset", "prior_correction")}
    written = _checkpoint_meta("custom_cnn", load_config(None), data, 2, 0.8, priors)
    assert written["schema_version"] == CheckpointMeta.SCHEMA_VERSION
    assert set(_checkpoint_meta_as_main_wrote_it()) < set(written)  # every key readers had, and the version
    assert CheckpointMeta.parse(written, "best.pt").to_dict() == written


def test_files_without_schema_version_read_as_version_0(tmp_path):
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps(_metrics_as_main_wrote_them(), indent=2))
    report = read_metrics(metrics)
    assert report.schema_version == 0 and report.split("val")["accuracy"] == 0.75 and report.epoch == 3
    assert {k: v for k, v in report.to_dict().items() if k != "schema_version"} == _metrics_as_main_wrote_them()
    gate = tmp_path / "gate.json"
    gate.write_text(json.dumps(_gate_as_main_wrote_it()))
    decision = read_gate_decision(gate)
    assert decision.schema_version == 0 and decision.passed and decision.challenger == "resnet18"
    meta = CheckpointMeta.parse(_checkpoint_meta_as_main_wrote_it(), tmp_path / "best.pt")
    assert meta.schema_version == 0 and meta.image_size == 32
    # Older files lacked optional keys (no prior facts, no champion comparison): those read as None.
    old = {k: v for k, v in _checkpoint_meta_as_main_wrote_it().items() if k not in ("prior_correction", "monitor")}
    assert CheckpointMeta.parse(old, "old.pt").prior_correction is None
    assert GateDecision.parse({"passed": False, "challenger": "x", "reasons": []}, "old").champion_comparison is None


def test_unknown_keys_are_kept_on_rewrite(tmp_path):
    raw = {**_metrics_as_main_wrote_them(), "schema_version": 1, "added_later": {"x": 1}}
    report = MetricsReport.parse(raw, "store")
    assert report.extra == {"added_later": {"x": 1}}
    assert json.loads(report.write(tmp_path / "m.json").read_text()) == raw


@pytest.mark.parametrize("change, message", [
    ({"schema_version": 99}, "written by a newer medpipe (metrics.json schema_version 99, this medpipe reads up to 1)"),
    ({"schema_version": "1"}, "schema_version '1' is not a non-negative integer"),
    ({"splits": None}, "lacks the required key(s) 'splits' of a metrics.json (schema_version 0)"),
    ({"classes": "normal"}, "'classes' is of type str, expected JSON list"),
])
def test_metrics_from_elsewhere_are_refused_with_the_command_that_rewrites_them(tmp_path, change, message):
    path = tmp_path / "run" / "models" / "resnet18" / "eval" / "metrics.json"
    path.parent.mkdir(parents=True)
    raw = {**_metrics_as_main_wrote_them(), **change}
    path.write_text(json.dumps({k: v for k, v in raw.items() if v is not None}))
    with pytest.raises(ContractError) as info:
        read_metrics(path)
    text = str(info.value)
    assert str(path) in text and message in text
    checkpoint = path.parent.parent / "best.pt"
    assert f"run `medpipe evaluate --checkpoint {checkpoint} --data DATA --out {path.parent}` again" in text


def test_gate_decisions_and_checkpoints_from_elsewhere_are_refused(tmp_path):
    gate = tmp_path / "run" / "gate.json"
    gate.parent.mkdir()
    gate.write_text(json.dumps({**_gate_as_main_wrote_it(), "schema_version": 2}))
    with pytest.raises(ContractError, match=re.escape(f"{gate} was written by a newer medpipe")) as info:
        read_gate_decision(gate)
    assert f"run `medpipe gate --run {gate.parent}` again" in str(info.value)
    gate.write_text(json.dumps({"passed": True, "reasons": []}))
    with pytest.raises(ContractError, match=r"lacks the required key\(s\) 'challenger' of a gate.json.*medpipe gate"):
        read_gate_decision(gate)
    with pytest.raises(FileNotFoundError, match="medpipe gate --run"):
        read_gate_decision(tmp_path / "nowhere" / "gate.json")

    meta = {k: v for k, v in _checkpoint_meta_as_main_wrote_it().items() if k != "config"}
    with pytest.raises(ContractError, match=r"best.pt lacks the required key\(s\) 'config'.*retrain: a checkpoint "
                                            r"from an unknown medpipe"):
        CheckpointMeta.parse(meta, tmp_path / "best.pt")


def test_load_checkpoint_refuses_a_meta_from_a_newer_medpipe(tmp_path):
    import torch

    from medpipe.train import load_checkpoint

    path = tmp_path / "best.pt"
    torch.save({"model_state": {}, "meta": {**_checkpoint_meta_as_main_wrote_it(), "schema_version": 7}}, path)
    with pytest.raises(ContractError, match=re.escape(f"{path} was written by a newer medpipe (checkpoint meta "
                                                      "schema_version 7")) as info:
        load_checkpoint(path)
    assert "retrain" in str(info.value)


def test_store_bytes_are_read_and_refused_by_the_same_reader():
    key = "models/resnet18/v1/metrics.json"
    report = MetricsReport.parse(json.dumps(_metrics_as_main_wrote_them()).encode(), key)
    assert report.model == "resnet18"
    with pytest.raises(ContractError, match=f"{key} is not valid JSON .*medpipe evaluate --checkpoint CHECKPOINT"):
        MetricsReport.parse(b"{not json", key)
    with pytest.raises(ContractError, match=f"{key} holds a list, expected a JSON object"):
        GateDecision.parse(b"[]", key)


def test_export_reads_the_gate_decision_through_its_contract(tmp_path):
    from medpipe.run_folder import RunFolder
    from medpipe.stages import PipelineError, _gated_model

    run = RunFolder(tmp_path)
    run.gate_path.write_text(json.dumps(_gate_as_main_wrote_it()))
    assert _gated_model(run) == "resnet18"
    run.gate_path.write_text(json.dumps({**_gate_as_main_wrote_it(), "passed": False}))
    with pytest.raises(PipelineError, match="challenger resnet18 did not pass the gate"):
        _gated_model(run)


def test_the_contracts_import_without_torch():
    code = "import sys, medpipe.contracts; sys.exit(sorted({'torch', 'numpy'} & set(sys.modules)) != [])"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={"PYTHONPATH": str(ROOT)}).returncode == 0


_CONTRACT_FILE = re.compile(r"metric|gate|decision", re.IGNORECASE)


def _json_reads_of_contract_files(source: str) -> list[int]:
    """Lines where json.load/json.loads reads something named like metrics.json or gate.json (the call or the
    statement it stands in: `metrics = json.loads(path.read_text())`)."""
    lines = source.splitlines()
    hits = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("load", "loads")
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "json"):
            text = "\n".join(lines[node.lineno - 1:node.end_lineno])
            if _CONTRACT_FILE.search(text):
                hits.append(node.lineno)
    return hits


def test_only_the_contracts_parse_metrics_and_gate_files():
    assert _json_reads_of_contract_files("import json\nmetrics = json.loads(path.read_text())\n") == [2]
    assert _json_reads_of_contract_files("import json\nx = json.loads((run / 'gate.json').read_text())\n") == [2]
    offenders = []
    for path in sorted([*(ROOT / "medpipe").rglob("*.py"), *(ROOT / "plugins").rglob("*.py")]):
        rel = path.relative_to(ROOT)
        if rel.parts[:2] == ("medpipe", "contracts"):
            continue
        offenders += [f"{rel}:{line}" for line in _json_reads_of_contract_files(path.read_text())]
    assert offenders == [], f"read metrics.json / gate.json with medpipe.contracts, not json: {offenders}"


def test_keys_added_later_read_as_none_and_old_files_are_written_back_unchanged():
    """metrics.json `tta` and the checkpoint meta's best-epoch guard (`qualified`, `qualification`) came after
    version 1 files were written: absent, they read as None and are not added on rewrite; set, they are written."""
    old = MetricsReport.parse({**_metrics_as_main_wrote_them(), "schema_version": 1}, "old")
    assert old.tta is None and "tta" not in old.to_dict()
    new = MetricsReport.parse({**_metrics_as_main_wrote_them(), "tta": "hflip"}, "new")
    assert new.to_dict()["tta"] == "hflip"
    meta = CheckpointMeta.parse(_checkpoint_meta_as_main_wrote_it(), "best.pt")
    assert meta.qualified is None and meta.get("qualified") is None and "qualification" not in meta
    guarded = CheckpointMeta.parse({**_checkpoint_meta_as_main_wrote_it(), "qualified": False,
                                    "qualification": {"reason": "collapsed"}}, "best.pt")
    assert guarded["qualified"] is False and guarded.qualification == {"reason": "collapsed"}
