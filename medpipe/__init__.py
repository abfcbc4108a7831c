"""medpipe — medical image classification (normal / benign / cancer) from folders to a published ONNX model."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
