"""Plots are real, readable PNGs; the model card carries the numbers beside the baseline."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medpipe.evaluate.card import write_model_card
from medpipe.evaluate.metrics import compute_metrics
from medpipe.evaluate.plots import plot_confusion_matrix, plot_history, plot_pr_curves, plot_roc_curves

CLASSES = ["normal", "benign", "cancer"]


def _predictions(seed: int = 0, n: int = 30, with_cancer: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3 if with_cancer else 2, n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), y] += 1.5  # better than chance, not perfect
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, probs


def _assert_png(path: Path, expected: Path) -> None:
    assert path == expected
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as img:
        img.load()
        assert img.width > 200 and img.height > 200
        # Not a blank canvas: a plot has many distinct colours.
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 16) or []) > 10
    assert not list(path.parent.glob("*.tmp"))


@pytest.mark.parametrize("normalize", [False, True])
def test_confusion_matrix_png(tmp_path, normalize):
    cm = [[5, 1, 0], [2, 3, 1], [0, 0, 0]]  # last row empty: normalised it must not divide by zero
    out = tmp_path / "plots" / f"cm_{normalize}.png"
    _assert_png(plot_confusion_matrix(cm, CLASSES, out, normalize=normalize), out)


def test_confusion_matrix_shape_mismatch_is_refused(tmp_path):
    with pytest.raises(ValueError, match="does not match 3 classes"):
        plot_confusion_matrix([[1, 2], [3, 4]], CLASSES, tmp_path / "cm.png")


@pytest.mark.parametrize("with_cancer", [True, False])
def test_roc_and_pr_pngs(tmp_path, with_cancer):
    y, probs = _predictions(with_cancer=with_cancer)
    roc, pr = tmp_path / "roc.png", tmp_path / "pr.png"
    _assert_png(plot_roc_curves(y, probs, CLASSES, roc), roc)
    _assert_png(plot_pr_curves(y, probs, CLASSES, pr), pr)


def test_history_png_with_missing_values(tmp_path):
    history = [
        {"epoch": 1, "train_loss": 1.1, "val_loss": 1.0, "val_macro_auc": 0.6, "val_balanced_accuracy": 0.4,
         "lr": 1e-3},
        {"epoch": 2, "train_loss": 0.9, "val_loss": 0.95, "val_macro_auc": None, "val_balanced_accuracy": 0.5,
         "lr": 5e-4},
        {"epoch": 3, "train_loss": 0.7, "val_loss": 0.9, "val_macro_auc": 0.7, "val_balanced_accuracy": 0.55,
         "lr": 1e-4},
    ]
    out = tmp_path / "history.png"
    _assert_png(plot_history(history, out), out)
    with pytest.raises(ValueError, match="empty"):
        plot_history([], tmp_path / "empty.png")


def _metrics_doc() -> dict:
    y_val, p_val = _predictions(seed=1)
    y_test, p_test = _predictions(seed=2, with_cancer=False)
    return {
        "model": "custom_cnn",
        "classes": CLASSES,
        "manifest_hash": "abc123",
        "split_counts": {"train": {"normal": 40, "benign": 7, "cancer": 5}},
        "splits": {
            "val": compute_metrics(y_val, p_val, CLASSES, baseline_class="normal"),
            "test": compute_metrics(y_test, p_test, CLASSES, baseline_class="normal"),
        },
    }


def test_model_card_holds_baseline_metrics_caveats_and_plots(tmp_path):
    metrics = _metrics_doc()
    config = {"data": {"classes": CLASSES, "image_size": 32}, "train": {"epochs": 7, "class_weights": [0.1, 3.0, 4.0]},
              "models": {"custom_cnn": {"channels": [8, 16], "dropout": 0.5}}, "augment": {"enabled": True}}
    plots = {"val_confusion": "plots/val_confusion.png", "val_roc": "plots/val_roc.png",
             "history": "plots/history.png"}
    path = write_model_card(tmp_path / "eval" / "model_card.md", model_name="custom_cnn", metrics=metrics,
                            config=config, manifest_hash="abc123", plots=plots,
                            training={"epochs_run": 4, "best_epoch": 3, "monitor": "macro_auc", "best_score": 0.71})
    text = path.read_text()
    assert "not a medical device" in text
    assert "different scanning programmes" in text
    assert "`abc123`" in text
    val, test = metrics["splits"]["val"], metrics["splits"]["test"]
    # Model and baseline side by side on one row.
    assert (f"| balanced accuracy | {val['balanced_accuracy']:.3f} | "
            f"{val['baseline']['balanced_accuracy']:.3f} |") in text
    assert f"| macro AUC (one-vs-rest) | {val['macro_auc']:.3f} | 0.500 |" in text
    assert f"| weighted F1 | {test['f1_weighted']:.3f} | {test['baseline']['f1_weighted']:.3f} |" in text
    assert "always predict **normal** (the majority class of the training split)" in text
    cancer = val["per_class"]["cancer"]
    assert f"| cancer | {cancer['support']} | {cancer['recall']:.3f} | {cancer['precision']:.3f} |" in text
    # test has no cancer: its recall/AUC/AP are n/a, not numbers.
    assert "| cancer | 0 | n/a |" in text
    row = " | ".join(str(v) for v in val["confusion_matrix"][0])
    assert f"| **normal** | {row} |" in text
    assert "![Confusion matrix (val)](plots/val_confusion.png)" in text
    assert "![training curves](plots/history.png)" in text
    assert "| train | 52 | 40 | 7 | 5 |" in text  # training split counts from split_counts
    assert "| epochs run / max | 4 / 7 |" in text
    assert "| class weights | [0.1, 3.0, 4.0] |" in text
    assert not list(path.parent.glob("*.tmp"))
