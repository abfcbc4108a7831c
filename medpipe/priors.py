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
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["training_prior", "balanced_logit_offset", "prior_correction_factors", "apply_prior_correction",
           "prior_facts"]


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


def prior_correction_factors(counts: Sequence[int], prior: Sequence[float]) -> list[float]:
    """w(y) = prevalence(y) / training prior(y), scaled to sum to 1 (only ratios matter); 0 where either is 0."""
    counts = np.asarray(counts, dtype=np.float64)
    prior = np.asarray(prior, dtype=np.float64)
    prevalence = counts / counts.sum()
    factors = np.divide(prevalence, prior, out=np.zeros_like(prevalence), where=prior > 0)
    return (factors / factors.sum()).tolist()


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
