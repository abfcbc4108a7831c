"""Does the model need what lies outside the largest bright region of the image?

On a mammogram that region is the breast, and what lies outside is the film: labels, orientation markers,
scanner borders. On mammo-ddsm those differ between the two scanning programmes that supplied normals and
lesions, and a model can rank by them (README, Results 4). Evaluation scores the split a second time with
everything outside the region blacked out (`medpipe.preprocess.largest_region_mask`, here on the cached images)
and reports the paired difference: a large drop says the figures above it lean on the film, and will not carry
over to other patients' images. A model trained with `data.largest_region_only` sees black there anyway.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medpipe.evaluate.metrics import compute_metrics
from medpipe.evaluate.predict import predict_probs
from medpipe.evaluate.uncertainty import paired_difference_intervals
from medpipe.preprocess import largest_region_mask

__all__ = ["outside_region_check"]


def outside_region_check(model: Any, images: np.ndarray, labels: np.ndarray, probs: np.ndarray,
                         patients: list[str], classes: list[str], device: str = "cpu", batch_size: int = 256,
                         resamples: int = 1000, tta: bool = False) -> dict[str, Any]:
    """The split's metrics with the outside of each image's largest bright region blacked out.

    Args:
        model: the evaluated model.
        images: (N, H, W) uint8, the split as evaluated.
        labels: (N,) true class indices.
        probs: (N, C) the model's probabilities on `images` as they are.
        patients: one id per image, for the paired patient bootstrap.
        tta: score the blacked-out images with flip test-time augmentation, as `probs` were (evaluate.tta).

    Returns:
        {"area_outside": mean share of the image outside the region, "macro_auc", "balanced_accuracy" (blacked
        out), "difference": {metric: {"difference", "interval"} | None} (as is minus blacked out), "resamples"}.
    """
    masks = np.stack([largest_region_mask(image) for image in images])
    blacked = np.where(masks, images, 0).astype(np.uint8)
    probs_blacked = predict_probs(model, blacked, device, batch_size, tta=tta)
    metrics = compute_metrics(labels, probs_blacked, classes)
    difference: dict[str, Any] = {"macro_auc": None, "balanced_accuracy": None}
    if resamples > 0:
        paired = paired_difference_intervals(labels, probs, probs_blacked, patients, resamples=resamples)
        difference = {k: paired.get(k) for k in difference}
    return {"area_outside": float((~masks).mean()), "macro_auc": metrics["macro_auc"],
            "balanced_accuracy": metrics["balanced_accuracy"], "difference": difference, "resamples": resamples}
