"""Shared fixtures: tiny real image datasets written to disk (32-64 px), configs for fast runs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from medpipe.config import Config, load_config

# Keep torch/BLAS from oversubscribing the 2 CI cores when pytest-xdist is not used.
os.environ.setdefault("OMP_NUM_THREADS", "2")

from medpipe_testdata import CLASSES, REPO_ROOT, SAMPLE_DATA, synthetic_image, write_dataset  # noqa: F401,E402


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
# The GPU device image has no boto3/moto (bench/gpu_check.sh runs only the gpu tests there): without them the
# fixture is simply not defined, and a test asking for it errors ("fixture 's3_server' not found"), never passes.
try:
    from s3_fixtures import s3_server  # noqa: E402,F401
except ImportError as exc:  # pragma: no cover - CI installs requirements-dev.txt, which has both
    if exc.name not in ("boto3", "moto", "botocore"):
        raise
