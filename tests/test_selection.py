"""The guard on the best epoch (medpipe.selection): a collapsed epoch cannot become best.pt while one qualifies."""

from __future__ import annotations

import math

import pytest

from medpipe.selection import chance_balanced_accuracy, is_better, qualification, replaces_best


def _select(history: list[tuple[float, float]], monitor: str = "macro_auc", margin: float = 0.05,
            chance: float = 1 / 3) -> int:
    """The best epoch (1-based) of (monitored score, val balanced accuracy) pairs, as run_epochs picks it."""
    best_score, best_qualified, best_epoch = float("nan"), False, 0
    for epoch, (score, balanced_accuracy) in enumerate(history, start=1):
        qualified = qualification(balanced_accuracy, chance, margin)["qualified"]
        if replaces_best(score, qualified, best_score, best_qualified, monitor):
            best_score, best_qualified, best_epoch = score, qualified, epoch
    return best_epoch


def test_a_collapsed_epoch_never_beats_a_qualifying_one_whatever_its_auc():
    # Epoch 2 is the masked resnet18 of the issue: the top macro AUC, balanced accuracy 0.343 (one class called).
    history = [(0.70, 0.50), (0.95, 0.343), (0.80, 0.60), (0.99, 0.36), (0.78, 0.65)]
    assert _select(history) == 3


def test_the_first_qualifying_epoch_replaces_a_collapsed_best():
    assert _select([(0.95, 0.34), (0.60, 0.40)]) == 2


def test_with_no_qualifying_epoch_the_monitor_alone_decides():
    assert _select([(0.70, 0.30), (0.90, 0.34), (0.80, 0.35)]) == 2


def test_margin_zero_requires_only_more_than_chance():
    assert _select([(0.9, 1 / 3), (0.6, 0.34)], margin=0.0) == 2
    assert _select([(0.9, 0.36), (0.6, 0.40)], margin=0.0) == 1


def test_lower_is_better_monitor_and_unjudged_epochs():
    assert _select([(0.2, 0.30), (0.9, 0.50), (0.5, 0.60)], monitor="loss") == 3
    # None (val holds one class) counts as qualifying: the old rule, by the monitor alone.
    assert replaces_best(0.9, None, 0.5, None, "macro_auc")
    assert not replaces_best(0.99, False, 0.5, None, "macro_auc")
    assert is_better(0.5, float("nan"), "loss") and not is_better(float("nan"), 0.5, "macro_auc")


def test_chance_is_one_over_the_classes_present_in_val():
    assert chance_balanced_accuracy([0, 1, 2, 2]) == pytest.approx(1 / 3)
    assert chance_balanced_accuracy([0, 2, 2]) == 0.5
    assert chance_balanced_accuracy([1, 1]) is None


@pytest.mark.parametrize("value, expected, words", [
    (0.343, False, ["0.3430 <= 0.3833", "chance 0.3333 for 3 classes", "train.min_balanced_accuracy_margin 0.05",
                    "collapsed"]),
    (0.61, True, ["0.6100 > 0.3833"]),
    (None, False, ["undefined", "0.3833"]),
    (math.nan, False, ["undefined"]),
])
def test_qualification_says_balanced_accuracy_chance_and_margin(value, expected, words):
    verdict = qualification(value, 1 / 3, 0.05)
    assert verdict["qualified"] is expected
    assert verdict["required"] == pytest.approx(1 / 3 + 0.05)
    for word in words:
        assert word in verdict["reason"]


def test_one_class_in_val_is_not_judged():
    verdict = qualification(1.0, None, 0.05)
    assert verdict["qualified"] is None and "not checked" in verdict["reason"]
