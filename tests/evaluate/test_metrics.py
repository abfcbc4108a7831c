"""compute_metrics / flatten_metrics against values computed by hand on small arrays."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medpipe.evaluate.metrics import CI_BOUNDS, compute_metrics, flatten_metrics, majority_class
from medpipe.evaluate.uncertainty import bootstrap_intervals

CLASSES = ["normal", "benign", "cancer"]


def _one_hot(labels: list[int], num_classes: int = 3, confidence: float = 0.8) -> np.ndarray:
    rest = (1 - confidence) / (num_classes - 1)
    probs = np.full((len(labels), num_classes), rest)
    probs[np.arange(len(labels)), labels] = confidence
    return probs


def test_perfect_classifier_scores_one_everywhere_and_baseline_by_hand():
    y = np.array([0, 0, 0, 1, 1, 2])
    m = compute_metrics(y, _one_hot(y.tolist()), CLASSES)
    for key in ("accuracy", "balanced_accuracy", "f1_weighted", "f1_macro", "macro_auc"):
        assert m[key] == pytest.approx(1.0), key
    for name, support in zip(CLASSES, (3, 2, 1)):
        pc = m["per_class"][name]
        assert pc["support"] == support
        for key in ("precision", "recall", "f1", "roc_auc", "average_precision"):
            assert pc[key] == pytest.approx(1.0), (name, key)
    assert m["n"] == 6
    assert m["confusion_matrix"] == [[3, 0, 0], [0, 2, 0], [0, 0, 1]]
    # Always "normal": 3 of 6 right; recall 1, 0, 0; F1 of normal = 2 * 0.5 * 1 / 1.5 = 2/3.
    b = m["baseline"]
    assert b["majority_class"] == "normal" and b["majority_source"] == "split"
    assert b["accuracy"] == pytest.approx(0.5)
    assert b["balanced_accuracy"] == pytest.approx(1 / 3)
    assert b["f1_macro"] == pytest.approx(2 / 9)
    assert b["f1_weighted"] == pytest.approx(3 * (2 / 3) / 6)
    assert b["macro_auc"] == 0.5
    json.dumps(m, allow_nan=False)  # the schema is plain JSON: no numpy types, no NaN


def test_always_normal_predictor_equals_the_baseline():
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2, 0])
    probs = np.tile([0.7, 0.2, 0.1], (y.size, 1))
    m = compute_metrics(y, probs, CLASSES)
    for key in ("accuracy", "balanced_accuracy", "f1_weighted", "f1_macro", "macro_auc"):
        assert m[key] == pytest.approx(m["baseline"][key]), key
    assert m["per_class"]["benign"]["precision"] == 0.0  # never predicted, but present: zero_division=0
    assert m["per_class"]["benign"]["recall"] == 0.0
    assert m["confusion_matrix"] == [[5, 0, 0], [2, 0, 0], [2, 0, 0]]


def test_hand_computed_auc_ap_and_confusion():
    y = np.array([0, 0, 1, 1])
    p1 = np.array([0.1, 0.6, 0.4, 0.8])
    m = compute_metrics(y, np.stack([1 - p1, p1], axis=1), ["neg", "pos"])
    # (neg, pos) pairs ranked right: (0.1,0.4) (0.1,0.8) (0.6,0.8); wrong: (0.6,0.4) -> 3/4.
    assert m["per_class"]["pos"]["roc_auc"] == pytest.approx(0.75)
    assert m["per_class"]["neg"]["roc_auc"] == pytest.approx(0.75)
    assert m["macro_auc"] == pytest.approx(0.75)
    # Ranked: 0.8 (pos), 0.6 (neg), 0.4 (pos) -> precisions at the positives 1 and 2/3.
    assert m["per_class"]["pos"]["average_precision"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["per_class"]["pos"]["precision"] == pytest.approx(0.5)
    assert m["confusion_matrix"] == [[1, 1], [1, 1]]


def test_pairwise_auc_shows_the_pair_that_one_vs_rest_hides():
    """Normals perfectly separated, benign and cancer scored alike: every one-vs-rest AUC is far above chance,
    the benign-vs-cancer pair is exactly 0.5; the mean of the pairs is sklearn's one-vs-one macro AUC."""
    from sklearn.metrics import roc_auc_score

    y = np.array([0] * 8 + [1] * 4 + [2] * 4)
    probs = np.array([[0.9, 0.05, 0.05]] * 8 + [[0.1, 0.45, 0.45]] * 8)
    m = compute_metrics(y, probs, CLASSES)
    assert min(c["roc_auc"] for c in m["per_class"].values()) >= 0.66
    assert m["pairwise_auc"] == {"normal_vs_benign": 1.0, "normal_vs_cancer": 1.0, "benign_vs_cancer": 0.5}
    rng = np.random.default_rng(0)
    noisy = rng.dirichlet(np.ones(3), size=16)
    pairs = compute_metrics(y, noisy, CLASSES)["pairwise_auc"]
    assert np.mean(list(pairs.values())) == pytest.approx(roc_auc_score(y, noisy, multi_class="ovo"))
    assert flatten_metrics(m)["auc_benign_vs_cancer"] == 0.5
    assert compute_metrics(np.array([0, 0, 1]), probs[:3], CLASSES)["pairwise_auc"]["benign_vs_cancer"] is None


def test_class_without_positives_is_null_not_invented():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1]])
    m = compute_metrics(y, probs, CLASSES)
    cancer = m["per_class"]["cancer"]
    assert cancer["support"] == 0
    assert cancer["roc_auc"] is None and cancer["average_precision"] is None
    assert cancer["recall"] is None and cancer["f1"] is None
    assert cancer["precision"] == 0.0  # predicted once, wrongly: a real zero
    # normal: positives .8 .1 vs negatives .2 .3 -> 2 of 4 pairs; benign: .7 .6 vs .1 .1 -> 1.
    assert m["per_class"]["normal"]["roc_auc"] == pytest.approx(0.5)
    # macro AUC averages only normal and benign; cancer has no AUC to average.
    assert m["macro_auc"] == pytest.approx(0.75)
    # balanced accuracy: recall over the classes present = (1/2 + 1) / 2.
    assert m["balanced_accuracy"] == pytest.approx(0.75)
    assert "null" in json.dumps(m, allow_nan=False)


def test_never_predicted_absent_class_has_null_precision_and_single_class_has_null_auc():
    y = np.array([1, 1, 1])
    m = compute_metrics(y, _one_hot([1, 1, 0]), CLASSES)
    assert m["per_class"]["cancer"]["precision"] is None
    assert m["per_class"]["benign"]["roc_auc"] is None  # no negatives
    assert m["macro_auc"] is None and m["baseline"]["macro_auc"] is None


def test_given_baseline_class_is_used_and_recorded():
    y = np.array([0, 0, 0, 1, 2])
    m = compute_metrics(y, _one_hot(y.tolist()), CLASSES, baseline_class="benign")
    b = m["baseline"]
    assert b["majority_class"] == "benign" and b["majority_source"] == "given"
    assert b["accuracy"] == pytest.approx(1 / 5)
    assert b["balanced_accuracy"] == pytest.approx(1 / 3)
    assert compute_metrics(y, _one_hot(y.tolist()), CLASSES, baseline_class=2)["baseline"]["majority_class"] == "cancer"


def test_majority_class_ties_go_to_the_first_class():
    assert majority_class(np.array([2, 2, 1, 1]), 3) == 1
    assert majority_class(np.array([2, 2, 2, 0]), 3) == 2


@pytest.mark.parametrize(
    ("y", "probs", "kwargs", "message"),
    [
        (np.array([0, 1]), np.zeros((3, 3)), {}, r"shape \(N, C\) = \(2, 3\)"),
        (np.array([0, 5]), np.zeros((2, 3)), {}, r"\[5\] outside 0..2"),
        (np.array([0.0, 1.0]), np.zeros((2, 3)), {}, "integer"),
        (np.array([], dtype=int), np.zeros((0, 3)), {}, "non-empty"),
        (np.array([0, 1]), np.array([[np.nan, 0, 0], [0, 1, 0]]), {}, "NaN"),
        (np.array([0, 1]), np.zeros((2, 3)), {"baseline_class": "tumour"}, "'tumour' is not one of"),
        (np.array([0, 1]), np.zeros((2, 3)), {"baseline_class": 3}, "outside 0..2"),
    ],
)
def test_bad_inputs_are_refused_with_a_clear_message(y, probs, kwargs, message):
    with pytest.raises(ValueError, match=message):
        compute_metrics(y, probs, CLASSES, **kwargs)


def test_flatten_metrics_gives_the_gate_names():
    y = np.array([0, 0, 1, 1])
    probs = np.array([[0.8, 0.1, 0.1], [0.1, 0.1, 0.8], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1]])
    m = compute_metrics(y, probs, CLASSES)
    flat = flatten_metrics(m)
    assert flat["macro_auc"] == m["macro_auc"]
    assert flat["balanced_accuracy"] == m["balanced_accuracy"]
    assert flat["recall_normal"] == pytest.approx(0.5)
    assert flat["precision_benign"] == pytest.approx(1.0)
    assert flat["auc_benign"] == m["per_class"]["benign"]["roc_auc"]
    assert flat["ap_normal"] == m["per_class"]["normal"]["average_precision"]
    assert flat["support_benign"] == 2
    assert flat["sens_at_spec90_benign"] == m["per_class"]["benign"]["sensitivity_at_90_specificity"]
    assert flat["sens_at_spec95_cancer"] is None  # no positives: no operating point
    assert flat["recall_cancer"] is None and flat["auc_cancer"] is None
    assert flat["baseline_balanced_accuracy"] == pytest.approx(0.5)
    assert flat["baseline_macro_auc"] == 0.5
    assert flat["n"] == 4


def test_flatten_metrics_exposes_the_bootstrap_bounds_and_null_without_an_interval():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    probs = np.clip(np.eye(3)[y] * 0.5 + rng.uniform(size=(60, 3)), 1e-3, None)
    probs /= probs.sum(axis=1, keepdims=True)
    patients = [f"p{i // 2}" for i in range(60)]  # two images per patient
    m = compute_metrics(y, probs, CLASSES)
    m["confidence_intervals"] = bootstrap_intervals(y, probs, patients, resamples=200, seed=0)
    flat = flatten_metrics(m)
    assert set(CI_BOUNDS) == {"macro_auc_ci_low", "macro_auc_ci_high",
                              "balanced_accuracy_ci_low", "balanced_accuracy_ci_high"}
    for metric in ("macro_auc", "balanced_accuracy"):
        low, high = m["confidence_intervals"][metric]
        assert (flat[f"{metric}_ci_low"], flat[f"{metric}_ci_high"]) == (low, high)
        assert low < flat[metric] < high  # the bounds bracket the point estimate, not a copy of it

    # Bootstrap off (resamples 0) and a metrics.json from before the intervals: the names exist, all null.
    m["confidence_intervals"] = bootstrap_intervals(y, probs, patients, resamples=0)
    assert all(flatten_metrics(m)[name] is None for name in CI_BOUNDS)
    del m["confidence_intervals"]
    assert all(flatten_metrics(m)[name] is None for name in CI_BOUNDS)

    # A split with a single class has no AUC, hence no AUC interval, while balanced accuracy keeps its one.
    single = np.zeros(10, dtype=np.int64)
    m = compute_metrics(single, _one_hot([0] * 10), CLASSES)
    m["confidence_intervals"] = bootstrap_intervals(single, _one_hot([0] * 10), [f"p{i}" for i in range(10)],
                                                    resamples=50, seed=0)
    flat = flatten_metrics(m)
    assert flat["macro_auc"] is None and flat["macro_auc_ci_low"] is None and flat["macro_auc_ci_high"] is None
    assert flat["balanced_accuracy_ci_low"] == m["confidence_intervals"]["balanced_accuracy"][0] == 1.0


def test_sensitivity_at_specificity_reads_the_roc_curve():
    # Cancer scores: 10 negatives 0.0, 0.1, ..., 0.9 and 4 positives 0.05, 0.55, 0.85, 0.95.
    # 90 % specificity allows 1 false positive of 10: threshold 0.85 flags 0.9 (FP) and 0.85, 0.95 -> 2/4.
    # 95 % allows none: only a threshold above 0.9 -> 0.95 alone -> 1/4.
    neg = np.linspace(0.0, 0.9, 10)
    pos = np.array([0.05, 0.55, 0.85, 0.95])
    scores = np.concatenate([neg, pos])
    y = np.array([0] * 10 + [2] * 4)
    probs = np.stack([1 - scores, np.zeros_like(scores), scores], axis=1)
    cancer = compute_metrics(y, probs, CLASSES)["per_class"]["cancer"]
    assert cancer["sensitivity_at_90_specificity"] == pytest.approx(0.5)
    assert cancer["sensitivity_at_95_specificity"] == pytest.approx(0.25)
    # The lowest negative (0.0) moved to the top (0.99): now even 90 % specificity allows only that one, which
    # outranks every positive -> threshold above 0.95 is 0 of 4 at 95 %, and at 90 % the FP costs the one
    # allowed, so 0.95 only -> 1/4.
    probs[0, 2], probs[0, 0] = 0.99, 0.01
    cancer = compute_metrics(y, probs, CLASSES)["per_class"]["cancer"]
    assert cancer["sensitivity_at_90_specificity"] == pytest.approx(0.25)
    assert cancer["sensitivity_at_95_specificity"] == pytest.approx(0.0)
