"""Grad-CAM (Selvaraju et al. 2017): where in the image the model found the evidence for its decision.

Metrics say how often a model is right, not why. On mammo-ddsm, normals and lesions come from two scanning
programmes, and a model can score well by reading film grain or the border of the crop instead of the breast.
A reader of the model card should be able to see that: for each true class, the images the model got most
confidently right and the ones it missed worst, each with the heat map of the class it predicted.
captum's LayerGradCam computes the maps; this module picks the layer, the images and draws the grid.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from medpipe.evaluate.plots import _DPI, _save

__all__ = ["grad_cam_maps", "pick_examples", "plot_grad_cam", "target_layer"]

_logger = logging.getLogger(__name__)


def target_layer(model):
    """The last convolutional feature map of a medpipe model (the layer Grad-CAM is defined on)."""
    from medpipe.models import CustomCNN, ResNet18Classifier  # torch stays off the CLI's start-up path

    if isinstance(model, ResNet18Classifier):
        return model.backbone.layer4
    if isinstance(model, CustomCNN):
        # The last conv block's activation (before its max-pool): twice the resolution of the pooled map.
        return model.features[-2]
    raise TypeError(f"Grad-CAM: no target layer known for {type(model).__name__}")


def grad_cam_maps(model, images: np.ndarray, targets: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Grad-CAM maps of `targets` (one class index per image), upsampled to the image size.

    Args:
        model: a medpipe model (CPU or wherever it is; evaluated in eval mode, fp32).
        images: (N, H, W) uint8.
        targets: (N,) class indices to explain (usually the predicted class).

    Returns:
        (N, H, W) float32 in [0, 1], each map scaled by its own maximum (all zeros when no evidence was positive).
    """
    import torch
    from captum.attr import LayerAttribution, LayerGradCam

    model.eval()
    device = next(model.parameters()).device
    cam = LayerGradCam(model, target_layer(model))
    maps = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size])).to(device)
        x = x.unsqueeze(1).float().requires_grad_(True)
        target = torch.as_tensor(targets[start:start + batch_size], dtype=torch.long, device=device)
        attribution = cam.attribute(x, target=target, relu_attributions=True)
        up = LayerAttribution.interpolate(attribution, tuple(images.shape[1:]), interpolate_mode="bilinear")
        maps.append(up.detach().squeeze(1).float().cpu().numpy())
    out = np.concatenate(maps).astype(np.float32)
    peak = out.reshape(len(out), -1).max(axis=1).reshape(-1, 1, 1)
    return np.divide(out, peak, out=np.zeros_like(out), where=peak > 0)


def pick_examples(labels: np.ndarray, probs: np.ndarray, per_class: int) -> list[tuple[int, str]]:
    """Per true class: the `per_class` images with the highest probability for their class among those
    predicted right, then the `per_class` with the lowest among those predicted wrong. Returns (index, kind)."""
    predicted = probs.argmax(axis=1)
    picked: list[tuple[int, str]] = []
    for c in range(probs.shape[1]):
        mine = np.flatnonzero(labels == c)
        right = mine[predicted[mine] == c]
        wrong = mine[predicted[mine] != c]
        picked += [(int(i), "right") for i in right[np.argsort(-probs[right, c])][:per_class]]
        picked += [(int(i), "missed") for i in wrong[np.argsort(probs[wrong, c])][:per_class]]
    return picked


def plot_grad_cam(model, images: np.ndarray, labels: np.ndarray, probs: np.ndarray, classes: list[str],
                  path: str | Path, per_class: int = 2) -> Path | None:
    """A grid, one row per true class: its most confident right calls, then its worst misses, each drawn with
    the Grad-CAM map of the predicted class over the image. None when there is nothing to draw."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    picked = pick_examples(labels, probs, per_class)
    if not picked:
        return None
    indices = np.array([i for i, _ in picked])
    predicted = probs.argmax(axis=1)
    maps = grad_cam_maps(model, images[indices], predicted[indices])
    columns = 2 * per_class
    fig = Figure(figsize=(1.9 * columns, 2.1 * len(classes) + 0.4), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(classes), columns, squeeze=False)
    for ax in axes.reshape(-1):
        ax.axis("off")
    used = {(c, kind): 0 for c in range(len(classes)) for kind in ("right", "missed")}
    for (index, kind), heat in zip(picked, maps):
        true = int(labels[index])
        column = used[true, kind] + (per_class if kind == "missed" else 0)
        used[true, kind] += 1
        ax = axes[true, column]
        ax.imshow(images[index], cmap="gray", vmin=0, vmax=255)
        ax.imshow(heat, cmap="jet", alpha=0.35, vmin=0, vmax=1)
        pred = int(predicted[index])
        ax.set_title(f"{kind}: {classes[true]}→{classes[pred]}\np({classes[pred]})={probs[index, pred]:.2f}",
                     fontsize=7, color="black" if kind == "right" else "firebrick")
    fig.suptitle("Grad-CAM of the predicted class: confident right calls (left), worst misses (right)", fontsize=9)
    return _save(fig, path)
