"""Class probabilities of a torch model on cached uint8 images (the arrays `build_cache` writes)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from medpipe.device import resolve_device

if TYPE_CHECKING:  # torch is imported inside functions: DAG files import this package at parse time
    import torch

__all__ = ["predict_probs", "probabilities", "resolve_device", "tta_name"]

_logger = logging.getLogger(__name__)


def tta_name(tta: bool) -> str:
    """How predictions were made, as metrics.json and the ONNX metadata record it: "hflip" or "none"."""
    return "hflip" if tta else "none"


def probabilities(model: "torch.nn.Module", x: "torch.Tensor", tta: bool = False) -> "torch.Tensor":
    """softmax(model(x)); with `tta` the mean of that and softmax(model(x mirrored left-right)).

    The one definition of the model's probabilities: `predict_probs` calls it and the exported ONNX graph is traced
    from it (medpipe.export), so evaluation, parity and scoring compute the same thing. A mirrored image is a
    plausible image of the same class (training flips with augment.hflip_p), so averaging over both halves the
    variance that comes from which side a lesion lies on. The softmax is taken in fp32: bf16 logits would round
    small probabilities to 0 and break AUC ties.
    """
    import torch

    probs = torch.softmax(model(x).float(), dim=1)
    if tta:
        probs = (probs + torch.softmax(model(torch.flip(x, dims=[3])).float(), dim=1)) / 2
    return probs


def predict_probs(model: "torch.nn.Module", images: np.ndarray, device: str = "cpu",
                  batch_size: int = 256, tta: bool = False) -> np.ndarray:
    """Softmax probabilities of `model` on a stack of single-channel uint8 images.

    The model receives float32 (B, 1, H, W) with raw 0..255 values: normalisation lives inside the model, so the
    exported ONNX graph and this function see identical inputs. On CUDA the forward pass runs in bf16 autocast with
    channels_last (as training does); on CPU in fp32.

    Args:
        model: a classifier following the medpipe model contract (logits (B, C)); it is put in eval mode and moved
            to `device`.
        images: (N, H, W) uint8.
        device: "cpu", "cuda", "cuda:N" or "auto".
        batch_size: images per forward pass.
        tta: flip test-time augmentation (`probabilities`; evaluate.tta): twice the forward passes.

    Returns:
        (N, C) float32 probabilities; rows sum to 1.

    Raises:
        ValueError: images of the wrong shape or dtype, an empty stack, or a bad batch size / device.
    """
    import torch

    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be a (N, H, W) uint8 array, got shape {images.shape} dtype {images.dtype}")
    if images.shape[0] == 0:
        raise ValueError("images is empty: there is nothing to predict")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = torch.device(resolve_device(device))
    on_cuda = dev.type == "cuda"
    memory_format = torch.channels_last if on_cuda else torch.contiguous_format
    model = model.to(dev, memory_format=memory_format).eval()
    outputs: list[torch.Tensor] = []
    with torch.inference_mode(), torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=on_cuda):
        for start in range(0, images.shape[0], batch_size):
            # A copy per batch: cached arrays may be read-only memory maps, which torch.from_numpy refuses to
            # share. uint8 crosses the bus (4x less than float32); the conversion happens on the device.
            chunk = np.array(images[start:start + batch_size], copy=True)
            batch = torch.from_numpy(chunk).to(dev, non_blocking=on_cuda)
            x = batch.unsqueeze(1).float().contiguous(memory_format=memory_format)
            outputs.append(probabilities(model, x, tta).cpu())
    probs = torch.cat(outputs).numpy().astype(np.float32, copy=False)
    _logger.debug("predicted %d images on %s -> probs %s", images.shape[0], dev, probs.shape)
    return probs
