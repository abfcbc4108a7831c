"""Test data helpers shared by every test package: tiny real images written to disk (32-64 px).

A plain module (not conftest) so that test files can import it by a name no other folder shadows.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

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
