"""The class priors a model was trained under, and the correction that turns its outputs into risks.

Weighted sampling shows the model every class equally often and a class-weighted loss multiplies that again,
so the network learns p_t(y|x) under a training prior pi_t(y) proportional to sampling share x loss weight,
not under the data's prevalence pi(y). Bayes' rule moves it back without any fitting (Saerens, Latinne &
Decaestecker, Neural Computation 2002):

    p(y|x) = p_t(y|x) * w(y) / sum_k p_t(k|x) * w(k),   w(y) = pi(y) / pi_t(y)

`w` depends only on the training set's class counts and the training settings, so it is computed at training
time, stored in the checkpoint, reported by evaluation and carried into the ONNX metadata for scoring. The
arg-max decision keeps using p_t (balanced across classes, which is what balanced sampling was chosen for);
the corrected values are for reading as probabilities.

With `train.balanced_decision` the evaluated and exported logits also carry `balanced_logit_offset`, so the
outputs are under equal priors whatever the sampling and loss weights were; the correction factors then start
from that uniform prior.

This module is the one owner of that arithmetic: training's loss and sampling weights, the facts a checkpoint
records, their re-derivation for checkpoints older than them, the checked factors in ONNX metadata, and the
factors for a deployment prevalence that scoring may be given instead of the training one.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from medpipe.config import Config, TrainConfig

__all__ = ["PRIOR_META_KEYS", "class_weight_vector", "sampling_weights", "training_prior", "balanced_logit_offset",
           "prior_correction_factors", "deployment_correction", "apply_prior_correction", "check_prior_correction",
           "prior_facts", "checkpoint_prior_facts", "checkpoint_prior_correction",
           "decision_is_balanced", "prior_metadata", "read_prior_correction", "read_output_prior"]

_logger = logging.getLogger(__name__)

# The ONNX metadata keys of the priors (medpipe.onnx_runtime.META_KEYS): absent in models exported from
# checkpoints written before training recorded its priors.
PRIOR_META_KEYS = {
    "prior_correction": "factors per class, in class order, that turn the output probabilities into risks at the "
                        "training set's prevalence: p * w / sum(p * w) (JSON list; medpipe.priors); optional",
    "training_prior": "class prior training effectively used, from sampling and loss weights (JSON list); optional",
    "train_class_counts": "training images per class, the prevalence the risks assume (JSON list); optional",
    "output_prior": "class prior the outputs are under (uniform with the balanced decision; JSON list); optional",
}


def _inverse_frequency(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """1 / count per class, 0 for a class without images."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)


def class_weight_vector(setting: Any, labels: np.ndarray, num_classes: int) -> np.ndarray | None:
    """Loss weights per class: a configured list, 'auto' (inverse frequency, mean 1) or 'none'."""
    if setting == "none":
        return None
    if setting == "auto":
        inverse = _inverse_frequency(labels, num_classes)
        return inverse * (num_classes / inverse.sum())
    return np.asarray(setting, dtype=np.float64)


def sampling_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Draw weight per image for weighted sampling: inverse to its class's frequency, so that every present class
    is drawn equally often (the uniform sampling share of `training_prior`)."""
    return _inverse_frequency(labels, num_classes)[labels]


def training_prior(counts: Sequence[int], weighted_sampling: bool, loss_weights: Sequence[float] | None) -> np.ndarray:
    """The effective class prior of training: sampling share (uniform over present classes when sampling is
    weighted, the prevalence otherwise) times the loss weight, normalised. Absent classes get 0."""
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.sum() <= 0:
        raise ValueError(f"class counts must be a non-empty vector with a positive total, got {counts.tolist()}")
    present = counts > 0
    share = present / present.sum() if weighted_sampling else counts / counts.sum()
    weights = np.ones_like(counts) if loss_weights is None else np.asarray(loss_weights, dtype=np.float64)
    if weights.shape != counts.shape or (weights < 0).any():
        raise ValueError(f"loss weights {np.asarray(loss_weights).tolist()} must be {counts.size} non-negative values")
    prior = share * weights
    if prior.sum() <= 0:
        raise ValueError("every present class has loss weight 0: the model was trained on nothing")
    return prior / prior.sum()


def balanced_logit_offset(prior: Sequence[float]) -> np.ndarray:
    """log(uniform / prior) per class: added to the logits, it moves the model from deciding under the training
    prior to deciding under equal priors, the Bayes rule for balanced accuracy (post-hoc logit adjustment, Menon
    et al. 2021). 0 everywhere when the prior is already uniform; 0 for classes absent from training."""
    prior = np.asarray(prior, dtype=np.float64)
    present = prior > 0
    offset = np.zeros_like(prior)
    offset[present] = np.log(1.0 / present.sum()) - np.log(prior[present])
    return offset


def prior_correction_factors(counts: Sequence[float], prior: Sequence[float]) -> list[float]:
    """w(y) = prevalence(y) / training prior(y), scaled to sum to 1 (only ratios matter); 0 where either is 0.

    `counts` are class counts (the training set's) or any non-negative prevalence; they are normalised here."""
    counts = np.asarray(counts, dtype=np.float64)
    prior = np.asarray(prior, dtype=np.float64)
    prevalence = counts / counts.sum()
    factors = np.divide(prevalence, prior, out=np.zeros_like(prevalence), where=prior > 0)
    return (factors / factors.sum()).tolist()


def deployment_correction(prevalence: Sequence[float], output_prior: Sequence[float]) -> tuple[list[float],
                                                                                                list[float]]:
    """The factors that move outputs under `output_prior` to a deployment's class prevalence (e.g. a screening
    population's) instead of the training set's.

    Returns:
        (factors, the prevalence rescaled to sum 1).
    """
    target = np.asarray(prevalence, dtype=np.float64)
    return prior_correction_factors(target, output_prior), (target / target.sum()).tolist()


def apply_prior_correction(probs: np.ndarray, factors: Sequence[float]) -> np.ndarray:
    """Rows of `probs` (N, C) times `factors` (C,), renormalised; float64."""
    probs = np.asarray(probs, dtype=np.float64)
    factors = np.asarray(factors, dtype=np.float64)
    if probs.ndim != 2 or factors.shape != (probs.shape[1],):
        raise ValueError(f"prior correction: {factors.size} factors for probabilities of shape {probs.shape}")
    weighted = probs * factors
    total = weighted.sum(axis=1, keepdims=True)
    # A row whose probability mass sits only on classes with factor 0 cannot be corrected: keep it as it was.
    return np.divide(weighted, total, out=probs.copy(), where=total > 0)


def prior_facts(counts: Sequence[int], weighted_sampling: bool, loss_weights: Sequence[float] | None,
                balanced_decision: bool) -> dict[str, list]:
    """Everything training records about class priors (checkpoint meta keys): train class counts, the prior
    training teaches, the prior the model's outputs are under (equal priors with the balanced decision), the
    logit offset that gets them there, and the correction factors from those outputs to the prevalence."""
    prior = training_prior(counts, weighted_sampling, loss_weights)
    if balanced_decision:
        output_prior, offset = (prior > 0) / (prior > 0).sum(), balanced_logit_offset(prior)
    else:
        output_prior, offset = prior, np.zeros_like(prior)
    return {"train_class_counts": np.asarray(counts).tolist(), "training_prior": prior.tolist(),
            "output_prior": output_prior.tolist(), "logit_offset": offset.tolist(),
            "prior_correction": prior_correction_factors(counts, output_prior)}


def check_prior_correction(value: Any, n_classes: int, where: str) -> list[float]:
    """`value` as prior-correction factors: a list of `n_classes` finite non-negative numbers with a positive sum.

    Anything else would make every risk NaN or silently wrong, so it is refused rather than skipped.

    Raises:
        ValueError: starting with `where` and naming the key 'prior_correction'.
    """
    numbers = isinstance(value, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0 for v in value)
    if not numbers or len(value) != n_classes or sum(value) <= 0:
        raise ValueError(f"{where} 'prior_correction' must be a list of {n_classes} finite non-negative numbers "
                         f"(one per class, in class order) with a positive sum, got {value!r}")
    return [float(v) for v in value]


def _label_facts(labels: np.ndarray, num_classes: int, class_weights: Any, weighted_sampling: bool,
                 balanced_decision: bool) -> dict[str, list]:
    """`prior_facts` for training labels under the train settings class_weights, weighted_sampling and
    balanced_decision."""
    labels = np.asarray(labels)
    weights = class_weight_vector(class_weights, labels, num_classes)
    return prior_facts(np.bincount(labels, minlength=num_classes), weighted_sampling, weights, balanced_decision)


def checkpoint_prior_facts(cfg: Config, data: Any, train_rows: np.ndarray) -> dict[str, list]:
    """The prior facts a checkpoint records, for the train rows (of a `CachedDataset`) that training uses; warns
    when, without the balanced decision, the settings teach a lopsided balance."""
    train = cfg.train
    facts = _label_facts(np.asarray(data.splits["train"].labels)[train_rows], len(data.classes), train.class_weights,
                         train.weighted_sampling, train.balanced_decision)
    if not cfg.train.balanced_decision:
        _warn_if_lopsided(np.asarray(facts["training_prior"]), data.classes, train)
    return facts


def _warn_if_lopsided(prior: np.ndarray, classes: list[str], train: TrainConfig) -> None:
    """Say so when the settings make training far from balanced: e.g. the original's loss weights 0.1/3/4 on
    top of weighted sampling teach a prior of ~1 % for the first class, which the model then rarely predicts;
    on data where that class is not the majority (an ultrasound set with few normals) that is the wrong way."""
    present = prior[prior > 0]
    if present.max() / present.min() <= 5:
        return
    shown = ", ".join(f"{c} {p:.3f}" for c, p in zip(classes, prior))
    fix = ("train.class_weights=none (weighted sampling already balances every batch)" if train.weighted_sampling
           else "train.class_weights=auto or train.weighted_sampling=true")
    _logger.warning("training learns under the class balance %s (weighted_sampling=%s x class_weights=%s) and "
                    "train.balanced_decision is off: the rarest of these will seldom be predicted; set "
                    "train.balanced_decision=true (the default), or for balanced training %s", shown,
                    train.weighted_sampling, train.class_weights, fix)


def checkpoint_prior_correction(meta: Mapping[str, Any], data: Any) -> tuple[list[float] | None, str | None]:
    """The checkpoint's prior correction, or for a checkpoint written before it was recorded, the same
    computation from its training config and the cached train split of `data` (all of it: images that training
    dropped for patient leakage are counted too, a small difference).

    Returns:
        (factors, where they come from), or (None, None) when neither is available.
    """
    if meta.get("prior_correction"):
        return list(meta["prior_correction"]), "checkpoint"
    train_cfg = (meta.get("config") or {}).get("train") or {}
    train = data.splits.get("train")
    if not train_cfg or train is None or not len(train.labels):
        return None, None
    facts = _label_facts(train.labels, len(data.classes), train_cfg.get("class_weights", "none"),
                         bool(train_cfg.get("weighted_sampling")),
                         bool(train_cfg.get("balanced_decision")))  # absent from configs older than it
    return facts["prior_correction"], "derived from the checkpoint's config and the cached train split"


def decision_is_balanced(logit_offset: Sequence[float] | None) -> bool:
    """Whether a model's logits carry a balanced-decision offset (a checkpoint's `logit_offset`, None for
    checkpoints older than it): otherwise its decision is the arg-max under the training prior."""
    return bool(logit_offset) and any(logit_offset)


def prior_metadata(meta: Mapping[str, Any]) -> dict[str, list]:
    """The `PRIOR_META_KEYS` values for a model exported from a checkpoint with this meta, as JSON-able lists;
    {} for a checkpoint written before training recorded its priors (its model keeps the old contract: no risk
    columns when scored, rather than made-up factors).

    Raises:
        ValueError: the checkpoint's prior_correction is not one finite non-negative factor per class.
    """
    if meta.get("prior_correction") is None:
        return {}
    # Checked here too so that export never writes a model that scoring would refuse; tolist() gives the
    # Python numbers JSON needs whether the meta holds lists or numpy arrays.
    values = {"prior_correction": check_prior_correction(np.asarray(meta["prior_correction"]).tolist(),
                                                         len(meta["classes"]), "checkpoint meta")}
    # What the risks assume (the training prevalence) and why the factors are what they are, for operators.
    for key in ("training_prior", "output_prior", "train_class_counts"):
        if meta.get(key) is not None:
            values[key] = np.asarray(meta[key]).tolist()
    return values


def read_prior_correction(metadata: Mapping[str, str], n_classes: int, where: str) -> list[float] | None:
    """The checked prior_correction factors of ONNX metadata; None for a model exported before they existed.

    Raises:
        ValueError: starting with `where`, when the value is not `n_classes` factors (`check_prior_correction`).
    """
    if "prior_correction" not in metadata:
        return None
    try:
        value = json.loads(metadata["prior_correction"])
    except ValueError:
        value = metadata["prior_correction"]  # not JSON: reported verbatim by the check
    return check_prior_correction(value, n_classes, where)


def read_output_prior(metadata: Mapping[str, str]) -> np.ndarray | None:
    """The prior the outputs of a model are under, from its ONNX metadata; None when it does not record it."""
    if "output_prior" not in metadata:
        return None
    return np.asarray(json.loads(metadata["output_prior"]), dtype=np.float64)
