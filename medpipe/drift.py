"""Drift of a scored batch against the training data: population stability index (PSI) on inputs and outputs.

The reference is written beside a model when it is exported (`reference.json` in the release, so it is published
with the model): the quintiles of the training images' mean intensity and contrast (standard deviation) at the
model's input size, and the quintiles of the model's top-class probability on val (each feature only from at least
MIN_IMAGES images). A batch is binned on those
edges and compared with PSI = sum((p - q) * ln(p / q)) over the bins (Siddiqi, Credit Risk Scorecards, 2006):
< 0.1 no shift, 0.1-0.25 a moderate one, > 0.25 a significant one — `DRIFT_THRESHOLD`, the line a batch is flagged
at. PSI rather than a two-sample test because batches are large: a test rejects trivial shifts on thousands of
images, while PSI measures how far the distribution moved.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.data.cache import load_cache
from medpipe.fileio import atomic_write_text
from medpipe.run_folder import REFERENCE_NAME

__all__ = ["DRIFT_THRESHOLD", "MIN_IMAGES", "REFERENCE_NAME", "image_statistics", "reference_profile", "psi", "batch_drift",
           "write_reference"]

DRIFT_THRESHOLD = 0.25  # PSI above which a batch is flagged (a significant shift)
_QUANTILES = np.linspace(0.2, 0.8, 4)  # quintile edges: 5 bins, each 20 % of the reference
# PSI of two samples of one distribution is ~ (bins - 1) * (1/n_batch + 1/n_reference) from sampling noise alone
# (0.08 for 100 and 100 on 5 bins): fewer images than this say nothing about drift.
MIN_IMAGES = 100
_EPS = 1e-4  # an empty bin counts as this share, so ln() stays finite
_FEATURES = ("mean_intensity", "contrast", "top_probability")


def image_statistics(images: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image mean intensity and standard deviation of uint8 (N, H, W) images, on the 0..255 scale."""
    flat = np.asarray(images, dtype=np.float32).reshape(len(images), -1)
    return {"mean_intensity": flat.mean(axis=1), "contrast": flat.std(axis=1)}


def _edges(values: np.ndarray) -> list[float]:
    return np.unique(np.quantile(np.asarray(values, dtype=np.float64), _QUANTILES)).tolist()


def _shares(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    counts = np.bincount(np.searchsorted(np.asarray(edges), values, side="right"), minlength=len(edges) + 1)
    return counts / max(1, counts.sum())


def reference_profile(train_images: np.ndarray, val_probabilities: np.ndarray) -> dict[str, Any]:
    """The training reference: per feature, decile edges and the reference's share in each bin."""
    features = {**image_statistics(train_images), "top_probability": np.asarray(val_probabilities).max(axis=1)}
    profile: dict[str, Any] = {"method": "PSI on quintile bins of the reference", "threshold": DRIFT_THRESHOLD,
                               "features": {}}
    for name in _FEATURES:
        if len(features[name]) < MIN_IMAGES:  # too few to be a reference: this feature is left out
            continue
        edges = _edges(features[name])
        profile["features"][name] = {"edges": edges, "shares": _shares(features[name], edges).tolist(),
                                     "n": int(len(features[name]))}
    return profile


def psi(reference_shares: Sequence[float], batch_shares: Sequence[float]) -> float:
    p = np.clip(np.asarray(batch_shares, dtype=np.float64), _EPS, None)
    q = np.clip(np.asarray(reference_shares, dtype=np.float64), _EPS, None)
    return float(np.sum((p - q) * np.log(p / q)))


def batch_drift(reference: dict[str, Any], images: np.ndarray, probabilities: np.ndarray) -> dict[str, Any]:
    """PSI of every reference feature for a batch; `drifted` when any exceeds the reference's threshold."""
    if len(images) < MIN_IMAGES:
        return {"available": False, "reason": f"{len(images)} scored images; drift needs at least {MIN_IMAGES}"}
    features = {**image_statistics(images), "top_probability": np.asarray(probabilities).max(axis=1)}
    threshold = float(reference.get("threshold", DRIFT_THRESHOLD))
    values = {}
    for name, ref in reference["features"].items():
        values[name] = round(psi(ref["shares"], _shares(features[name], ref["edges"])), 4)
    over = sorted(name for name, value in values.items() if value > threshold)
    return {"available": True, "psi": values, "threshold": threshold, "drifted": bool(over),
            "drifted_features": over, "n": int(len(images))}


def write_reference(cache_dir: str | Path, val_predictions_csv: str | Path, out_path: str | Path) -> Path:
    """reference.json for a model: its training images (from the run's cache) and its val probabilities (the
    evaluation's predictions_val.csv, prob_<class> columns)."""
    train = load_cache(cache_dir).splits.get("train")
    if train is None or not len(train.labels):
        raise ValueError(f"cache {cache_dir} has no train images to take a drift reference from")
    with Path(val_predictions_csv).open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = [c for c in (rows[0] if rows else {}) if c.startswith("prob_")]
    if not columns:
        raise ValueError(f"{val_predictions_csv} has no prob_<class> columns to take a drift reference from")
    probs = np.array([[float(r[c]) for c in columns] for r in rows])
    if len(train.labels) < MIN_IMAGES:
        raise ValueError(f"cache {cache_dir} has {len(train.labels)} train images; a drift reference needs at least "
                         f"{MIN_IMAGES}")
    return atomic_write_text(out_path, json.dumps(reference_profile(train.images, probs), indent=1) + "\n")
