import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medpipe_testdata import write_dataset
from medpipe.config import load_config
from medpipe.data.cache import build_cache, load_cache
from medpipe.train import TrainingError, load_checkpoint, train_model


def test_cache_is_built_once_and_keyed_by_content(tiny_dataset: Path, fast_config, tmp_path: Path):
    first = build_cache(tiny_dataset, fast_config)
    assert build_cache(tiny_dataset, fast_config) == first  # reused
    data = load_cache(first)
    assert data.splits["train"].images.shape == (24, 32, 32) and data.splits["train"].images.dtype == np.uint8
    assert data.classes == ["normal", "benign", "cancer"] and len(data.splits["val"].rels) == 24
    # Changing one image changes the manifest hash and so the cache folder.
    victim = tiny_dataset / "train" / "normal" / sorted(p.name for p in (tiny_dataset / "train" / "normal").iterdir())[0]
    Image.fromarray(np.zeros((48, 48), np.uint8)).save(victim)
    second = build_cache(tiny_dataset, fast_config)
    assert second != first and first.is_dir()  # the old cache is untouched
    assert load_cache(second).manifest_hash != data.manifest_hash


def test_cache_skips_corrupt_images_and_reports_them(tiny_dataset: Path, fast_config):
    (tiny_dataset / "train" / "benign" / "P_99999_LEFT_CC.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    data = load_cache(build_cache(tiny_dataset, fast_config))
    assert [s["rel"] for s in data.skipped] == ["train/benign/P_99999_LEFT_CC.png"]
    assert len(data.splits["train"].labels) == 24


def test_leaked_patients_are_excluded_from_training(tmp_path: Path, fast_config):
    root = write_dataset(tmp_path / "d", per_class=4, size=32)
    leaked = root / "train" / "normal" / "P_00013_RIGHT_CC.png"  # P_00013 is a val patient
    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(leaked)
    out = train_model(build_cache(root, fast_config), "custom_cnn", fast_config, tmp_path / "run")
    assert json.loads((out / "history.json").read_text())["train_images"] == 12


def test_train_copies_of_val_images_are_excluded_from_training(tmp_path: Path, fast_config, caplog):
    """A PNG copy of a val JPEG under another (train) patient's name: same pixels, so it must not be trained on."""
    root = write_dataset(tmp_path / "d", per_class=4, size=32, fmt="png")
    val_image = sorted((root / "val" / "cancer").iterdir())[0]
    Image.open(val_image).save(root / "train" / "cancer" / "P_77777_LEFT_CC.png")  # a new patient id
    with caplog.at_level("WARNING", logger="medpipe.train"):
        out = train_model(build_cache(root, fast_config), "custom_cnn", fast_config, tmp_path / "run")
    assert json.loads((out / "history.json").read_text())["train_images"] == 12
    assert "1 train images whose pixels are identical to a val/test image" in caplog.text
    # data.leakage=report keeps it (and only reports, through validation).
    report_only = load_config(None, ["data.image_size=32", "train.epochs=1", "train.device=cpu",
                                     "data.leakage=report", f"data.cache_dir={tmp_path / 'cache'}"])
    out = train_model(build_cache(root, report_only), "custom_cnn", report_only, tmp_path / "kept")
    assert json.loads((out / "history.json").read_text())["train_images"] == 13


def test_training_writes_checkpoints_and_is_reproducible(tiny_dataset: Path, fast_config, tmp_path: Path):
    cache = build_cache(tiny_dataset, fast_config)
    a = train_model(cache, "custom_cnn", fast_config, tmp_path / "a")
    b = train_model(cache, "custom_cnn", fast_config, tmp_path / "b")
    for name in ("best.pt", "last.pt", "history.json", "history.png", "config.yaml"):
        assert (a / name).is_file(), name
    ha, hb = (json.loads((d / "history.json").read_text())["history"] for d in (a, b))
    assert [r["train_loss"] for r in ha] == [r["train_loss"] for r in hb]  # same seed, same CPU run
    model, meta = load_checkpoint(a / "best.pt")
    assert meta["model_name"] == "custom_cnn" and meta["classes"] == ["normal", "benign", "cancer"]
    assert meta["image_size"] == 32 and not model.training


def test_resume_continues_where_it_stopped_and_refuses_overwrite(tiny_dataset: Path, tmp_path: Path, fast_config):
    cache = build_cache(tiny_dataset, fast_config)
    short = load_config(None, ["data.image_size=32", "train.epochs=1", "train.device=cpu",
                               "models.resnet18.weights=none", "train.batch_size=8"])
    out = train_model(cache, "resnet18", short, tmp_path / "r")
    with pytest.raises(TrainingError, match="already holds a training run"):
        train_model(cache, "resnet18", short, out)
    longer = load_config(None, ["data.image_size=32", "train.epochs=3", "train.device=cpu",
                                "models.resnet18.weights=none", "train.batch_size=8"])
    train_model(cache, "resnet18", longer, out, resume=True)
    history = json.loads((out / "history.json").read_text())["history"]
    assert [r["epoch"] for r in history] == [1, 2, 3]


def test_early_stopping(tiny_dataset: Path, tmp_path: Path):
    # lr 1e-12 (the config takes no lr 0) moves no float32 weight: the loss stops improving.
    cfg = load_config(None, ["data.image_size=32", f"data.cache_dir={tmp_path / 'c'}", "train.epochs=20",
                             # a rate too small to change a prediction (0 is not a valid rate): accuracy stays put
                             "train.patience=2", "train.monitor=balanced_accuracy", "train.lr=1e-12",
                             "train.device=cpu",
                             "models.custom_cnn.dropout=0", "augment.enabled=false", "train.batch_size=8"])
    cache = build_cache(tiny_dataset, cfg)
    out = train_model(cache, "custom_cnn", cfg, tmp_path / "es")
    summary = json.loads((out / "history.json").read_text())
    assert summary["stopped_early"] and summary["epochs_run"] < 20
    # Resuming a run that early stopping ended (e.g. `medpipe run --resume` after parallel `train`s) trains no more.
    last_before = (out / "last.pt").read_bytes()
    train_model(cache, "custom_cnn", cfg, out, resume=True)
    again = json.loads((out / "history.json").read_text())
    assert again["epochs_run"] == summary["epochs_run"] and again["history"] == summary["history"]
    assert again["seconds"] >= summary["seconds"]  # wall time accumulates over resumed sessions
    assert (out / "last.pt").read_bytes() == last_before


def test_training_needs_val(tmp_path: Path, fast_config):
    root = write_dataset(tmp_path / "d", per_class=3, splits=("train",), size=32)
    with pytest.raises(TrainingError, match="no val images"):
        train_model(build_cache(root, fast_config), "custom_cnn", fast_config, tmp_path / "x")
