"""Calibration: do the predicted probabilities mean what they say?

Ranking metrics (AUC) ignore it; a clinician reading "cancer 0.8" does not. Weighted sampling and class-weighted
losses deliberately train on balanced priors, so their probabilities overstate the rare classes on a split with
the real prevalence; this report makes that visible instead of leaving it to be discovered in use.

- Brier score (scikit-learn `brier_score_loss`, multi-class: mean squared distance between the probability vector
  and the one-hot label; 0 is perfect) beside the Brier score of always predicting the split's class
  prevalence, the score of a model that knows nothing but the base rates.
- Expected calibration error (ECE) of the top-label confidence in equal-width bins: the mean |accuracy -
  confidence| weighted by bin size (scikit-learn has no ECE; this is the usual definition, Guo et al. 2017).
- Per class: one-vs-rest Brier score, mean predicted probability and the class's prevalence.
- The same after the prior correction of `medpipe.priors` (the model's outputs moved from the prior it was
  trained under to the training set's prevalence; no fitting on the evaluated split), when it is known.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import brier_score_loss

from medpipe.priors import apply_prior_correction

__all__ = ["calibration_metrics", "expected_calibration_error"]


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> float:
    """Top-label ECE: bins of the highest probability (0..1 in `n_bins` equal-width bins, the last one closed).

    Args:
        y_true: (N,) class indices.
        probs: (N, C) probabilities.
        n_bins: number of bins (at least 1).
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    y_true, probs = np.asarray(y_true), np.asarray(probs, dtype=np.float64)
    confidence = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    bins = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)  # confidence 1.0 goes in the last bin
    counts = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, weights=correct, minlength=n_bins)
                 - np.bincount(bins, weights=confidence, minlength=n_bins))  # per bin: |sum correct - sum conf|
    return float(gap.sum() / max(counts.sum(), 1))


def calibration_metrics(y_true: np.ndarray, probs: np.ndarray, classes: list[str], n_bins: int = 10,
                        prior_correction: list[float] | None = None) -> dict[str, Any]:
    """The `calibration` object of a split in metrics.json.

    Args:
        y_true: (N,) integer class indices into `classes`.
        probs: (N, C) probabilities (rows sum to 1).
        classes: class names in column order.
        n_bins: bins of the expected calibration error.
        prior_correction: factors of `medpipe.priors.apply_prior_correction`, or None when unknown.

    Returns:
        {"brier", "brier_prevalence", "ece", "ece_bins", "per_class": {name: {"brier", "mean_probability",
        "prevalence"}}, "prior_corrected": {"factors", "brier", "ece", "mean_probability": {name: ..}} or None};
        a class absent from the split has a per-class Brier score all the same (its mean probability should
        then be near 0).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    sums = probs.sum(axis=1, keepdims=True)
    if not np.allclose(sums, 1.0, atol=1e-3):
        worst = int(np.argmax(np.abs(sums[:, 0] - 1.0)))
        raise ValueError(f"probability rows must sum to 1; row {worst} sums to {sums[worst, 0]:.6f}")
    probs = probs / sums  # float32 softmax rows are 1 +- 1e-7; scikit-learn's Brier check wants them exact
    labels = list(range(len(classes)))
    prevalence = np.bincount(y_true, minlength=len(classes)) / y_true.size
    constant = np.broadcast_to(prevalence, probs.shape)
    per_class = {
        name: {"brier": float(brier_score_loss(y_true == c, probs[:, c], pos_label=True)),
               "mean_probability": float(probs[:, c].mean()), "prevalence": float(prevalence[c])}
        for c, name in enumerate(classes)
    }
    corrected = None
    if prior_correction is not None:
        adjusted = apply_prior_correction(probs, prior_correction)
        corrected = {"factors": [float(f) for f in prior_correction],
                     "brier": float(brier_score_loss(y_true, adjusted, labels=labels)),
                     "ece": expected_calibration_error(y_true, adjusted, n_bins),
                     "mean_probability": {name: float(adjusted[:, c].mean()) for c, name in enumerate(classes)}}
    return {
        "brier": float(brier_score_loss(y_true, probs, labels=labels)),
        "brier_prevalence": float(brier_score_loss(y_true, constant, labels=labels)),
        "ece": expected_calibration_error(y_true, probs, n_bins),
        "ece_bins": n_bins,
        "per_class": per_class,
        "prior_corrected": corrected,
    }
