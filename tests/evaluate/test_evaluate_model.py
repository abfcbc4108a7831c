"""predict_probs on tiny real torch models; evaluate_model end to end on a real cache and a really trained model."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from medpipe_testdata import write_dataset
from medpipe.config import load_config
from medpipe.data.cache import build_cache, load_cache
from medpipe.evaluate.metrics import compute_metrics
from medpipe.evaluate.predict import predict_probs
from medpipe.evaluate.stage import evaluate_model
from medpipe.priors import apply_prior_correction
from medpipe.train import load_checkpoint, train_model

CLASSES = ["normal", "benign", "cancer"]


class _BrightnessModel(nn.Module):
    """Follows the model contract (raw 0..255 float32 (N,1,H,W) in, logits out) with logits we can compute by
    hand: +-4 x mean brightness / 255. The dropout makes a model left in train mode give different answers."""

    def __init__(self) -> None:
        super().__init__()
        self.drop = nn.Dropout(0.9)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.float32 and x.ndim == 4 and x.shape[1] == 1
        m = x.mean(dim=(1, 2, 3)) / 255.0 * 4.0
        return self.drop(torch.stack([m, torch.zeros_like(m), -m], dim=1))


def _expected_probs(images: np.ndarray) -> np.ndarray:
    m = images.astype(np.float64).mean(axis=(1, 2)) / 255.0 * 4.0
    logits = np.stack([m, np.zeros_like(m), -m], axis=1)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_predict_probs_feeds_raw_pixels_and_returns_softmax():
    images = np.random.default_rng(0).integers(0, 256, (7, 16, 16), dtype=np.uint8)
    model = _BrightnessModel().train()
    probs = predict_probs(model, images, device="cpu", batch_size=3)
    assert probs.dtype == np.float32 and probs.shape == (7, 3)
    np.testing.assert_allclose(probs, _expected_probs(images), atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    assert not model.training
    # Batching does not change answers; a read-only array (a memory-mapped cache) is accepted.
    images.setflags(write=False)
    np.testing.assert_array_equal(predict_probs(model, images, "auto", batch_size=256), probs)


@pytest.mark.parametrize(
    ("images", "kwargs", "message"),
    [
        (np.zeros((2, 8, 8), dtype=np.float32), {}, "uint8"),
        (np.zeros((8, 8), dtype=np.uint8), {}, r"\(N, H, W\)"),
        (np.zeros((0, 8, 8), dtype=np.uint8), {}, "empty"),
        (np.zeros((2, 8, 8), dtype=np.uint8), {"batch_size": 0}, "batch_size"),
        (np.zeros((2, 8, 8), dtype=np.uint8), {"device": "tpu"}, "unknown device 'tpu'"),
    ],
)
def test_predict_probs_refuses_bad_input(images, kwargs, message):
    with pytest.raises(ValueError, match=message):
        predict_probs(_BrightnessModel(), images, **kwargs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bf16 autocast + channels_last path)")
def test_predict_probs_cuda_bf16_matches_cpu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    images = np.random.default_rng(1).integers(0, 256, (40, 32, 32), dtype=np.uint8)
    cpu = predict_probs(model, images, "cpu")
    gpu = predict_probs(model, images, "cuda", batch_size=16)
    assert gpu.dtype == np.float32
    np.testing.assert_allclose(gpu, cpu, atol=3e-2)  # bf16 has ~3 significant digits


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A real cache (train/val/test; cancer is the TRAINING majority) and a custom CNN trained for 2 epochs."""
    tmp = tmp_path_factory.mktemp("eval")
    root = write_dataset(tmp / "data", per_class={"train": 6, "val": 4, "test": 3}, splits=("train", "val", "test"),
                         size=40)
    for path in sorted((root / "train" / "normal").iterdir())[:3] + sorted((root / "train" / "benign").iterdir())[:2]:
        path.unlink()  # train: normal 3, benign 4, cancer 6
    cfg = load_config(None, ["data.image_size=32", f"data.cache_dir={tmp / 'cache'}", "train.epochs=2",
                             "train.batch_size=8", "train.device=cpu", "models.custom_cnn.channels=[8,16,16,16]"])
    cache_dir = build_cache(root, cfg)
    run_dir = train_model(cache_dir, "custom_cnn", cfg, tmp / "run")
    return {"tmp": tmp, "root": root, "cfg": cfg, "cache": cache_dir, "checkpoint": run_dir / "best.pt"}


def _assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 2000, path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_model_end_to_end(trained):
    out = trained["tmp"] / "run" / "eval"
    path = evaluate_model(trained["checkpoint"], trained["cache"], trained["cfg"], out)
    assert path == out / "metrics.json"
    text = path.read_text()
    metrics = json.loads(text)
    assert str(trained["tmp"]) not in text  # portable: no absolute paths of this machine
    assert metrics["model"] == "custom_cnn" and metrics["classes"] == CLASSES
    assert metrics["checkpoint"] == "../best.pt" and len(metrics["checkpoint_sha256"]) == 64
    assert metrics["manifest_hash"] == load_cache(trained["cache"]).manifest_hash
    assert metrics["split_counts"]["train"] == {"normal": 3, "benign": 4, "cancer": 6}
    assert set(metrics["splits"]) == {"val", "test"}
    assert metrics["training"]["epochs_run"] == 2
    # Default training (weighted sampling, loss weights 0.1/3/4) on counts 3/4/6: prior 0.1:3:4; the balanced
    # decision adds log(1/3 / prior) to the evaluated logits, so the outputs are under equal priors and the
    # factors back to the prevalence are the prevalence itself. The checkpoint recorded them; evaluation uses them.
    _, meta = load_checkpoint(trained["checkpoint"])
    prevalence, prior = np.array([3, 4, 6]) / 13, np.array([0.1, 3, 4]) / 7.1
    assert meta["train_class_counts"] == [3, 4, 6]
    np.testing.assert_allclose(meta["training_prior"], prior)
    np.testing.assert_allclose(meta["logit_offset"], np.log(1 / 3) - np.log(prior))
    np.testing.assert_allclose(meta["prior_correction"], prevalence)
    assert metrics["prior_correction"]["factors"] == meta["prior_correction"]
    assert metrics["prior_correction"]["source"] == "checkpoint"

    model, _ = load_checkpoint(trained["checkpoint"])
    data = load_cache(trained["cache"])
    for split, n_per_class in (("val", 4), ("test", 3)):
        m = metrics["splits"][split]
        assert m["n"] == 3 * n_per_class
        assert [m["per_class"][c]["support"] for c in CLASSES] == [n_per_class] * 3
        assert m["baseline"]["majority_class"] == "cancer" and m["baseline"]["majority_source"] == "given"
        assert m["baseline"]["balanced_accuracy"] == pytest.approx(1 / 3)
        # The stored numbers are those of the checkpoint's own predictions on the cached pixels.
        probs = predict_probs(model, data.splits[split].images)
        expected = compute_metrics(data.splits[split].labels, probs, CLASSES, baseline_class="cancer")
        assert m["confusion_matrix"] == expected["confusion_matrix"]
        assert m["macro_auc"] == pytest.approx(expected["macro_auc"], abs=1e-6)
        ci = m["confidence_intervals"]  # by patient: every tiny-dataset image is its own patient
        assert ci["groups"] == m["n"] and ci["level"] == 0.95 and ci["kept"] > 0
        for key in ("macro_auc", "balanced_accuracy"):
            assert ci[key][0] <= m[key] <= ci[key][1] or m[key] in (0.0, 1.0)

        with (out / f"predictions_{split}.csv").open() as handle:
            rows = list(csv.DictReader(handle))
        assert len(rows) == m["n"]
        for row in rows:
            # The label comes from the folder the file sits in: <split>/<class>/<file>.
            assert row["rel"].split("/")[:2] == [split, row["true"]]
            # The patient the bootstrap grouped by: the file-name pattern's id (P_00001_LEFT_CC.png -> P_00001).
            assert row["patient"] and Path(row["rel"]).name.startswith(row["patient"] + "_")
            assert (trained["root"] / row["rel"]).is_file()
            p = [float(row[f"prob_{c}"]) for c in CLASSES]
            assert row["predicted"] == CLASSES[int(np.argmax(p))] and sum(p) == pytest.approx(1, abs=1e-4)
        cal = m["calibration"]  # the stored calibration is that of the same predictions
        assert cal["brier"] == pytest.approx(np.mean(np.sum((probs - np.eye(3)[data.splits[split].labels]) ** 2, 1)),
                                             abs=1e-6)
        assert 0 <= cal["ece"] <= 1 and set(cal["per_class"]) == set(CLASSES)
        corrected = apply_prior_correction(probs, meta["prior_correction"])
        onehot = np.eye(3)[data.splits[split].labels]
        assert cal["prior_corrected"]["brier"] == pytest.approx(np.mean(np.sum((corrected - onehot) ** 2, 1)),
                                                                abs=1e-6)
        for kind in ("confusion", "confusion_normalized", "roc", "pr", "reliability"):
            _assert_png(out / "plots" / f"{split}_{kind}.png")
    _assert_png(out / "plots" / "history.png")

    card = (out / "model_card.md").read_text()
    val = metrics["splits"]["val"]
    base = val["baseline"]
    assert f"| balanced accuracy | {val['balanced_accuracy']:.3f} | {base['balanced_accuracy']:.3f} |" in card
    assert "(plots/val_roc.png)" in card and "(plots/history.png)" in card and "(plots/val_reliability.png)" in card
    assert f"Brier score {val['calibration']['brier']:.3f}" in card
    assert f"Brier score {val['calibration']['prior_corrected']['brier']:.3f}" in card and "risk_<class>" in card
    assert "| class balance learned (sampling x loss weight) | normal 0.014, benign 0.423, cancer 0.563 |" in card
    assert "| decision | under equal class priors: logit offsets normal +3.16, benign -0.24, cancer -0.52" in card
    lo, hi = val["confidence_intervals"]["macro_auc"]
    assert f"macro AUC (one-vs-rest) {lo:.3f}–{hi:.3f}" in card
    assert f"benign vs cancer {val['pairwise_auc']['benign_vs_cancer']:.3f}" in card
    assert "not a medical device" in card
    assert card.count("This split chose the checkpoint") == 1  # under val only, not under test
    assert not list(out.rglob("*.tmp")) and not list(out.rglob(".*"))

    # Same inputs, same place, same numbers.
    again = json.loads(evaluate_model(trained["checkpoint"], trained["cache"], trained["cfg"], out).read_text())
    assert again == metrics


def test_evaluate_model_skips_missing_splits_and_refuses_when_none_is_left(trained, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(trained["root"], root, ignore=shutil.ignore_patterns("test"))
    cache = build_cache(root, trained["cfg"])
    cfg = load_config(None, ["data.image_size=32", "train.device=cpu"])
    metrics = json.loads(evaluate_model(trained["checkpoint"], cache, cfg, tmp_path / "eval").read_text())
    assert set(metrics["splits"]) == {"val"}
    assert not (tmp_path / "eval" / "predictions_test.csv").exists()
    # A different dataset version than the one trained on: allowed, and recorded.
    assert metrics["manifest_hash"] != metrics["checkpoint_manifest_hash"]

    only_test = load_config(None, ["data.image_size=32", "train.device=cpu", "evaluate.splits=[test]"])
    with pytest.raises(ValueError, match=r"none of the splits \['test'\].*holds \['train', 'val'\]"):
        evaluate_model(trained["checkpoint"], cache, only_test, tmp_path / "eval2")
    assert not (tmp_path / "eval2" / "metrics.json").exists()


def test_evaluate_model_refuses_a_cache_of_another_image_size(trained, tmp_path):
    cfg48 = load_config(None, ["data.image_size=48", f"data.cache_dir={tmp_path / 'cache'}", "train.device=cpu"])
    cache = build_cache(trained["root"], cfg48)
    with pytest.raises(ValueError, match=r"trained on 32 px images but cache .* holds 48 px"):
        evaluate_model(trained["checkpoint"], cache, cfg48, tmp_path / "eval")
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_undefined_best_score_is_null_and_a_broken_history_is_skipped(trained, tmp_path, caplog):
    """A run whose monitored metric never existed (best_score NaN) and whose history.json is damaged."""
    state = torch.load(trained["checkpoint"], map_location="cpu", weights_only=False)
    state["meta"]["best_score"] = float("nan")
    run = tmp_path / "run"
    run.mkdir()
    torch.save(state, run / "best.pt")
    (run / "history.json").write_text('{"epochs_run": 2, "history": [')
    path = evaluate_model(run / "best.pt", trained["cache"], trained["cfg"], run / "eval")
    metrics = json.loads(path.read_text())  # strict JSON: a NaN would have made json.dumps(allow_nan=False) fail
    assert metrics["training"]["best_score"] is None and metrics["training"]["epochs_run"] is None
    assert "skipping training history" in caplog.text and "history.json" in caplog.text
    assert not (run / "eval" / "plots" / "history.png").exists()
    assert "training curves" not in (run / "eval" / "model_card.md").read_text()


def test_checkpoint_without_recorded_priors_gets_them_derived(trained):
    """Checkpoints written before the priors were recorded: the same factors from their config + the cache."""
    payload = torch.load(trained["checkpoint"], map_location="cpu", weights_only=False)
    expected = payload["meta"].pop("prior_correction")
    for key in ("training_prior", "train_class_counts"):
        payload["meta"].pop(key)
    old = trained["tmp"] / "old" / "best.pt"
    old.parent.mkdir()
    torch.save(payload, old)
    metrics = json.loads(evaluate_model(old, trained["cache"], trained["cfg"], old.parent / "eval").read_text())
    assert metrics["prior_correction"]["source"].startswith("derived from the checkpoint's config")
    np.testing.assert_allclose(metrics["prior_correction"]["factors"], expected)
    corrected = metrics["splits"]["val"]["calibration"]["prior_corrected"]
    assert corrected["factors"] == metrics["prior_correction"]["factors"]
