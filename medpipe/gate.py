"""Pick the challenger of a run and decide whether it may ship; every reason is recorded in gate.json.

Gates, all on the split `cfg.gate.split` (val by default):
1. absolute thresholds `cfg.gate.min_metrics` (names from `medpipe.evaluate.metrics.flatten_metrics`, the
   bounds of the patient-bootstrap intervals included: `macro_auc_ci_low: 0.75` asks that even the pessimistic
   end of the 95 % interval reach 0.75, stricter than the point estimate on a small validation split);
2. balanced accuracy above the majority-class baseline's (`cfg.gate.must_beat_baseline`);
3. the primary metric no worse than the champion's minus `cfg.gate.champion_tolerance`, where the champion is
   re-scored from its published ONNX file on the cached images of the same split, never taken from its old
   metrics (those were measured on an older dataset version).
4. the challenger's best epoch qualified (`best_epoch_qualified`): its val balanced accuracy beat chance by
   `train.min_balanced_accuracy_margin` during training (medpipe.selection); a model whose every epoch collapsed
   is refused. Metrics from before the guard do not say: the check passes and its reason says it is unknown.
With no champion published yet (first run) only gates 1, 2 and 4 apply, and gate.json says so. The challenger is
picked among the models whose best epoch is not known to be collapsed, when there is one.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.config import Config
from medpipe.contracts import GateDecision, MetricsReport, read_metrics
from medpipe.data.cache import load_cache
from medpipe.evaluate.metrics import CI_BOUNDS, compute_metrics, flatten_metrics, majority_class
from medpipe.evaluate.stage import read_predictions
from medpipe.evaluate.uncertainty import paired_difference_intervals
from medpipe.onnx_runtime import active_provider, create_session, predict_onnx, read_model_info
from medpipe.preprocess import PREPROCESS_VERSION
from medpipe.registry import read_champion, resolve_model
from medpipe.run_folder import GATE_NAME

__all__ = ["GateError", "gate_models", "pick_challenger", "rescore_champion", "GATE_NAME"]

_logger = logging.getLogger(__name__)

Flat = dict[str, float | None]


class GateError(ValueError):
    """The gate cannot decide (bad configuration or inputs); distinct from a model failing the gate."""


def _check(name: str, value: float | None, threshold: float | None, passed: bool, reason: str) -> dict[str, Any]:
    return {"name": name, "value": value, "threshold": threshold, "passed": bool(passed), "reason": reason}


def _load_flat(path: Path, split: str) -> tuple[MetricsReport, Flat]:
    if not path.is_file():
        raise GateError(f"metrics file {path} does not exist; run `medpipe evaluate` first")
    report = read_metrics(path)
    if split not in report.splits:
        raise GateError(f"{path} has no metrics for split {split!r} (gate.split); it has {sorted(report.splits)}")
    return report, flatten_metrics(report.split(split))


def pick_challenger(flat_by_model: dict[str, Flat], primary: str) -> str:
    """The model with the highest `primary` metric; models where it is undefined (null) rank last.

    Ties (common on small validation sets, where AUC saturates at 1.0) go to the higher balanced accuracy,
    then to the first model in the given order, so the choice is reproducible.
    """
    order = list(flat_by_model)
    defined = {name: flat for name, flat in flat_by_model.items() if flat.get(primary) is not None}
    if not defined:
        raise GateError(f"gate.primary_metric {primary!r} is undefined (null) for every model "
                        f"({sorted(flat_by_model)}); choose a metric that exists on this split")
    return max(defined, key=lambda name: (defined[name][primary], defined[name].get("balanced_accuracy") or 0.0,
                                          -order.index(name)))


def _validate_names(cfg: Config, available: Flat) -> None:
    gate = cfg.gate
    if not gate.min_metrics:
        raise GateError("gate.min_metrics is empty: a gate without thresholds would pass anything. Configure at least "
                        "one, e.g. gate.min_metrics={macro_auc: 0.8, balanced_accuracy: 0.55, recall_cancer: 0.4}")
    names = sorted(available)
    for name in [gate.primary_metric, *gate.min_metrics]:
        if name not in available:
            key = "gate.primary_metric" if name == gate.primary_metric else f"gate.min_metrics.{name}"
            raise GateError(f"{key}: unknown metric {name!r}; available: {', '.join(names)}")
    if gate.primary_metric in CI_BOUNDS:
        # The champion is re-scored without a bootstrap, so its bound would be null and the champion comparison
        # would pass without comparing anything.
        raise GateError(f"gate.primary_metric: {gate.primary_metric!r} is a bootstrap interval bound, which the "
                        f"re-scored champion does not have; use {CI_BOUNDS[gate.primary_metric][0]!r} and put the "
                        "bound in gate.min_metrics")


def _interval_reason(name: str, value: float | None, threshold: float, split_metrics: dict[str, Any]) -> str:
    """The reason of a threshold on a bootstrap bound: the interval beside the point estimate, or why it is null
    (and what gives it a value), since the bare name says neither."""
    metric = CI_BOUNDS[name][0]
    point, intervals = split_metrics.get(metric), split_metrics.get("confidence_intervals")
    if value is not None:
        low, high = intervals[metric]
        shown = "undefined" if point is None else f"{point:.4f}"
        return (f"{name} {value:.4f} {'>=' if value >= threshold else '<'} minimum {threshold} (the "
                f"{intervals['level']:.0%} patient-bootstrap interval of {metric} is [{low:.4f}, {high:.4f}], "
                f"point estimate {shown})")
    rerun = "re-run `medpipe evaluate` with evaluate.bootstrap_resamples > 0"
    if intervals is None:
        why = f"this metrics.json was written before confidence intervals existed; {rerun}"
    elif not intervals.get("resamples"):
        why = f"the bootstrap was off (evaluate.bootstrap_resamples = {intervals.get('resamples')}); {rerun}"
    elif point is None:
        why = f"{metric} itself is undefined on this split"
    else:
        why = (f"only {intervals.get('kept')} of {intervals['resamples']} resamples over {intervals.get('groups')} "
               "patients kept every class of the split; the split needs more patients per class")
    return (f"{name} is undefined on this split (null): the interval of {metric} is missing, so it cannot reach "
            f"{threshold}: {why}")


def _absolute_checks(flat: Flat, min_metrics: dict[str, float], split_metrics: dict[str, Any]) -> list[dict[str, Any]]:
    checks = []
    for name, threshold in min_metrics.items():
        value = flat.get(name)
        ok = value is not None and value >= threshold
        if name in CI_BOUNDS:
            reason = _interval_reason(name, value, threshold, split_metrics)
        elif value is None:
            reason = f"{name} is undefined on this split (null), so it cannot reach {threshold}"
        else:
            reason = f"{name} {value:.4f} {'>=' if ok else '<'} minimum {threshold}"
        checks.append(_check(f"min_{name}", value, threshold, ok, reason))
    return checks


def _baseline_check(flat: Flat) -> dict[str, Any]:
    value, baseline = flat.get("balanced_accuracy"), flat.get("baseline_balanced_accuracy")
    if value is None or baseline is None:
        return _check("beats_baseline", value, baseline, False, "balanced accuracy of model or baseline undefined")
    ok = value > baseline
    return _check("beats_baseline", value, baseline, ok, f"balanced_accuracy {value:.4f} "
                  f"{'>' if ok else '<='} majority-class baseline {baseline:.4f}")


def _qualified_check(report: MetricsReport) -> dict[str, Any]:
    """Gate 4 from the training facts evaluation copied from the checkpoint meta (medpipe.selection)."""
    training = report.training or {}
    facts = training.get("qualification") or {}
    qualified, epoch = training.get("best_epoch_qualified"), training.get("best_epoch")
    value, required = facts.get("balanced_accuracy"), facts.get("required")
    if qualified is None:
        why = facts.get("reason") or ("the metrics.json records no best_epoch_qualified (a checkpoint trained before "
                                      "the guard on the best epoch)")
        return _check("best_epoch_qualified", value, required, True, f"whether best epoch {epoch} beat chance "
                      f"balanced accuracy is unknown, not checked: {why}")
    if qualified:
        return _check("best_epoch_qualified", value, required, True, f"best epoch {epoch}: {facts.get('reason')}")
    return _check("best_epoch_qualified", value, required, False,
                  f"{report.model}'s best epoch {epoch} is collapsed — no training epoch beat chance by the margin: "
                  f"{facts.get('reason')}; retrain it (learning rate, class weights, epochs)")


def _eligible(loaded: dict[str, tuple[MetricsReport, Flat]], primary: str) -> tuple[dict[str, Flat], list[str]]:
    """The models the challenger is picked from: those whose best epoch is not known to be collapsed (all models
    when none is left with a defined primary metric), and a note for each one left out."""
    flat = {name: f for name, (_, f) in loaded.items()}
    kept = {name: f for name, (report, f) in loaded.items()
            if (report.training or {}).get("best_epoch_qualified") is not False}
    if not any(f.get(primary) is not None for f in kept.values()):
        return flat, []
    return kept, [f"{name} is not a candidate: no training epoch beat chance balanced accuracy by "
                  "train.min_balanced_accuracy_margin (collapsed)" for name in flat if name not in kept]


def rescore_champion(store: Any, cache_dir: Path, split: str, classes: list[str], provider: str = "auto",
                     batch_size: int = 64) -> dict[str, Any] | None:
    """Download the champion's ONNX (sha256-verified) and compute its metrics on the cached `split`.

    Returns:
        None when the store has no champion, else {"model_name", "version", "sha256", "provider", "metrics"}
        with metrics flat (`flatten_metrics`) and measured now, on the current data.
    """
    rescored = _rescore_champion(store, cache_dir, split, classes, provider, batch_size)
    return None if rescored is None else rescored[0]


def _rescore_champion(store: Any, cache_dir: Path, split: str, classes: list[str], provider: str,
                      batch_size: int) -> tuple[dict[str, Any], np.ndarray, Any] | None:
    """rescore_champion's result, plus the champion's probabilities and the split's cached arrays."""
    if read_champion(store) is None:
        return None
    data = load_cache(cache_dir)
    arrays = data.splits.get(split)
    if arrays is None or len(arrays.labels) == 0:
        raise GateError(f"cache {cache_dir} has no {split!r} images to re-score the champion on")
    with tempfile.TemporaryDirectory(prefix="medpipe-champion-") as tmp:
        onnx_path, info = resolve_model(store, "champion", Path(tmp))
        session = create_session(onnx_path, provider)
        model_info = read_model_info(session, info.get("uri", onnx_path))
        champion_pixels = str(model_info.preprocess_version or PREPROCESS_VERSION)
        if (model_info.classes != list(classes) or model_info.input_size != data.image_size
                or champion_pixels != data.preprocessing):
            raise GateError(
                f"champion {info['model_name']}/{info['version']} predicts {model_info.classes} at "
                f"{model_info.input_size} px (preprocessing {champion_pixels!r}) but the current split holds "
                f"{classes} at {data.image_size} px (preprocessing {data.preprocessing!r}): the two cannot be "
                "compared on the same images; publish the first model of the new setup by hand")
        probs = predict_onnx(session, arrays.images, batch_size)
        ran_on = active_provider(session)
    train = data.splits.get("train")
    baseline = majority_class(train.labels, len(classes)) if train is not None and len(train.labels) else None
    metrics = compute_metrics(np.asarray(arrays.labels), probs, classes, baseline)
    summary = {"model_name": info["model_name"], "version": info["version"], "sha256": info["sha256"],
               "provider": ran_on, "split": split, "n": int(len(arrays.labels)), "metrics": flatten_metrics(metrics)}
    return summary, probs, arrays


def _challenger_probs(metrics_path: Path, split: str, arrays: Any, classes: list[str]) -> np.ndarray | None:
    """The challenger's probabilities on the cached split, from the predictions CSV its evaluation wrote beside
    metrics.json, in the cache's image order; None when that file is missing or covers other images."""
    rows = read_predictions(metrics_path, split, classes)
    if rows is None or set(rows) != set(arrays.rels):
        return None
    return np.array([rows[rel][1] for rel in arrays.rels])


def _paired_comparison(challenger: str, champion: dict[str, Any], challenger_probs: np.ndarray | None,
                       champion_probs: np.ndarray, arrays: Any, cfg: Config) -> tuple[dict[str, Any] | None, str]:
    """Challenger minus champion on the same images and the same patient resamples, and a sentence about it.

    Informational: the decision stays the champion check (tolerance on the point estimates); this says whether
    the split can tell the two apart at all, which a 0.01 difference on 36 lesion images usually cannot.
    """
    primary = cfg.gate.primary_metric
    if primary not in ("macro_auc", "balanced_accuracy"):
        return None, f"paired comparison with the champion: only for macro_auc and balanced_accuracy, not {primary}"
    if challenger_probs is None:
        return None, (f"paired comparison with the champion not done: {challenger}'s predictions_{cfg.gate.split}.csv "
                      "is missing or covers other images than the current cache")
    if cfg.evaluate.bootstrap_resamples <= 0:
        return None, "paired comparison with the champion not done: evaluate.bootstrap_resamples is 0"
    result = paired_difference_intervals(np.asarray(arrays.labels), challenger_probs, champion_probs,
                                         list(arrays.patients), resamples=cfg.evaluate.bootstrap_resamples)
    entry = result.get(primary)
    if entry is None or entry["interval"] is None:
        return result, f"paired comparison with the champion: the {primary} difference is undefined on this split"
    low, high = entry["interval"]
    verdict = ("the challenger is better" if low > 0 else "the challenger is worse" if high < 0 else
               "this split cannot tell them apart")
    return result, (f"{challenger} minus champion {champion['model_name']}/{champion['version']} {primary}: "
                    f"{entry['difference']:+.4f} ({result['level']:.0%} paired interval {low:+.4f} to {high:+.4f} over "
                    f"{result['groups']} patients): {verdict}")


def _champion_check(flat: Flat, champion: dict[str, Any], primary: str, tolerance: float) -> dict[str, Any]:
    value, theirs = flat.get(primary), champion["metrics"].get(primary)
    if theirs is None:
        return _check("not_worse_than_champion", value, None, True,
                      f"champion's {primary} is undefined on this split; nothing to compare against")
    threshold = theirs - tolerance
    ok = value is not None and value >= threshold
    shown = "undefined" if value is None else f"{value:.4f}"
    return _check("not_worse_than_champion", value, threshold, ok,
                  f"{primary} {shown} {'>=' if ok else '<'} champion {champion['model_name']}/{champion['version']} "
                  f"{theirs:.4f} (re-scored on the current split) minus tolerance {tolerance}")


def _check_same_data(metrics: dict[str, MetricsReport], cache_dir: Path | None) -> list[str]:
    """Every model must have been evaluated on the same dataset version (and on the cache, when given)."""
    hashes = {name: m.manifest_hash for name, m in metrics.items()}
    classes = {name: m.classes for name, m in metrics.items()}
    if len(set(hashes.values())) > 1 or len({json.dumps(c) for c in classes.values()}) > 1:
        raise GateError(f"the models were evaluated on different data: manifest hashes {hashes}, classes {classes}")
    if cache_dir is not None:
        current = load_cache(cache_dir).manifest_hash
        if current not in hashes.values():
            raise GateError(f"the metrics are for dataset {next(iter(hashes.values()))} but cache {cache_dir} holds "
                            f"dataset {current}; evaluate the models on the current data first")
    return list(next(iter(classes.values())))


def gate_models(metrics_paths: dict[str, Path], cfg: Config, out_path: str | Path, store: Any = None,
                cache_dir: str | Path | None = None, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pick the challenger and decide whether it passes; writes the decision to `out_path` (gate.json).

    Args:
        metrics_paths: model name -> its metrics.json (from `evaluate_model`).
        cfg: the config (gate section; score.provider/batch_size for re-scoring the champion).
        out_path: where gate.json goes.
        store: the model store holding the champion; None skips the champion comparison (reported).
        cache_dir: the current data cache, needed to re-score a champion on the same split.
        settings: what the decision was taken under (gate section, store), recorded in the decision.

    Returns:
        The decision as written: `medpipe.contracts.GateDecision.to_dict()` ({schema_version, passed, challenger,
        challenger_metrics, champion, checks, reasons, first_run, ...}), a plain dict so that it travels by XCom.

    Raises:
        GateError: no thresholds configured, unknown metric names, a bootstrap bound as primary metric, missing
            splits, incomparable data.
    """
    if not metrics_paths:
        raise GateError("no models to gate: metrics_paths is empty")
    gate, split = cfg.gate, cfg.gate.split
    loaded = {name: _load_flat(Path(path), split) for name, path in metrics_paths.items()}
    flat_by_model = {name: flat for name, (_, flat) in loaded.items()}
    _validate_names(cfg, next(iter(flat_by_model.values())))
    cache_dir = Path(cache_dir) if cache_dir is not None else None
    classes = _check_same_data({name: m for name, (m, _) in loaded.items()}, cache_dir)
    allowed = {name: v for name, v in loaded.items() if not gate.candidates or name in gate.candidates}
    if not allowed:
        raise GateError(f"gate.candidates is {gate.candidates} but none of them was evaluated in this run "
                        f"(evaluated: {sorted(loaded)})")
    eligible, left_out = _eligible(allowed, gate.primary_metric)
    left_out += [f"{name} is not a candidate: gate.candidates is {gate.candidates}" for name in loaded
                 if name not in allowed]
    challenger = pick_challenger(eligible, gate.primary_metric)
    flat = flat_by_model[challenger]
    checks = _absolute_checks(flat, gate.min_metrics, loaded[challenger][0].split(split))
    if gate.must_beat_baseline:
        checks.append(_baseline_check(flat))
    qualified = _qualified_check(loaded[challenger][0])
    if gate.refuse_collapsed:
        checks.append(qualified)
    elif not qualified["passed"]:  # an operator's choice (the demo's sample): said, not enforced
        left_out = left_out + [f"not enforced (gate.refuse_collapsed=false): {qualified['reason']}"]
    rescored, notes = _find_champion(store, cache_dir, split, classes, cfg)
    notes = left_out + notes
    champion, comparison = None, None
    if rescored is not None:
        champion, champion_probs, arrays = rescored
        checks.append(_champion_check(flat, champion, gate.primary_metric, gate.champion_tolerance))
        comparison, sentence = _paired_comparison(
            challenger, champion, _challenger_probs(Path(metrics_paths[challenger]), split, arrays, classes),
            champion_probs, arrays, cfg)
        notes = notes + [sentence]
    passed = all(c["passed"] for c in checks)
    failed = [c["reason"] for c in checks if not c["passed"]]
    reasons = notes + (failed or [f"{challenger} passed all {len(checks)} checks"])
    decision = GateDecision(
        passed=passed, challenger=challenger, split=split, primary_metric=gate.primary_metric,
        candidates={name: {"primary": f.get(gate.primary_metric), "metrics": str(metrics_paths[name])}
                    for name, f in flat_by_model.items()},
        challenger_metrics=flat, champion=champion, champion_comparison=comparison,
        first_run=champion is None,
        tolerance=gate.champion_tolerance, checks=checks, reasons=reasons, settings=settings,
    )
    decision.write(out_path)
    _logger.info("gate %s for %s: %s", "PASSED" if passed else "FAILED", challenger, "; ".join(reasons))
    return decision.to_dict()


def _find_champion(store: Any, cache_dir: Path | None, split: str, classes: list[str],
                   cfg: Config) -> tuple[tuple[dict[str, Any], np.ndarray, Any] | None, list[str]]:
    """(re-scored champion with its probabilities and the split's arrays, or None; notes for the report)."""
    if store is None:
        return None, ["no model store given: the champion comparison was not done; only the absolute gates apply"]
    if read_champion(store) is None:
        return None, [f"first run: no champion in {store.uri()}; only the absolute gates apply"]
    if cache_dir is None:
        raise GateError("a champion is published: pass cache_dir so it can be re-scored on the current split")
    return _rescore_champion(store, cache_dir, split, classes, cfg.score.provider, cfg.score.batch_size), []
