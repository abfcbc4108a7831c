"""PSI drift against a training reference: the same distribution stays under the threshold, a darker batch and a
model gone unsure go over it."""

from __future__ import annotations

import numpy as np

from medpipe.drift import DRIFT_THRESHOLD, batch_drift, psi, reference_profile


def _images(rng: np.random.Generator, n: int, brightness: float) -> np.ndarray:
    base = rng.normal(brightness, 20, size=(n, 1, 1))
    return np.clip(base + rng.normal(0, 30, size=(n, 16, 16)), 0, 255).astype(np.uint8)


def _probs(rng: np.random.Generator, n: int, confidence: float) -> np.ndarray:
    logits = rng.normal(0, 1, size=(n, 3))
    logits[:, 0] += confidence
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_psi_is_zero_for_equal_shares_and_grows_with_the_shift() -> None:
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0
    assert 0 < psi([0.5, 0.5], [0.6, 0.4]) < psi([0.5, 0.5], [0.9, 0.1])


def test_a_batch_like_the_training_data_does_not_drift_and_a_shifted_one_does() -> None:
    rng = np.random.default_rng(0)
    reference = reference_profile(_images(rng, 2000, 120), _probs(rng, 500, 2.0))
    assert set(reference["features"]) == {"mean_intensity", "contrast", "top_probability"}
    same = batch_drift(reference, _images(rng, 500, 120), _probs(rng, 500, 2.0))
    assert not same["drifted"] and max(same["psi"].values()) < 0.1
    darker = batch_drift(reference, _images(rng, 500, 60), _probs(rng, 500, 2.0))
    assert darker["drifted"] and "mean_intensity" in darker["drifted_features"]
    assert darker["psi"]["mean_intensity"] > DRIFT_THRESHOLD
    unsure = batch_drift(reference, _images(rng, 500, 120), _probs(rng, 500, 0.0))
    assert unsure["drifted_features"] == ["top_probability"]


def test_export_ships_the_training_reference_beside_the_model(tmp_path) -> None:
    """A run with enough training images exports reference.json (here without top_probability: val has fewer than
    MIN_IMAGES images); the catalog serves it like the other release files."""
    import json

    from medpipe.cli import main
    from medpipe.run_folder import RELEASE_FILES, RunFolder
    from medpipe_testdata import write_dataset

    data = write_dataset(tmp_path / "data", per_class={"train": 34, "val": 4}, size=32)
    sets = [arg for s in ["data.image_size=32", f"data.cache_dir={tmp_path / 'cache'}", "train.epochs=1",
                          "train.batch_size=16", "train.device=cpu", "models.names=[custom_cnn]",
                          "train.class_weights=none", "evaluate.splits=[val]", "evaluate.bootstrap_resamples=20",
                          "evaluate.explain_per_class=0", "evaluate.outside_region_check=false"]
            for arg in ("--set", s)]
    run = RunFolder(tmp_path / "run")
    assert main(["run", "--data", str(data), "--out", str(run.root), *sets]) == 0
    assert main(["export", "--run", str(run.root), "--model", "custom_cnn", "--version", "v1", *sets]) == 0
    reference = json.loads((run.release_dir / "reference.json").read_text())
    assert set(reference["features"]) == {"mean_intensity", "contrast"}
    assert reference["features"]["mean_intensity"]["n"] == 102 and "reference.json" in RELEASE_FILES
