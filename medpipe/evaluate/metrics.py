"""Classification metrics of one split, always beside the majority-class baseline.

A metric that is undefined on a split (the AUC of a class without positives, the recall of a class that is
absent) is None and becomes `null` in metrics.json: it is never replaced by a made-up number.
"""

from __future__ import annotations

import itertools
import logging
import warnings
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
    roc_curve,
)

from medpipe.evaluate.uncertainty import CI_METRICS

__all__ = ["compute_metrics", "flatten_metrics", "majority_class", "BASELINE_KEYS", "CI_BOUNDS"]

_logger = logging.getLogger(__name__)

# Metrics reported for both the model and the majority-class baseline.
BASELINE_KEYS = ("accuracy", "balanced_accuracy", "f1_weighted", "f1_macro", "macro_auc")
# Per-class metric name in metrics.json -> prefix of its flat name (`recall_cancer`, `auc_cancer`, ...).
_FLAT_PER_CLASS = {
    "precision": "precision",
    "recall": "recall",
    "f1": "f1",
    "support": "support",
    "roc_auc": "auc",
    "average_precision": "ap",
    "sensitivity_at_90_specificity": "sens_at_spec90",
    "sensitivity_at_95_specificity": "sens_at_spec95",
}
# Operating points reported per class: how many of the class a threshold catches while it falsely flags at most
# 10 % / 5 % of the other images (the way screening performance is stated), read off the one-vs-rest ROC curve.
_SPECIFICITIES = {"sensitivity_at_90_specificity": 0.90, "sensitivity_at_95_specificity": 0.95}
# Flat name of a bootstrap interval bound -> (metric in CI_METRICS, index into its [low, high]).
CI_BOUNDS = {f"{metric}_ci_{side}": (metric, index) for metric in CI_METRICS
             for index, side in enumerate(("low", "high"))}


def _check_inputs(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=np.float64)
    n_classes = len(classes)
    if y_true.ndim != 1 or y_true.size == 0:
        raise ValueError(f"y_true must be a non-empty 1-D array of class indices, got shape {y_true.shape}")
    if not np.issubdtype(y_true.dtype, np.integer):
        raise ValueError(f"y_true must hold integer class indices, got dtype {y_true.dtype}")
    if probs.shape != (y_true.size, n_classes):
        raise ValueError(
            f"probs must have shape (N, C) = ({y_true.size}, {n_classes}) for classes {classes}, got {probs.shape}"
        )
    bad = y_true[(y_true < 0) | (y_true >= n_classes)]
    if bad.size:
        raise ValueError(f"y_true holds class indices {sorted(set(bad.tolist()))} outside 0..{n_classes - 1}")
    if not np.isfinite(probs).all():
        raise ValueError("probs holds NaN or infinite values; the model output is broken")
    return y_true.astype(np.int64), probs


def majority_class(y_true: np.ndarray, num_classes: int) -> int:
    """Index of the most frequent class (ties go to the lowest index, i.e. the first in data.classes)."""
    counts = np.bincount(np.asarray(y_true, dtype=np.int64), minlength=num_classes)
    return int(np.argmax(counts))


def _none_if_nan(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def _aggregate(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Accuracy and friends; F1 averages run over the classes present in y_true or y_pred (sklearn's default),
    so a class absent from the split does not drag the macro F1 down with an invented zero."""
    with warnings.catch_warnings():
        # Both describe exactly the behaviour wanted here (classes absent from the split are left out);
        # compute_metrics logs the absent classes once itself.
        warnings.filterwarnings("ignore", message="y_pred contains classes not in y_true")
        warnings.filterwarnings("ignore", message="A single label was found")
        return {
            "accuracy": float(accuracy_score(y_true, y_pred)),
            # balanced accuracy = mean recall over the classes present in y_true (the only ones with a recall).
            "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
            "f1_weighted": float(f1_score(y_true, y_pred, average="weighted", zero_division=0)),
            "f1_macro": float(f1_score(y_true, y_pred, average="macro", zero_division=0)),
        }


def _sensitivity_at_specificity(positives: np.ndarray, scores: np.ndarray, specificity: float) -> float:
    """Highest true-positive rate of any threshold whose false-positive rate is at most 1 - specificity."""
    fpr, tpr, _ = roc_curve(positives, scores)
    return float(tpr[fpr <= 1.0 - specificity + 1e-12].max())  # the first ROC point is (0, 0): never empty


def _per_class(y_true: np.ndarray, y_pred: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict[str, Any]:
    labels = list(range(len(classes)))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    result: dict[str, Any] = {}
    for c, name in enumerate(classes):
        positives = int(support[c])
        predicted = int((y_pred == c).sum())
        has_both = 0 < positives < y_true.size
        result[name] = {
            # zero_division=0 only where the class is in the split; without positives, recall and F1 do not
            # exist, and precision exists only if the model predicted the class at least once.
            "precision": float(precision[c]) if positives or predicted else None,
            "recall": float(recall[c]) if positives else None,
            "f1": float(f1[c]) if positives else None,
            "support": positives,
            "roc_auc": float(roc_auc_score(y_true == c, probs[:, c])) if has_both else None,
            "average_precision": float(average_precision_score(y_true == c, probs[:, c])) if positives else None,
            **{key: _sensitivity_at_specificity(y_true == c, probs[:, c], spec) if has_both else None
               for key, spec in _SPECIFICITIES.items()},
        }
    return result


def _baseline(y_true: np.ndarray, classes: list[str], baseline_class: int | str | None,
              macro_auc: float | None) -> dict[str, Any]:
    if baseline_class is None:
        index, source = majority_class(y_true, len(classes)), "split"
    else:
        index = classes.index(baseline_class) if isinstance(baseline_class, str) else int(baseline_class)
        source = "given"
    y_pred = np.full_like(y_true, index)
    return {
        "majority_class": classes[index],
        # "split": majority of this very split (optimistic); "given": passed by the caller, normally the
        # training split's majority, which is the predictor one could actually have deployed.
        "majority_source": source,
        **_aggregate(y_true, y_pred),
        # A constant score ranks nothing: AUC 0.5 wherever an AUC exists at all.
        "macro_auc": 0.5 if macro_auc is not None else None,
    }


def _check_baseline_class(baseline_class: int | str | None, classes: list[str]) -> None:
    if baseline_class is None:
        return
    if isinstance(baseline_class, str):
        if baseline_class not in classes:
            raise ValueError(f"baseline_class {baseline_class!r} is not one of the classes {classes}")
    elif not 0 <= int(baseline_class) < len(classes):
        raise ValueError(f"baseline_class index {baseline_class} is outside 0..{len(classes) - 1}")


def _pairwise_auc(y_true: np.ndarray, probs: np.ndarray, classes: list[str]) -> dict[str, float | None]:
    """One-vs-one ROC AUC per pair of classes (Hand & Till 2001: the mean of A(i|j) and A(j|i), each on the two
    classes' images only; sklearn's `multi_class="ovo"` averages exactly these).

    One-vs-rest AUCs hide where a model fails: when one class is separable by its source (mammo-ddsm's normals),
    every one-vs-rest AUC is high while the two lesion classes may be told apart at chance. Keys "a_vs_b" in
    class order; None where either class has no image.
    """
    pairs: dict[str, float | None] = {}
    for i, j in itertools.combinations(range(len(classes)), 2):
        both = (y_true == i) | (y_true == j)
        key = f"{classes[i]}_vs_{classes[j]}"
        if not (y_true == i).any() or not (y_true == j).any():
            pairs[key] = None
            continue
        a_ij = roc_auc_score(y_true[both] == i, probs[both, i])
        a_ji = roc_auc_score(y_true[both] == j, probs[both, j])
        pairs[key] = float((a_ij + a_ji) / 2)
    return pairs


def compute_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str],
                    baseline_class: int | str | None = None) -> dict[str, Any]:
    """Metrics of one split (the `splits.<name>` object of metrics.json).

    Args:
        y_true: (N,) integer class indices into `classes`.
        probs: (N, C) class probabilities; the prediction is their argmax.
        classes: class names in output order.
        baseline_class: the class the majority baseline always predicts (name or index), normally the training
            split's majority class; None takes the majority of `y_true` itself. `baseline.majority_source`
            records which ("given" or "split").

    Returns:
        dict with n, accuracy, balanced_accuracy, f1_weighted, f1_macro, macro_auc (mean one-vs-rest AUC over
        the classes that have positives and negatives; None if none has), pairwise_auc (one-vs-one, per pair of
        classes), per_class, confusion_matrix
        (rows = true, columns = predicted, in `classes` order) and baseline.

    Raises:
        ValueError: shapes disagree, labels out of range, non-finite probabilities or an unknown baseline class.
    """
    classes = list(classes)
    y_true, probs = _check_inputs(y_true, probs, classes)
    _check_baseline_class(baseline_class, classes)
    y_pred = probs.argmax(axis=1)
    per_class = _per_class(y_true, y_pred, probs, classes)
    aucs = [m["roc_auc"] for m in per_class.values() if m["roc_auc"] is not None]
    macro_auc = float(np.mean(aucs)) if aucs else None
    missing = [name for name, m in per_class.items() if m["support"] == 0]
    if missing:
        _logger.warning("classes %s have no samples in this split: their recall/AUC/AP are null", missing)
    return {
        "n": int(y_true.size),
        **_aggregate(y_true, y_pred),
        "macro_auc": macro_auc,
        "pairwise_auc": _pairwise_auc(y_true, probs, classes),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=list(range(len(classes)))).tolist(),
        "baseline": _baseline(y_true, classes, baseline_class, macro_auc),
    }


def flatten_metrics(split_metrics: dict[str, Any]) -> dict[str, float | None]:
    """One split's metrics as flat names, the ones gate thresholds use.

    `macro_auc`, `balanced_accuracy`, `accuracy`, `f1_weighted`, `f1_macro`, `n`; per class `recall_<c>`,
    `precision_<c>`, `f1_<c>`, `support_<c>`, `auc_<c>`, `ap_<c>`; per pair of classes `auc_<a>_vs_<b>` (one-vs-
    one, e.g. `auc_benign_vs_cancer`); `baseline_<metric>` for the baseline; and
    `<metric>_ci_low` / `<metric>_ci_high` for each metric with a patient-bootstrap interval (`macro_auc`,
    `balanced_accuracy`: the bounds of `confidence_intervals.<metric>`). The bounds are always there, None where
    the split has no interval: bootstrap off (evaluate.bootstrap_resamples 0), metric undefined, or a
    metrics.json written before the intervals existed.

    Args:
        split_metrics: the object `compute_metrics` returns (metrics.json `splits.<name>`), with the
            `confidence_intervals` of `bootstrap_intervals` when `evaluate_model` wrote it.

    Returns:
        name -> value (None where the metric is undefined).
    """
    flat: dict[str, float | None] = {"n": split_metrics.get("n")}
    for key in BASELINE_KEYS:
        flat[key] = _none_if_nan(split_metrics.get(key))
    for name, values in split_metrics.get("per_class", {}).items():
        for key, prefix in _FLAT_PER_CLASS.items():
            flat[f"{prefix}_{name}"] = _none_if_nan(values.get(key))
    for pair, value in (split_metrics.get("pairwise_auc") or {}).items():
        flat[f"auc_{pair}"] = _none_if_nan(value)
    baseline = split_metrics.get("baseline", {})
    for key in BASELINE_KEYS:
        flat[f"baseline_{key}"] = _none_if_nan(baseline.get(key))
    # Present even without intervals (older metrics.json): a threshold on a bound then fails the gate with the
    # reason the interval is missing, instead of being refused as an unknown metric name.
    intervals = split_metrics.get("confidence_intervals") or {}
    for name, (metric, index) in CI_BOUNDS.items():
        bounds = intervals.get(metric)
        flat[name] = _none_if_nan(bounds[index]) if bounds else None
    return flat
