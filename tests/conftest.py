"""Shared fixtures: tiny real image datasets written to disk (32-64 px), configs for fast runs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medpipe.config import Config, load_config

# Keep torch/BLAS from oversubscribing the 2 CI cores when pytest-xdist is not used.
os.environ.setdefault("OMP_NUM_THREADS", "2")

REPO_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_DATA = REPO_ROOT / "sample_data" / "mammo-ddsm-sample"
CLASSES = ("normal", "benign", "cancer")


def synthetic_image(label_index: int, seed: int, size: int = 48) -> np.ndarray:
    """A grayscale image whose class is learnable: a bright blob whose size/position depends on the class."""
    rng = np.random.default_rng(seed)
    img = rng.normal(60, 12, (size, size))
    yy, xx = np.mgrid[:size, :size]
    cy, cx = size * (0.3 + 0.2 * label_index), size * (0.7 - 0.2 * label_index)
    radius = size * (0.10 + 0.07 * label_index)
    img[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] += 120 + 30 * label_index
    return np.clip(img, 0, 255).astype(np.uint8)


def write_dataset(root: Path, per_class: dict[str, int] | int = 8, splits=("train", "val"), size: int = 48,
                  seed: int = 0, fmt: str = "png") -> Path:
    """Write ROOT/{split}/{class}/P_<n>_LEFT_CC.<fmt> images; patient ids never repeat across splits."""
    counts = per_class if isinstance(per_class, dict) else {s: per_class for s in splits}
    patient = 0
    for split in splits:
        for label_index, label in enumerate(CLASSES):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for _ in range(counts[split]):
                patient += 1
                arr = synthetic_image(label_index, seed * 100_000 + patient, size)
                Image.fromarray(arr, mode="L").save(folder / f"P_{patient:05d}_LEFT_CC.{fmt}")
    return root


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """train/val with 8 images per class, 48 px PNGs."""
    return write_dataset(tmp_path / "data", per_class=8)


@pytest.fixture
def fast_config(tmp_path: Path) -> Config:
    """Settings for seconds-long CPU runs on tiny images; the cache lives in tmp_path."""
    return load_config(None, [
        "data.image_size=32",
        f"data.cache_dir={tmp_path / 'cache'}",
        "train.epochs=2",
        "train.batch_size=8",
        "train.patience=5",
        "train.device=cpu",
        "models.resnet18.weights=none",
        f"store.uri={tmp_path / 'store'}",
    ])


# A real S3 server (moto's HTTP server on loopback) for every S3 path; defined in tests/s3_fixtures.py.
from s3_fixtures import s3_server  # noqa: E402,F401
