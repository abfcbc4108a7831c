"""Grad-CAM: a model trained where the class is a blob's position must show its evidence at the blob."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from medpipe_testdata import write_dataset
from PIL import Image

from medpipe.config import load_config
from medpipe.data.cache import build_cache, load_cache
from medpipe.evaluate.explain import grad_cam_maps, pick_examples, plot_grad_cam
from medpipe.evaluate.predict import predict_probs
from medpipe.evaluate.stage import evaluate_model
from medpipe.train import load_checkpoint, train_model


def _blob_mask(label_index: int, size: int) -> np.ndarray:
    """Where medpipe_testdata.synthetic_image draws the class's blob."""
    yy, xx = np.mgrid[:size, :size]
    cy, cx = size * (0.3 + 0.2 * label_index), size * (0.7 - 0.2 * label_index)
    radius = size * (0.10 + 0.07 * label_index)
    return (yy - cy) ** 2 + (xx - cx) ** 2 < (radius * 1.6) ** 2  # the blob and its edge


@pytest.fixture(scope="module")
def blob_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("explain")
    root = write_dataset(work / "data", per_class={"train": 24, "val": 8}, size=48)
    cfg = load_config(None, ["data.image_size=48", f"data.cache_dir={work / 'cache'}", "train.epochs=30", "train.lr=0.003", "train.monitor=loss",
                             "train.batch_size=16", "train.device=cpu", "augment.enabled=false",
                             "train.class_weights=none", "models.custom_cnn.channels=[8,16,32,32]"])
    cache = build_cache(root, cfg)
    out = train_model(cache, "custom_cnn", cfg, work / "run")
    return cfg, cache, out


@pytest.mark.parametrize("name", ["custom_cnn"])
def test_evidence_lies_on_the_blob_that_decides_the_class(blob_run, name: str) -> None:
    _, cache, out = blob_run
    model, _ = load_checkpoint(out / "best.pt")
    val = load_cache(cache).splits["val"]
    probs = predict_probs(model, val.images)
    predicted = probs.argmax(axis=1)
    assert (predicted == val.labels).mean() >= 0.9  # the blobs are easy: the model must have learned them
    maps = grad_cam_maps(model, val.images, predicted)
    assert maps.shape == val.images.shape and maps.min() >= 0 and maps.max() <= 1
    inside = np.array([maps[i][_blob_mask(int(val.labels[i]), 48)].mean() for i in range(len(maps))])
    outside = np.array([maps[i][~_blob_mask(int(val.labels[i]), 48)].mean() for i in range(len(maps))])
    # Benign and cancer are their (large) blobs: the evidence must sit there, image after image. The smallest
    # blob, "normal", is learned as the absence of the others, so its maps need not light it up.
    lesion = val.labels > 0
    assert (inside > outside)[lesion].all(), f"evidence off the blob: {(inside > outside)[lesion]}"
    assert inside[lesion].mean() > 2 * outside[lesion].mean()


def test_pick_examples_takes_confident_right_calls_then_worst_misses() -> None:
    labels = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.3, 0.7], [0.45, 0.55], [0.95, 0.05]])
    assert pick_examples(labels, probs, 1) == [(0, "right"), (2, "missed"), (3, "right"), (5, "missed")]
    assert pick_examples(labels, probs, 2)[:3] == [(0, "right"), (1, "right"), (2, "missed")]


def test_grid_is_in_the_model_card_and_can_be_turned_off(blob_run, tmp_path: Path) -> None:
    cfg, cache, out = blob_run
    metrics = evaluate_model(out / "best.pt", cache, cfg, tmp_path / "eval")
    grid = tmp_path / "eval" / "plots" / "val_gradcam.png"
    assert grid.is_file() and Image.open(grid).size[0] > 300
    card = (tmp_path / "eval" / "model_card.md").read_text()
    assert "](plots/val_gradcam.png)" in card and "Grad-CAM" in card
    assert json.loads(metrics.read_text())["splits"]["val"]["n"] == 24
    off = load_config(None, ["data.image_size=48", "train.device=cpu", "evaluate.explain_per_class=0"])
    evaluate_model(out / "best.pt", cache, off, tmp_path / "off")
    assert not (tmp_path / "off" / "plots" / "val_gradcam.png").exists()
    model, _ = load_checkpoint(out / "best.pt")
    empty = plot_grad_cam(model, np.zeros((0, 48, 48), np.uint8), np.zeros(0, int), np.zeros((0, 3)),
                          ["normal", "benign", "cancer"], tmp_path / "none.png")
    assert empty is None and not (tmp_path / "none.png").exists()
