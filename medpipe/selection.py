"""Which epoch may become best.pt: the best by `train.monitor` among the epochs that are not collapsed.

An epoch is collapsed when its val balanced accuracy does not beat chance — the majority baseline, 1 / the number
of classes present in val — by `train.min_balanced_accuracy_margin`. A model that calls nearly every image one
class can still rank images well (macro AUC is a ranking metric) and win the monitor early in training: a masked
resnet18 picked epoch 2 with balanced accuracy 0.343 on three classes. Such an epoch cannot become best.pt while
any epoch qualifies; when none does, best.pt stays the best by the monitor and says it is collapsed, and the gate
refuses it. Cheap to import: no torch, no numpy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

__all__ = ["is_better", "replaces_best", "chance_balanced_accuracy", "qualification", "LOWER_IS_BETTER"]

LOWER_IS_BETTER = frozenset({"loss"})


def is_better(score: float, best: float, monitor: str) -> bool:
    """Whether `score` improves on `best` for `monitor` (NaN = undefined; a first checkpoint is always kept)."""
    if score is None or math.isnan(score):
        return best is None or math.isnan(best)  # keep a first checkpoint even when the metric is undefined
    if best is None or math.isnan(best):
        return True
    return score < best if monitor in LOWER_IS_BETTER else score > best


def replaces_best(score: float, qualified: bool | None, best_score: float, best_qualified: bool | None,
                  monitor: str) -> bool:
    """Whether an epoch takes best.pt from the best so far.

    A qualifying epoch always beats a collapsed best, a collapsed one never beats a qualifying best; between two
    of the same kind the monitor decides. `None` (not judged: val holds one class, or an old run) counts as
    qualifying. Before any epoch, pass `best_score=nan, best_qualified=False`.
    """
    passes, best_passes = qualified is not False, best_qualified is not False
    if passes != best_passes:
        return passes
    return is_better(score, best_score, monitor)


def chance_balanced_accuracy(labels: Iterable[int]) -> float | None:
    """Balanced accuracy of the majority baseline (any constant answer): 1 / the classes present; None under 2."""
    present = len(set(int(label) for label in labels))
    return 1.0 / present if present >= 2 else None


def qualification(balanced_accuracy: float | None, chance: float | None, margin: float) -> dict[str, Any]:
    """Whether an epoch's val balanced accuracy beats chance by `margin`, and the sentence that says so.

    Returns:
        {"qualified": True | False | None (not judged), "balanced_accuracy", "chance", "margin", "required",
        "reason"}; `required` = chance + margin, which the balanced accuracy must exceed.
    """
    facts: dict[str, Any] = {"balanced_accuracy": balanced_accuracy, "chance": chance, "margin": margin,
                             "required": None if chance is None else chance + margin}
    if chance is None:
        return {"qualified": None, **facts, "reason": "val holds fewer than two classes: balanced accuracy cannot "
                "show that the model beats chance; not checked"}
    required = facts["required"]
    if balanced_accuracy is None or not math.isfinite(balanced_accuracy):
        return {"qualified": False, **facts, "reason": f"val balanced accuracy is undefined, so it cannot exceed "
                f"{required:.4f} (chance {chance:.4f} + train.min_balanced_accuracy_margin {margin})"}
    ok = balanced_accuracy > required
    verdict = "" if ok else ": the epoch calls too many images one class (collapsed)"
    return {"qualified": ok, **facts, "reason": f"val balanced accuracy {balanced_accuracy:.4f} "
            f"{'>' if ok else '<='} {required:.4f} (chance {chance:.4f} for {round(1 / chance)} classes in val + "
            f"train.min_balanced_accuracy_margin {margin}){verdict}"}
