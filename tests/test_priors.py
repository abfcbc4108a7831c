"""The prior correction against Bayes' rule on a problem whose true posteriors are known exactly."""

from __future__ import annotations

import numpy as np
import pytest

from medpipe.priors import apply_prior_correction, balanced_logit_offset, prior_correction_factors, training_prior


def _posterior(x: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """Exact posteriors of three unit-variance Gaussian classes at means 0, 1.5, 3 under `prior`."""
    likelihood = np.exp(-0.5 * (x[:, None] - np.array([0.0, 1.5, 3.0])[None, :]) ** 2)
    joint = likelihood * prior
    return joint / joint.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("weighted_sampling, loss_weights", [(True, None), (True, [0.1, 3.0, 4.0]),
                                                             (False, [0.1, 3.0, 4.0]), (False, "auto")])
def test_correction_recovers_the_posterior_at_the_prevalence(weighted_sampling, loss_weights):
    counts = np.array([880, 70, 50])  # mammography-like
    if loss_weights == "auto":
        loss_weights = (1 / counts) * 3 / (1 / counts).sum()
    prior = training_prior(counts, weighted_sampling, loss_weights)
    x = np.linspace(-3, 6, 200)
    # What a perfectly trained network outputs under the training prior, and what is true at the prevalence.
    trained, true = _posterior(x, prior), _posterior(x, counts / counts.sum())
    corrected = apply_prior_correction(trained, prior_correction_factors(counts, prior))
    np.testing.assert_allclose(corrected, true, atol=1e-12)


def test_training_prior_cases():
    counts = [60, 30, 10]
    np.testing.assert_allclose(training_prior(counts, True, None), [1 / 3] * 3)
    np.testing.assert_allclose(training_prior(counts, False, None), [0.6, 0.3, 0.1])
    np.testing.assert_allclose(training_prior(counts, True, [1, 1, 2]), [0.25, 0.25, 0.5])
    # A class absent from training has no prior and no correction factor, and gets no probability.
    np.testing.assert_allclose(training_prior([5, 0, 5], True, None), [0.5, 0, 0.5])
    assert prior_correction_factors([5, 0, 5], [0.5, 0, 0.5]) == [0.5, 0.0, 0.5]
    # No sampling and no weights: nothing to correct.
    factors = prior_correction_factors(counts, training_prior(counts, False, None))
    probs = np.array([[0.2, 0.3, 0.5], [0.9, 0.05, 0.05]])
    np.testing.assert_allclose(apply_prior_correction(probs, factors), probs)


@pytest.mark.parametrize("call, message", [
    (lambda: training_prior([0, 0, 0], True, None), "positive total"),
    (lambda: training_prior([1, 2, 3], True, [1, 2]), "must be 3 non-negative values"),
    (lambda: training_prior([1, 2, 3], True, [1, -1, 1]), "non-negative"),
    (lambda: training_prior([1, 0, 0], True, [0, 1, 1]), "loss weight 0"),
    (lambda: apply_prior_correction(np.ones((2, 3)) / 3, [0.5, 0.5]), "2 factors for probabilities of shape"),
])
def test_bad_inputs_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_a_row_only_on_zero_factor_classes_is_kept():
    probs = np.array([[0.0, 1.0, 0.0], [0.5, 0.25, 0.25]])
    corrected = apply_prior_correction(probs, [0.5, 0.0, 0.5])
    np.testing.assert_allclose(corrected[0], [0.0, 1.0, 0.0])
    np.testing.assert_allclose(corrected[1], [2 / 3, 0.0, 1 / 3])


def test_balanced_decision_offsets_and_the_warning_without_it(tmp_path, caplog):
    from medpipe_testdata import write_dataset

    from medpipe.config import load_config
    from medpipe.data.cache import build_cache, load_cache
    from medpipe.priors import checkpoint_prior_facts as _prior_facts

    root = write_dataset(tmp_path / "data", per_class=3, size=32)
    overrides = ["data.image_size=32", f"data.cache_dir={tmp_path / 'cache'}"]
    data = load_cache(build_cache(root, load_config(None, overrides)))
    rows = np.arange(len(data.splits["train"].labels))
    prior = np.array([0.1, 3, 4]) / 7.1  # the original's loss weights on top of weighted sampling
    with caplog.at_level("WARNING", logger="medpipe.train"):
        facts = _prior_facts(load_config(None, overrides), data, rows)  # balanced decision: the default
    assert caplog.text == ""
    np.testing.assert_allclose(facts["training_prior"], prior)
    np.testing.assert_allclose(facts["logit_offset"], np.log(1 / 3) - np.log(prior))
    np.testing.assert_allclose(facts["output_prior"], [1 / 3] * 3)
    np.testing.assert_allclose(facts["prior_correction"], [1 / 3] * 3)  # balanced data: prevalence is uniform
    with caplog.at_level("WARNING", logger="medpipe.train"):
        facts = _prior_facts(load_config(None, overrides + ["train.balanced_decision=false"]), data, rows)
    assert "normal 0.014" in caplog.text and "train.balanced_decision=true" in caplog.text
    assert facts["logit_offset"] == [0.0, 0.0, 0.0]
    np.testing.assert_allclose(facts["prior_correction"], (1 / 3 / prior) / (1 / 3 / prior).sum())
    caplog.clear()
    with caplog.at_level("WARNING", logger="medpipe.train"):  # sampling alone: balanced already, offset 0
        facts = _prior_facts(load_config(None, overrides + ["train.class_weights=none"]), data, rows)
    assert caplog.text == "" and facts["logit_offset"] == pytest.approx([0.0] * 3)


def test_offset_decides_under_equal_priors():
    """Exact posteriors under a lopsided training prior + the offset = exact posteriors under equal priors."""
    prior = training_prior([880, 70, 50], True, [0.1, 3.0, 4.0])
    x = np.linspace(-3, 6, 200)
    trained = _posterior(x, prior)
    adjusted = np.exp(np.log(trained) + balanced_logit_offset(prior))
    adjusted /= adjusted.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(adjusted, _posterior(x, np.full(3, 1 / 3)), atol=1e-12)
    assert balanced_logit_offset([0.5, 0.0, 0.5]).tolist() == [0.0, 0.0, 0.0]
