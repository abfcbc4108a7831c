"""Scored inbox batches for the Scoring page tests, made by medpipe's own code: a real (untrained) custom_cnn
exported to ONNX, published, resolved from the store, a training reference from images like the training data,
and `medpipe.inbox.score_batch` on a batch of inverted images (drifted) and on one too small to judge.

Untrained on purpose: drift is measured on the images (and the model's top probability), so a trained model would
only cost time here; test_inbox.py covers drift with a trained one.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from medpipe_testdata import write_dataset

CLASSES = ["normal", "benign", "cancer"]
SIZE = 32


def export_untrained(dest: Path, model_name: str, version: str) -> Path:
    """dest/model.onnx: custom_cnn with its initial weights, exported with medpipe's metadata."""
    import torch

    from medpipe.config import load_config
    from medpipe.export import export_module, model_metadata
    from medpipe.models import build_model

    torch.manual_seed(0)
    model = build_model("custom_cnn", load_config(None, [f"data.image_size={SIZE}"]), len(CLASSES))
    meta = {"classes": CLASSES, "image_size": SIZE, "model_name": model_name}
    dest.mkdir(parents=True, exist_ok=True)
    return export_module(model, dest / "model.onnx", SIZE, model_metadata(model, meta, version, None))


def _reference(onnx_path: Path, images_dir: Path, work: Path, cfg: Any) -> dict[str, Any]:
    """The drift reference as export writes it: image statistics and the model's probabilities on these images."""
    from medpipe.drift import reference_profile
    from medpipe.preprocess import load_image
    from medpipe.score import score_folder

    score_folder(onnx_path, images_dir, work / "reference.csv", cfg)
    with (work / "reference.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    images = np.stack([load_image(images_dir / r["path"], SIZE, cfg.data.max_pixels) for r in rows])
    probs = np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in rows])
    return reference_profile(images, probs)


def score_inbox(store: Any, onnx_path: Path | None, model_name: str, version: str, work: Path) -> dict[str, Any]:
    """Score batch "inverted-0001" (120 inverted images: drifted) and "small-0002" (3 images: drift not judged)
    with the published `model_name/version`, resolved (sha256-verified) from `store`; the drift reference comes
    from `onnx_path`, or from that resolved model when None. Returns {batch: summary}."""
    from medpipe.config import load_config
    from medpipe.inbox import READY_MARKER, open_inbox, score_batch
    from medpipe.registry import resolve_model

    cfg = load_config(None, [f"data.image_size={SIZE}", "score.provider=cpu", f"store.uri={store.uri()}"])
    like = write_dataset(work / "like", per_class={"val": 40}, splits=("val",), size=40, seed=31)
    local, source = resolve_model(store, f"{model_name}/{version}", work / "models")
    reference = _reference(onnx_path or local, like / "val", work, cfg)
    inbox_dir = work / "inbox"
    shutil.copytree(like / "val", inbox_dir / "inverted-0001")
    for path in (inbox_dir / "inverted-0001").rglob("*.png"):
        Image.fromarray(255 - np.asarray(Image.open(path))).save(path)
    small = write_dataset(work / "small", per_class={"val": 1}, splits=("val",), size=40, seed=5)
    shutil.copytree(small / "val", inbox_dir / "small-0002")
    for name in ("inverted-0001", "small-0002"):
        (inbox_dir / name / READY_MARKER).write_text("")
    inbox = open_inbox(str(inbox_dir), cfg.store)
    return {name: score_batch(inbox, name, local, model_name, version, store, cfg, work / name,
                              reference=reference, registry_source=source).summary
            for name in ("inverted-0001", "small-0002")}
