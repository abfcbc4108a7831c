"""Patient-level bootstrap intervals: the vectorised AUC equals scikit-learn's, and grouping by patient matters."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medpipe.evaluate.metrics import compute_metrics
from medpipe.evaluate.uncertainty import bootstrap_intervals, paired_difference_intervals, weighted_auc_many


def _scored(n: int, seed: int, separation: float = 1.0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3)) + separation * np.eye(3)[y]
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs


def test_weighted_auc_many_equals_sklearn_with_ties_and_zero_weights():
    y, probs = _scored(200, 0)
    scores = np.round(probs[:, 1], 1)  # heavy ties
    weights = np.random.default_rng(1).integers(0, 4, (6, 200)).astype(float)
    expected = [roc_auc_score(y == 1, scores, sample_weight=w) for w in weights]
    assert weighted_auc_many(scores, y == 1, weights) == pytest.approx(expected, abs=1e-12)
    no_positive = np.where(y == 1, 0.0, 1.0)[None, :]
    assert np.isnan(weighted_auc_many(scores, y == 1, no_positive)[0])


def test_intervals_cover_the_estimate_and_shrink_with_more_patients():
    widths = []
    for n in (90, 900):
        y, probs = _scored(n, 2)
        point = compute_metrics(y, probs, ["a", "b", "c"])
        ci = bootstrap_intervals(y, probs, [f"p{i}" for i in range(n)], resamples=500, seed=0)
        assert ci["kept"] == 500 and ci["groups"] == n
        for key in ("macro_auc", "balanced_accuracy"):
            assert ci[key][0] < point[key] < ci[key][1]
        widths.append(ci["macro_auc"][1] - ci["macro_auc"][0])
    assert widths[1] < widths[0] / 2  # ~1/sqrt(n): ten times the patients, about a third of the width
    again = bootstrap_intervals(y, probs, [f"p{i}" for i in range(900)], resamples=500, seed=0)
    assert again == ci


def test_two_views_of_one_patient_do_not_count_as_independent_evidence():
    y, probs = _scored(120, 3)
    # Every patient contributes two near-identical views (CC and MLO).
    y2, probs2 = np.repeat(y, 2), np.repeat(probs, 2, axis=0)
    by_patient = bootstrap_intervals(y2, probs2, np.repeat([f"p{i}" for i in range(120)], 2), resamples=800)
    by_image = bootstrap_intervals(y2, probs2, [f"i{i}" for i in range(240)], resamples=800)
    single = bootstrap_intervals(y, probs, [f"p{i}" for i in range(120)], resamples=800)
    width = {k: v["macro_auc"][1] - v["macro_auc"][0] for k, v in
             {"patient": by_patient, "image": by_image, "single": single}.items()}
    assert width["patient"] == pytest.approx(width["single"], rel=0.25)
    assert width["image"] < 0.85 * width["patient"]  # per-image resampling would overstate the precision


def test_disabled_or_bad_input():
    y, probs = _scored(30, 4)
    off = bootstrap_intervals(y, probs, list(range(30)), resamples=0)
    assert off["macro_auc"] is None and off["balanced_accuracy"] is None
    with pytest.raises(ValueError, match="one patient id per image"):
        bootstrap_intervals(y, probs, ["p"] * 29)


def test_paired_difference_is_narrower_than_the_two_intervals_and_signs_a_real_gap():
    rng = np.random.default_rng(4)
    y = rng.choice(3, size=240, p=[0.8, 0.1, 0.1])
    groups = np.arange(240) // 2  # two views per patient
    signal = np.eye(3)[y]
    a = 0.2 * signal + 0.8 * rng.dirichlet([1, 1, 1], size=240)  # AUC ~0.8: far from the ceiling
    b = 0.98 * a + 0.02 * rng.dirichlet([1, 1, 1], size=240)  # nearly the same model
    paired = paired_difference_intervals(y, a, b, groups, resamples=400)
    low, high = paired["macro_auc"]["interval"]
    own = bootstrap_intervals(y, a, groups, resamples=400)["macro_auc"]
    assert low <= paired["macro_auc"]["difference"] <= high
    assert high - low < 0.25 * (own[1] - own[0])  # the shared luck of the draw cancels
    assert paired["groups"] == 120 and paired["kept"] == 400
    same = paired_difference_intervals(y, a, a, groups, resamples=100)
    assert same["macro_auc"] == {"difference": 0.0, "interval": [0.0, 0.0]}
    clearly = paired_difference_intervals(y, a, rng.dirichlet([1, 1, 1], size=240), groups, resamples=200)
    assert clearly["macro_auc"]["interval"][0] > 0 and clearly["balanced_accuracy"]["interval"][0] > 0
    with pytest.raises(ValueError, match="needs the same images"):
        paired_difference_intervals(y, a, b[:10], groups)
