"""The whole shipping path through the CLI, in-process: run -> gate -> export -> publish (local + S3) -> score."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from conftest import write_dataset
from medpipe.cli import main

_CLASSES = ("normal", "benign", "cancer")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_run_gate_export_publish_score(tmp_path, s3_server, capsys):
    data = write_dataset(tmp_path / "data", per_class=8, size=40)
    run, local = tmp_path / "run", tmp_path / "store"
    fast = ["--set", "data.image_size=32", "--set", f"data.cache_dir={tmp_path / 'cache'}", "--set", "train.epochs=2",
            "--set", "train.batch_size=8", "--set", "train.device=cpu", "--set", "models.resnet18.weights=none",
            "--set", "evaluate.splits=[val]",
            # Sampling alone: with the default class weights too, 2 epochs leave both models collapsed (every image
            # one class), which the gate refuses (best_epoch_qualified).
            "--set", "train.class_weights=none"]
    s3 = s3_server.store_config()
    s3_args = ["--store", s3.uri, "--set", f"store.endpoint_url={s3.endpoint_url}",
               "--set", f"store.region={s3.region}"]
    loose = ["--set", "gate.min_metrics={macro_auc: 0.5, recall_cancer: 0.0}", "--set", "gate.must_beat_baseline=false"]

    assert main(["run", "--data", str(data), "--out", str(run), *fast]) == 0
    assert {p.name for p in (run / "models").iterdir()} == {"custom_cnn", "resnet18", "ensemble"}
    summary = json.loads((run / "summary.json").read_text())
    summary_md = (run / "summary.md").read_text()
    for name, row in summary["models"].items():  # each figure is shown with its patient-bootstrap interval
        lo, hi = row["intervals"]["macro_auc"]
        assert f"{row['macro_auc']:.3f} ({lo:.2f}–{hi:.2f})" in summary_md
    assert "this split does not separate them" in summary_md or "beyond the split's noise" in summary_md
    paired = summary["best_vs_runner_up"]  # both models scored the same val images: a paired comparison
    assert {paired["best"], paired["runner_up"]} <= {"custom_cnn", "resnet18", "ensemble"}
    low, high = paired["macro_auc"]["interval"]
    assert low <= paired["macro_auc"]["difference"] <= high
    assert f"macro_auc: {paired['macro_auc']['difference']:+.3f} (paired 95 % interval {low:+.3f} to {high:+.3f})" \
        in summary_md

    # gate: the run's own config.yaml (32 px cache) and recorded dataset are used; first run, empty store.
    assert summary["data_root"] == str(data.resolve())
    assert main(["gate", "--run", str(run), "--store", str(local), *loose]) == 0
    gate = json.loads((run / "gate.json").read_text())
    assert gate["passed"] is True and gate["first_run"] is True and gate["champion"] is None
    challenger = gate["challenger"]
    assert "first run" in capsys.readouterr().out

    out = run / "release"  # export writes into the run folder by default
    assert main(["export", "--run", str(run), "--version", "v1"]) == 0
    assert {"model.onnx", "parity.json", "metrics.json", "model_card.md", "gate.json", "config.yaml"} <= {
        p.name for p in out.iterdir()}
    assert list((out / "plots").glob("*.png"))
    assert json.loads((out / "parity.json").read_text())["model_name"] == challenger
    paired = json.loads((out / "predictions.json").read_text())  # for paired comparisons, without names
    val_csv = (run / "models" / challenger / "eval" / "predictions_val.csv").read_text().splitlines()
    assert paired["split"] == "val" and len(paired["probs"]) == len(val_csv) - 1
    assert val_csv[1].split(",")[0] not in json.dumps(paired)
    assert f"--model-name {challenger} --version v1" in capsys.readouterr().out
    onnx_bytes = (out / "model.onnx").read_bytes()
    assert main(["export", "--run", str(run), "--data", str(data)]) == 0  # the export that is there
    assert f"exported {challenger} version v1" in capsys.readouterr().out
    assert main(["export", "--run", str(run), "--version", "v2"]) == 1  # never rewritten
    assert "never rewritten" in capsys.readouterr().err
    assert (out / "model.onnx").read_bytes() == onnx_bytes

    publish = ["publish", "--version-dir", str(out), "--model-name", challenger, "--version", "v1"]
    assert main([*publish, "--store", str(local)]) == 0
    assert main(["publish", "--version-dir", str(out), *s3_args]) == 0  # name and version from model.onnx
    keys = s3_server.client().list_objects_v2(Bucket=s3_server.bucket)["Contents"]
    assert f"medpipe/models/{challenger}/v1/model.onnx" in {k["Key"] for k in keys}

    # score the val folder from both stores: same rows, verified downloads, provider printed.
    n_val = len(list((data / "val").rglob("*.png")))
    results = {}
    for name, store_args in (("local", ["--store", str(local)]), ("s3", s3_args)):
        csv_path = tmp_path / f"preds-{name}.csv"
        assert main(["score", "--model", "champion", "--input", str(data / "val"), "--output", str(csv_path),
                     *store_args]) == 0
        printed = capsys.readouterr().out
        assert "CPUExecutionProvider" in printed and f"scored {n_val} images" in printed and "0 errors" in printed
        results[name] = _rows(csv_path)
        assert len(results[name]) == n_val and {r["model_version"] for r in results[name]} == {"v1"}
    assert results["local"] == results["s3"]
    # The predictions are the ones evaluation reported for that model on the same files (torch vs ONNX).
    evaluated = {r["rel"].removeprefix("val/"): r for r in _rows(run / "models" / challenger / "eval" /
                                                                   "predictions_val.csv")}
    for row in results["local"]:
        for c in _CLASSES:
            assert abs(float(row[f"prob_{c}"]) - float(evaluated[row["path"]][f"prob_{c}"])) <= 1e-4
    assert main(["score", "--input", str(data / "val"), "--output", str(tmp_path / "preds-local.csv"),
                 "--store", str(local)]) == 1
    assert "--resume" in capsys.readouterr().err

    # The run's decision is taken once: the same request shows it, another is refused; --decision writes a what-if.
    assert main(["gate", "--run", str(run), "--store", str(local), *loose]) == 0
    assert "first run" in capsys.readouterr().out
    assert main(["gate", "--run", str(run), *s3_args, *loose]) == 1
    assert "never rewritten" in capsys.readouterr().err
    # A second decision finds the champion and re-scores it; impossible thresholds gate with exit code 3.
    what_if = tmp_path / "gate-s3.json"
    assert main(["gate", "--run", str(run), "--data", str(data), "--decision", str(what_if), *s3_args, *loose]) == 0
    gate = json.loads(what_if.read_text())
    assert gate["first_run"] is False and gate["champion"]["version"] == "v1"
    rescored = gate["champion"]["metrics"]["macro_auc"]
    assert rescored == pytest.approx(gate["candidates"][challenger]["primary"], abs=1e-6)
    assert main(["gate", "--run", str(run), "--data", str(data), "--store", str(local), "--decision",
                 str(tmp_path / "strict.json"), "--set", "gate.min_metrics={n: 1000000}"]) == 3
    assert "GATED" in capsys.readouterr().out
    assert json.loads((run / "gate.json").read_text())["passed"] is True  # the run's own decision is untouched
    data.rename(tmp_path / "moved")  # the dataset moved: the run's cache (found by its identity) still serves
    assert main(["gate", "--run", str(run), "--store", str(local), "--decision", str(tmp_path / "g4.json"),
                 *loose]) == 0
    shutil.rmtree(tmp_path / "cache")  # and without the cache, the dataset is needed: say so, and how to go on
    assert main(["gate", "--run", str(run), "--store", str(local), "--decision", str(tmp_path / "g5.json"),
                 *loose]) == 1
    assert "no longer exists; pass --data with its new location" in capsys.readouterr().err
