"""Pixel-value conversions shared by the image decoders (medpipe.preprocess for PIL formats, medpipe.dicom)."""

from __future__ import annotations

import numpy as np

__all__ = ["stretch_to_uint8"]


def stretch_to_uint8(values: np.ndarray) -> np.ndarray:
    """0..255 by the image's own min..max (16-bit and float PNG/TIFF, unwindowed DICOM); constant -> black."""
    values = np.asarray(values, dtype=np.float64)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)
