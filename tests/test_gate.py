"""The gate: absolute thresholds, the majority baseline, and the champion re-scored from its published ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medpipe.contracts import read_gate_decision
from medpipe.data.cache import load_cache
from medpipe.evaluate.stage import evaluate_model
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


def _threshold_checks(decision: dict) -> list[dict]:
    """The checks of gate.min_metrics, beats_baseline and the champion: all but best_epoch_qualified (its own tests
    are in test_best_epoch_guard.py)."""
    return [c for c in decision["checks"] if c["name"] != "best_epoch_qualified"]


def _edited(src: Path, dst: Path, edit) -> Path:
    """A copy of metrics.json with `edit(val split metrics)` applied."""
    metrics = json.loads(src.read_text())
    edit(metrics["splits"]["val"])
    dst.write_text(json.dumps(metrics))
    return dst


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
    publish_version(store, version_dir, "custom_cnn", "v1", promote=True)  # no gate.json: promoted by hand
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
    assert names == ["min_macro_auc", "min_balanced_accuracy", "min_recall_cancer", "beats_baseline",
                     "best_epoch_qualified"]
    flat = flats[best]
    expected = [flat[k] >= v for k, v in thresholds.items()]
    expected.append(flat["balanced_accuracy"] > flat["baseline_balanced_accuracy"])
    expected.append(json.loads(trained_run.metrics[best].read_text())["training"]["best_epoch_qualified"])
    assert [c["passed"] for c in decision["checks"]] == expected
    assert [c["value"] for c in _threshold_checks(decision)] == ([flat[k] for k in thresholds]
                                                                 + [flat["balanced_accuracy"]])
    assert decision["passed"] is all(expected)


def test_a_threshold_that_is_not_met_fails_with_its_reason(trained_run, tmp_path):  # noqa: F811
    # The synthetic split is separable (AUC 1.0), so no minimum in [0, 1] fails on its own: lower the AUC.
    metrics = {name: _edited(path, tmp_path / f"{name}.json", lambda val: val.update(macro_auc=0.9))
               for name, path in trained_run.metrics.items()}
    cfg = _cfg(trained_run, "gate.min_metrics={macro_auc: 0.95}", "gate.must_beat_baseline=false")
    decision = gate_models(metrics, cfg, tmp_path / "gate.json")
    assert decision["passed"] is False
    assert any(r.startswith("macro_auc 0.9000 < minimum 0.95") for r in decision["reasons"])
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
    # The paired comparison: challenger minus the re-scored champion, on the same images and resamples.
    comparison = decision["champion_comparison"]
    mine = _flat(trained_run.metrics[decision["challenger"]])
    difference = comparison["macro_auc"]["difference"]
    assert difference == pytest.approx(mine["macro_auc"] - champion["metrics"]["macro_auc"], abs=1e-6)
    low, high = comparison["macro_auc"]["interval"]
    assert low <= difference <= high and comparison["groups"] == champion["n"]
    if decision["challenger"] == "custom_cnn":  # the champion itself: no difference in any resample
        assert low == high == 0.0
    assert any("paired interval" in r and "over" in r for r in decision["reasons"])

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
    # A model that learned nothing has also collapsed (every image one class): the guard fails it too.
    failed = [c["name"] for c in decision["checks"] if not c["passed"]]
    assert "not_worse_than_champion" in failed and set(failed) <= {"not_worse_than_champion", "best_epoch_qualified"}
    assert any("champion custom_cnn/v1" in r and "re-scored" in r for r in decision["reasons"])
    comparison = decision["champion_comparison"]["macro_auc"]
    assert comparison["difference"] == pytest.approx(weak["macro_auc"] - real["macro_auc"], abs=1e-6)
    assert comparison["interval"][0] <= comparison["difference"] <= comparison["interval"][1]

    # The same challenger passes the champion check when the tolerance allows the gap (and only the guard on its
    # collapsed best epoch, if any, still refuses it).
    loose = _cfg(trained_run, "gate.min_metrics={macro_auc: 0.0}", "gate.must_beat_baseline=false",
                 "gate.champion_tolerance=1.0")
    decision = gate_models({"custom_cnn": weak_metrics}, loose, tmp_path / "gate2.json", store=champion_store,
                           cache_dir=trained_run.cache_dir)
    assert [c["name"] for c in decision["checks"] if not c["passed"]] in ([], ["best_epoch_qualified"])


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


def test_gate_on_the_interval_lower_bound_is_stricter_than_the_point_estimate(trained_run, tmp_path):  # noqa: F811
    source = trained_run.metrics["custom_cnn"]
    point = _flat(source)["macro_auc"]
    assert json.loads(source.read_text())["splits"]["val"]["confidence_intervals"]["resamples"] > 0
    # The synthetic images are so separable that the real interval is [1.0, 1.0]; give the split the wide interval
    # a few dozen patients really show, below the point estimate.
    low = point - 0.2

    def widen(val):
        val["confidence_intervals"]["macro_auc"] = [low, point]

    metrics = _edited(source, tmp_path / "metrics.json", widen)
    minimum = round(point - 0.1, 4)
    cfg = _cfg(trained_run, f"gate.min_metrics={json.dumps({'macro_auc': minimum, 'macro_auc_ci_low': minimum})}",
               "gate.must_beat_baseline=false")
    decision = gate_models({"custom_cnn": metrics}, cfg, tmp_path / "gate.json")

    assert json.loads((tmp_path / "gate.json").read_text()) == decision
    assert read_gate_decision(tmp_path / "gate.json").to_dict() == decision  # the writer's output, read back
    assert decision["passed"] is False
    assert decision["challenger_metrics"]["macro_auc_ci_low"] == low
    point_check, ci_check = _threshold_checks(decision)
    assert (point_check["name"], point_check["passed"]) == ("min_macro_auc", True)
    assert (ci_check["name"], ci_check["passed"], ci_check["value"]) == ("min_macro_auc_ci_low", False, low)
    assert decision["reasons"][-1] == ci_check["reason"]
    assert ci_check["reason"].startswith(f"macro_auc_ci_low {low:.4f} < minimum {minimum} (the 95% patient-bootstrap "
                                         f"interval of macro_auc is [{low:.4f}, {point:.4f}], point estimate")

    # A minimum the pessimistic end does reach passes.
    cfg = _cfg(trained_run, f"gate.min_metrics={{macro_auc_ci_low: {round(low - 0.05, 4)}}}",
               "gate.must_beat_baseline=false")
    decision = gate_models({"custom_cnn": metrics}, cfg, tmp_path / "gate2.json")
    assert decision["passed"] is True and ">= minimum" in decision["checks"][0]["reason"]


def test_gate_on_real_interval_bounds_passes(trained_run, tmp_path):  # noqa: F811
    flats = {name: _flat(p) for name, p in trained_run.metrics.items()}
    thresholds = {"macro_auc_ci_low": min(f["macro_auc_ci_low"] for f in flats.values()),
                  "balanced_accuracy_ci_high": min(f["balanced_accuracy_ci_high"] for f in flats.values())}
    cfg = _cfg(trained_run, f"gate.min_metrics={json.dumps(thresholds)}", "gate.must_beat_baseline=false")
    decision = gate_models(trained_run.metrics, cfg, tmp_path / "gate.json")
    flat = flats[decision["challenger"]]
    assert decision["passed"] is True
    assert [c["value"] for c in _threshold_checks(decision)] == [flat[name] for name in thresholds]


def test_missing_interval_fails_the_gate_with_how_to_get_it(trained_run, tmp_path):  # noqa: F811
    cfg = _cfg(trained_run, "gate.min_metrics={macro_auc_ci_low: 0.5}", "gate.must_beat_baseline=false")
    source = trained_run.metrics["custom_cnn"]

    def bootstrap_off(val):
        val["confidence_intervals"].update(resamples=0, kept=0, macro_auc=None, balanced_accuracy=None)

    cases = {
        "old": (lambda val: val.pop("confidence_intervals"), "written before confidence intervals existed"),
        "off": (bootstrap_off, "the bootstrap was off (evaluate.bootstrap_resamples = 0)"),
    }
    for case, (edit, why) in cases.items():
        metrics = _edited(source, tmp_path / f"{case}.json", edit)
        decision = gate_models({"custom_cnn": metrics}, cfg, tmp_path / f"gate-{case}.json")
        (check,) = _threshold_checks(decision)
        assert decision["passed"] is False and check["value"] is None and check["threshold"] == 0.5
        assert check["reason"].startswith("macro_auc_ci_low is undefined on this split (null): the interval of "
                                          "macro_auc is missing, so it cannot reach 0.5")
        assert why in check["reason"] and "evaluate.bootstrap_resamples > 0" in check["reason"]

    # The bootstrap ran but gave no interval: re-running it would not help, and the reason says why instead.
    def no_auc(val):
        val["macro_auc"] = None
        val["confidence_intervals"]["macro_auc"] = None

    def few_kept(val):
        val["confidence_intervals"].update(kept=3, macro_auc=None)

    by_ba = _cfg(trained_run, "gate.min_metrics={macro_auc_ci_low: 0.5}", "gate.must_beat_baseline=false",
                 "gate.primary_metric=balanced_accuracy")
    for case, (edit, why) in {"no_auc": (no_auc, "macro_auc itself is undefined on this split"),
                              "few_kept": (few_kept, f"only 3 of {trained_run.cfg.evaluate.bootstrap_resamples} "
                                                     "resamples over")}.items():
        metrics = _edited(source, tmp_path / f"{case}.json", edit)
        (check,) = _threshold_checks(gate_models({"custom_cnn": metrics}, by_ba, tmp_path / f"gate-{case}.json"))
        assert check["passed"] is False and why in check["reason"]
        assert "bootstrap_resamples" not in check["reason"]


def test_an_interval_bound_cannot_be_the_primary_metric(trained_run, tmp_path):  # noqa: F811
    # The re-scored champion has no bootstrap, so the champion comparison on a bound would compare nothing.
    cfg = _cfg(trained_run, "gate.primary_metric=macro_auc_ci_low")
    with pytest.raises(GateError, match="is a bootstrap interval bound.*use 'macro_auc'"):
        gate_models(trained_run.metrics, cfg, tmp_path / "gate.json")


def test_paired_comparison_needs_the_challengers_predictions(trained_run, champion_store, tmp_path):  # noqa: F811
    lone = tmp_path / "lone" / "metrics.json"  # a metrics.json without the predictions CSV beside it
    lone.parent.mkdir()
    lone.write_text(trained_run.metrics["custom_cnn"].read_text())
    cfg = _cfg(trained_run, "gate.min_metrics={macro_auc: 0.0}")
    decision = gate_models({"custom_cnn": lone}, cfg, tmp_path / "gate.json", store=champion_store,
                           cache_dir=trained_run.cache_dir)
    assert decision["champion_comparison"] is None
    assert any("predictions_val.csv is missing" in r for r in decision["reasons"])


def test_champion_of_other_preprocessing_is_not_compared(trained_run, champion_store, tmp_path):  # noqa: F811
    """Same files, but the current cache blacks out everything outside the largest region: the champion
    was trained and published on the plain pixels, so a comparison on these would be meaningless."""
    from medpipe.data.cache import build_cache

    cfg = _cfg(trained_run, "gate.min_metrics={macro_auc: 0.0}", "data.largest_region_only=true")
    masked_cache = build_cache(trained_run.data_root, cfg)
    with pytest.raises(GateError, match="preprocessing '1'.*preprocessing '1\\+largest_region2'.*cannot be compared"):
        gate_models(trained_run.metrics, cfg, tmp_path / "gate.json", store=champion_store, cache_dir=masked_cache)
