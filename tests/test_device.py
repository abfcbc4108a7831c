"""Device strings, and the CUDA training path (bf16 autocast, channels_last, device generator, EMA, resume).

The CUDA tests are marked `gpu` and skipped without a GPU; CI has none, the device machine runs them.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medpipe.config import load_config
from medpipe.data.cache import build_cache, load_cache
from medpipe.device import is_cuda, resolve_device
from medpipe.evaluate.predict import predict_probs
from medpipe.train import load_checkpoint, train_model

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("device, expected", [("cuda", True), ("cuda:1", True), ("cpu", False), ("cudax", False)])
def test_is_cuda_accepts_indexed_gpus(device: str, expected: bool) -> None:
    assert is_cuda(device) is expected


def test_resolve_device_names_what_is_allowed() -> None:
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device 'tpu'.*'auto', 'cpu', 'cuda' or 'cuda:N'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="'cuda:0' was requested but torch sees no CUDA GPU"):
            resolve_device("cuda:0")


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("model_name, device", [("custom_cnn", "cuda"), ("resnet18", "cuda:0")])
def test_cuda_training_with_every_device_feature_and_resume(tiny_dataset: Path, tmp_path: Path, model_name: str,
                                                            device: str) -> None:
    """Everything a GPU run uses at once: weighted sampling + loss weights (a non-zero logit offset), mixup,
    erasing, EMA; then --resume; the checkpoint must load on CPU and agree with the bf16 CUDA forward pass."""
    overrides = ["data.image_size=32", f"data.cache_dir={tmp_path / 'cache'}", "train.batch_size=8",
                 f"train.device={device}", "models.resnet18.weights=none", "train.ema_decay=0.9",
                 "train.class_weights=[0.1,3.0,4.0]", "augment.mixup_alpha=0.3", "augment.erasing_p=0.3"]
    cache = build_cache(tiny_dataset, load_config(None, overrides + ["train.epochs=2"]))
    out = train_model(cache, model_name, load_config(None, overrides + ["train.epochs=2"]), tmp_path / "run")
    train_model(cache, model_name, load_config(None, overrides + ["train.epochs=3"]), out, resume=True)
    summary = json.loads((out / "history.json").read_text())
    assert summary["device"] == device and [r["epoch"] for r in summary["history"]] == [1, 2, 3]
    assert all(np.isfinite(r["train_loss"]) for r in summary["history"])
    model, _ = load_checkpoint(out / "best.pt")
    assert model.logit_offset.offset.abs().sum() > 0  # the balanced decision survived the device round trip
    images = load_cache(cache).splits["val"].images
    on_cpu = predict_probs(model, images, "cpu")
    on_gpu = predict_probs(model, images, device)
    assert np.abs(on_cpu - on_gpu).max() < 0.05  # bf16 autocast vs fp32
