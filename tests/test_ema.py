"""Weight averaging (train.ema_decay): what is validated is what is saved, and --resume keeps the average."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from medpipe.config import ConfigError, load_config
from medpipe.data.cache import build_cache, load_cache
from medpipe.evaluate.metrics import compute_metrics
from medpipe.evaluate.predict import predict_probs
from medpipe.train import load_checkpoint, train_model


def _cfg(tmp_path: Path, *extra: str):
    return load_config(None, ["data.image_size=32", f"data.cache_dir={tmp_path / 'cache'}", "train.batch_size=8",
                              "train.device=cpu", "models.resnet18.weights=none", "train.ema_decay=0.9", *extra])


def test_best_checkpoint_holds_the_averaged_weights_that_were_validated(tiny_dataset: Path, tmp_path: Path):
    cfg = _cfg(tmp_path, "train.epochs=3", "train.patience=5")
    cache = build_cache(tiny_dataset, cfg)
    out = train_model(cache, "custom_cnn", cfg, tmp_path / "run")
    last = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    raw, averaged = last["raw_model_state"], last["model_state"]
    assert any(not torch.equal(raw[k], averaged[k]) for k in raw if raw[k].is_floating_point())
    # The val metric recorded for the best epoch is reproduced by the weights in best.pt.
    summary = json.loads((out / "history.json").read_text())
    recorded = summary["history"][summary["best_epoch"] - 1]["val_macro_auc"]
    model, meta = load_checkpoint(out / "best.pt")
    val = load_cache(cache).splits["val"]
    probs = predict_probs(model, val.images, device="cpu")
    assert math.isclose(compute_metrics(val.labels, probs, meta["classes"])["macro_auc"], recorded, abs_tol=1e-9)


def test_resume_continues_the_average(tiny_dataset: Path, tmp_path: Path):
    one = _cfg(tmp_path, "train.epochs=1")
    cache = build_cache(tiny_dataset, one)
    out = train_model(cache, "custom_cnn", one, tmp_path / "run")
    steps_per_epoch = math.ceil(24 / 8)
    first = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    assert int(first["ema_state"]["n_averaged"]) == steps_per_epoch
    train_model(cache, "custom_cnn", _cfg(tmp_path, "train.epochs=2"), out, resume=True)
    second = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    # A restart from scratch would have averaged only the second epoch's steps.
    assert int(second["ema_state"]["n_averaged"]) == 2 * steps_per_epoch


def test_ema_off_keeps_checkpoints_lean(tiny_dataset: Path, tmp_path: Path):
    cfg = _cfg(tmp_path, "train.epochs=1", "train.ema_decay=0")
    out = train_model(build_cache(tiny_dataset, cfg), "custom_cnn", cfg, tmp_path / "run")
    last = torch.load(out / "last.pt", map_location="cpu", weights_only=False)
    assert last["raw_model_state"] is None and last["ema_state"] is None


@pytest.mark.parametrize("value", ["1.0", "-0.1"])
def test_bad_ema_decay_is_named(value):
    with pytest.raises(ConfigError, match=r"train.ema_decay"):
        load_config(None, [f"train.ema_decay={value}"])


def test_averaged_model_batchnorm_statistics_are_its_own(tiny_dataset: Path, tmp_path: Path):
    """Averaging the raw model's BatchNorm statistics gives statistics of activations the averaged weights do
    not produce (a model that calls everything one class, seen at 224 px). After each epoch they are recomputed:
    the first BatchNorm's running mean is the mean of its input under the averaged weights."""
    cfg = _cfg(tmp_path, "train.epochs=2", "train.lr=0.01", "train.weighted_sampling=false")
    cache = build_cache(tiny_dataset, cfg)
    out = train_model(cache, "custom_cnn", cfg, tmp_path / "run")
    model, _ = load_checkpoint(out / "last.pt")  # the averaged weights, in eval mode
    first_bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    seen = []
    first_bn.register_forward_hook(lambda module, args, output: seen.append(args[0].detach()))
    train = load_cache(cache).splits["train"]  # 24 images: the whole refresh sample
    with torch.no_grad():
        model(torch.from_numpy(train.images).float().unsqueeze(1))
    own_mean = seen[0].mean(dim=(0, 2, 3))
    assert torch.allclose(first_bn.running_mean, own_mean, atol=1e-4), (first_bn.running_mean - own_mean).abs().max()
