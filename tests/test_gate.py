"""The gate: absolute thresholds, the majority baseline, and the champion re-scored from its published ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medpipe.data.cache import load_cache
from medpipe.evaluate import evaluate_model
from medpipe.evaluate.metrics import flatten_metrics
from medpipe.export import export_onnx
from medpipe.gate import GateError, gate_models
from medpipe.registry import publish_version
from medpipe.store import LocalStore
from medpipe.train import train_model
from shipping_fixtures import TrainedRun, shipping_config, trained_run  # noqa: F401


def _flat(path: Path) -> dict:
    return flatten_metrics(json.loads(path.read_text())["splits"]["val"])


def _cfg(run: TrainedRun, *overrides: str):
    return shipping_config(run.work, *overrides)


@pytest.fixture(scope="module")
def weak_metrics(trained_run: TrainedRun) -> Path:  # noqa: F811
    """metrics.json of a custom_cnn that learned nothing (lr 1e-9, one epoch), on the same cache."""
    cfg = _cfg(trained_run, "train.lr=1e-9", "train.epochs=1")
    out = train_model(trained_run.cache_dir, "custom_cnn", cfg, trained_run.work / "weak")
    return evaluate_model(out / "best.pt", trained_run.cache_dir, cfg, out / "eval")


@pytest.fixture(scope="module")
def champion_store(trained_run: TrainedRun) -> LocalStore:  # noqa: F811
    """A store whose champion is the trained custom_cnn, published with deliberately false old metrics."""
    version_dir = trained_run.work / "champion-v1"
    export_onnx(trained_run.checkpoints["custom_cnn"], trained_run.cache_dir, trained_run.cfg,
                version_dir / "model.onnx", trained_run.metrics["custom_cnn"], "v1")
    metrics = json.loads(trained_run.metrics["custom_cnn"].read_text())
    metrics["splits"]["val"]["macro_auc"] = 0.0123  # an "old number" the gate must never use
    (version_dir / "metrics.json").write_text(json.dumps(metrics))
    store = LocalStore(trained_run.work / "champion-store")
    publish_version(store, version_dir, "custom_cnn", "v1")
    return store


def test_first_run_applies_only_the_absolute_gates(trained_run, tmp_path):  # noqa: F811
    flats = {name: _flat(p) for name, p in trained_run.metrics.items()}
    thresholds = {"macro_auc": 0.5, "balanced_accuracy": 0.2, "recall_cancer": 0.0}
    cfg = _cfg(trained_run, f"gate.min_metrics={json.dumps(thresholds)}")
    out = tmp_path / "gate.json"
    decision = gate_models(trained_run.metrics, cfg, out, store=LocalStore(tmp_path / "empty"),
                           cache_dir=trained_run.cache_dir)

    assert json.loads(out.read_text()) == decision
    assert decision["first_run"] is True and decision["champion"] is None
    assert any("first run" in r and "only the absolute gates apply" in r for r in decision["reasons"])
    best = max(flats, key=lambda n: (flats[n]["macro_auc"], flats[n]["balanced_accuracy"]))
    assert decision["challenger"] == best and decision["challenger_metrics"] == flats[best]
    names = [c["name"] for c in decision["checks"]]
    assert names == ["min_macro_auc", "min_balanced_accuracy", "min_recall_cancer", "beats_baseline"]
    flat = flats[best]
    expected = [flat[k] >= v for k, v in thresholds.items()]
    expected.append(flat["balanced_accuracy"] > flat["baseline_balanced_accuracy"])
    assert [c["passed"] for c in decision["checks"]] == expected
    assert [c["value"] for c in decision["checks"]] == [flat[k] for k in thresholds] + [flat["balanced_accuracy"]]
    assert decision["passed"] is all(expected)


def test_a_threshold_that_is_not_met_fails_with_its_reason(trained_run, tmp_path):  # noqa: F811
    cfg = _cfg(trained_run, "gate.min_metrics={macro_auc: 1.01}", "gate.must_beat_baseline=false")
    decision = gate_models(trained_run.metrics, cfg, tmp_path / "gate.json")
    assert decision["passed"] is False
    assert any(r.startswith("macro_auc") and "< minimum 1.01" in r for r in decision["reasons"])
    assert any("no model store given" in r for r in decision["reasons"])

    cfg = _cfg(trained_run, "gate.min_metrics={macro_auc: 0.0}", "gate.must_beat_baseline=false")
    assert gate_models(trained_run.metrics, cfg, tmp_path / "gate2.json")["passed"] is True


def test_no_thresholds_or_unknown_metric_is_an_error(trained_run, tmp_path):  # noqa: F811
    with pytest.raises(GateError, match="gate.min_metrics is empty"):
        gate_models(trained_run.metrics, _cfg(trained_run, "gate.min_metrics={}"), tmp_path / "gate.json")
    with pytest.raises(GateError, match=r"unknown metric 'recall_cancr'; available: .*recall_cancer"):
        gate_models(trained_run.metrics, _cfg(trained_run, "gate.min_metrics={recall_cancr: 0.5}"),
                    tmp_path / "gate.json")
    with pytest.raises(GateError, match="gate.primary_metric: unknown metric 'auc'"):
        gate_models(trained_run.metrics, _cfg(trained_run, "gate.primary_metric=auc"), tmp_path / "gate.json")
    assert not (tmp_path / "gate.json").exists()


def test_champion_is_rescored_from_its_onnx_on_the_current_split(trained_run, champion_store, tmp_path):  # noqa: F811
    cfg = _cfg(trained_run, "gate.min_metrics={macro_auc: 0.0}")
    decision = gate_models(trained_run.metrics, cfg, tmp_path / "gate.json", store=champion_store,
                           cache_dir=trained_run.cache_dir)
    champion = decision["champion"]
    assert decision["first_run"] is False
    assert (champion["model_name"], champion["version"]) == ("custom_cnn", "v1")
    assert champion["n"] == len(load_cache(trained_run.cache_dir).splits["val"].labels)
    assert champion["provider"] == "CPUExecutionProvider"
    # The published metrics.json says 0.0123; the re-scored value is the model's real one on this split.
    real = _flat(trained_run.metrics["custom_cnn"])
    assert champion["metrics"]["macro_auc"] == pytest.approx(real["macro_auc"], abs=1e-6)
    assert champion["metrics"]["balanced_accuracy"] == pytest.approx(real["balanced_accuracy"], abs=1e-6)
    check = next(c for c in decision["checks"] if c["name"] == "not_worse_than_champion")
    assert check["threshold"] == pytest.approx(real["macro_auc"] - cfg.gate.champion_tolerance)

    with pytest.raises(GateError, match="pass cache_dir"):
        gate_models(trained_run.metrics, cfg, tmp_path / "gate2.json", store=champion_store)


def test_challenger_worse_than_champion_fails(trained_run, champion_store, weak_metrics, tmp_path):  # noqa: F811
    weak, real = _flat(weak_metrics), _flat(trained_run.metrics["custom_cnn"])
    assert weak["macro_auc"] < real["macro_auc"] - 0.01, "precondition: the weak model is clearly worse"
    cfg = _cfg(trained_run, "gate.min_metrics={macro_auc: 0.0}", "gate.must_beat_baseline=false",
               "gate.champion_tolerance=0.01")
    decision = gate_models({"custom_cnn": weak_metrics}, cfg, tmp_path / "gate.json", store=champion_store,
                           cache_dir=trained_run.cache_dir)
    assert decision["passed"] is False
    assert [c["name"] for c in decision["checks"] if not c["passed"]] == ["not_worse_than_champion"]
    assert any("champion custom_cnn/v1" in r and "re-scored" in r for r in decision["reasons"])

    # The same challenger passes when the tolerance allows the gap.
    loose = _cfg(trained_run, "gate.min_metrics={macro_auc: 0.0}", "gate.must_beat_baseline=false",
                 "gate.champion_tolerance=1.0")
    assert gate_models({"custom_cnn": weak_metrics}, loose, tmp_path / "gate2.json", store=champion_store,
                       cache_dir=trained_run.cache_dir)["passed"] is True


def test_metrics_of_another_dataset_are_refused(trained_run, tmp_path):  # noqa: F811
    other = tmp_path / "metrics.json"
    metrics = json.loads(trained_run.metrics["custom_cnn"].read_text())
    metrics["manifest_hash"] = "0" * 64
    other.write_text(json.dumps(metrics))
    with pytest.raises(GateError, match="evaluated on different data"):
        gate_models({"custom_cnn": other, "resnet18": trained_run.metrics["resnet18"]}, trained_run.cfg,
                    tmp_path / "gate.json")
    with pytest.raises(GateError, match="evaluate the models on the current data first"):
        gate_models({"custom_cnn": other}, trained_run.cfg, tmp_path / "gate.json", cache_dir=trained_run.cache_dir)
