"""bench/acquisition_probe.py: the shortcut probe runs on real images and its features measure acquisition noise."""

from __future__ import annotations

import importlib.util
import re

import numpy as np

from medpipe_testdata import REPO_ROOT, SAMPLE_DATA


def _probe():
    spec = importlib.util.spec_from_file_location("acquisition_probe", REPO_ROOT / "bench" / "acquisition_probe.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_grain_raises_the_high_frequency_features():
    probe = _probe()
    rng = np.random.default_rng(0)
    clean = np.zeros((64, 64), np.uint8)
    clean[:, 20:] = 150  # a smooth "breast" on a black background
    grainy = np.clip(clean + rng.normal(0, 6, clean.shape), 0, 255).astype(np.uint8)
    names = probe.FEATURES
    f_clean, f_grainy = probe.acquisition_features(clean), probe.acquisition_features(grainy)
    assert len(f_clean) == len(names)
    for name in ("tissue_hf_mean", "tissue_hf_std", "background_hf_mean"):
        assert f_grainy[names.index(name)] > f_clean[names.index(name)] + 1
    assert abs(f_clean[names.index("breast_fraction")] - 44 / 64) < 1e-6


def test_probe_runs_on_the_bundled_sample(capsys):
    assert _probe().main(["--data", str(SAMPLE_DATA), "--size", "64", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "train 90 / val 66 images" in out
    macro = float(re.search(r"val macro ROC AUC \(one-vs-rest\) ([0-9.]+)", out).group(1))
    per_class = [float(v) for v in re.findall(r"(?:normal|benign|cancer) ([0-9.]+)", out.splitlines()[1])]
    assert 0.0 <= macro <= 1.0 and len(per_class) == 3
    assert abs(macro - np.mean(per_class)) < 2e-3
