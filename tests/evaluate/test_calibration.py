"""Calibration metrics against hand-computed values and scikit-learn; the reliability diagram as a real PNG."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medpipe.evaluate.calibration import calibration_metrics, expected_calibration_error
from medpipe.evaluate.plots import plot_reliability

CLASSES = ["normal", "benign", "cancer"]


def test_ece_of_an_overconfident_model_is_the_gap():
    # Always 0.9 sure, right half the time: every sample in the 0.9 bin, |0.5 - 0.9| = 0.4.
    y = np.array([0, 1, 0, 1])
    probs = np.array([[0.9, 0.05, 0.05]] * 4)
    probs[1] = [0.05, 0.9, 0.05]
    probs[3] = [0.9, 0.05, 0.05]  # wrong (true class 1)
    probs[2] = [0.05, 0.05, 0.9]  # wrong (true class 0)
    assert expected_calibration_error(y, probs, n_bins=10) == pytest.approx(0.4)


def test_ece_weights_bins_by_size_and_puts_certainty_in_the_last_bin():
    y = np.array([0, 0, 0, 1])
    # Three samples at confidence 1.0, all right (gap 0); one at 0.6, wrong (gap 0.6) -> ECE 0.6 / 4.
    probs = np.array([[1.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0], [0.6, 0.3, 0.1]])
    assert expected_calibration_error(y, probs, n_bins=10) == pytest.approx(0.15)
    with pytest.raises(ValueError, match="n_bins must be at least 1"):
        expected_calibration_error(y, probs, n_bins=0)


def test_calibration_metrics_match_the_definitions():
    rng = np.random.default_rng(3)
    y = rng.choice(3, size=300, p=[0.8, 0.12, 0.08])  # mammography-like imbalance
    probs = rng.dirichlet([2, 2, 2], size=300)
    cal = calibration_metrics(y, probs, CLASSES)
    onehot = np.eye(3)[y]
    assert cal["brier"] == pytest.approx(np.mean(np.sum((probs - onehot) ** 2, axis=1)))
    prevalence = onehot.mean(axis=0)
    assert cal["brier_prevalence"] == pytest.approx(np.mean(np.sum((prevalence - onehot) ** 2, axis=1)))
    for c, name in enumerate(CLASSES):
        per = cal["per_class"][name]
        assert per["prevalence"] == pytest.approx(prevalence[c])
        assert per["mean_probability"] == pytest.approx(probs[:, c].mean())
        assert per["brier"] == pytest.approx(np.mean((probs[:, c] - onehot[:, c]) ** 2))
    # Probabilities that ignore the 80 % prevalence of normal (as balanced training produces) lose to the base
    # rates on Brier score, and the report shows why: mean probability of normal ~0.33 vs prevalence ~0.8.
    assert cal["brier"] > cal["brier_prevalence"]
    assert cal["per_class"]["normal"]["mean_probability"] < 0.4 < 0.7 < cal["per_class"]["normal"]["prevalence"]


def test_float32_softmax_is_accepted_and_non_probabilities_are_refused():
    logits = np.random.default_rng(1).normal(size=(50, 3)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    y = np.arange(50) % 3
    assert 0 <= calibration_metrics(y, probs, CLASSES)["brier"] <= 2
    with pytest.raises(ValueError, match="row 0 sums to 2.000000"):
        calibration_metrics(y, np.full((50, 3), 2 / 3), CLASSES)


def test_reliability_png(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=120)  # no cancer: its curve is noted, not drawn
    probs = rng.dirichlet([1, 1, 1], size=120)
    path = plot_reliability(y, probs, CLASSES, tmp_path / "reliability.png")
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] > 200
    with pytest.raises(ValueError, match="does not match"):
        plot_reliability(y, probs[:, :2], CLASSES, tmp_path / "bad.png")
