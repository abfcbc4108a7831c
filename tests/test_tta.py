"""Flip test-time augmentation (evaluate.tta): mirror symmetry, evaluation, the exported ONNX graph (parity and
metadata) and scoring with it, which must give the evaluation's probabilities on the same files."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from medpipe.config import load_config
from medpipe.data.cache import load_cache
from medpipe.evaluate.predict import predict_probs
from medpipe.evaluate.stage import evaluate_model, read_predictions
from medpipe.export import export_onnx
from medpipe.onnx_runtime import create_session, predict_onnx, read_file_metadata, read_model_info
from medpipe.score import score_folder
from medpipe.train import load_checkpoint
from shipping_fixtures import TrainedRun, shipping_config
from shipping_fixtures import trained_run  # noqa: F401

_CLASSES = ["normal", "benign", "cancer"]


@dataclass
class TtaRun:
    cfg: object
    metrics: Path
    onnx: Path


@pytest.fixture(scope="module")
def tta_run(trained_run: TrainedRun) -> TtaRun:  # noqa: F811
    """custom_cnn evaluated and exported with evaluate.tta on."""
    cfg = shipping_config(trained_run.work, "evaluate.tta=true")
    checkpoint = trained_run.checkpoints["custom_cnn"]
    metrics = evaluate_model(checkpoint, trained_run.cache_dir, cfg, trained_run.work / "tta" / "eval")
    onnx = export_onnx(checkpoint, trained_run.cache_dir, cfg, trained_run.work / "tta" / "release" / "model.onnx",
                       metrics, "v1")
    return TtaRun(cfg, metrics, onnx)


def test_an_image_and_its_mirror_get_identical_tta_probabilities(trained_run):  # noqa: F811
    model, _ = load_checkpoint(trained_run.checkpoints["custom_cnn"])
    images = load_cache(trained_run.cache_dir).splits["val"].images
    mirrored = np.ascontiguousarray(images[:, :, ::-1])
    np.testing.assert_allclose(predict_probs(model, images, tta=True), predict_probs(model, mirrored, tta=True),
                               atol=1e-6, rtol=0)
    # Without TTA the mirror changes the answer (the classes' blobs sit off-centre), so the test above says something.
    assert np.abs(predict_probs(model, images) - predict_probs(model, mirrored)).max() > 1e-4


def test_evaluation_records_tta_and_its_probabilities_differ(trained_run, tta_run):  # noqa: F811
    assert json.loads(tta_run.metrics.read_text())["tta"] == "hflip"
    assert json.loads(trained_run.metrics["custom_cnn"].read_text())["tta"] == "none"
    with_tta = read_predictions(tta_run.metrics, "val", _CLASSES)
    plain = read_predictions(trained_run.metrics["custom_cnn"], "val", _CLASSES)
    assert with_tta.keys() == plain.keys()
    assert max(abs(a - b) for rel in plain for a, b in zip(with_tta[rel][1], plain[rel][1])) > 1e-4
    assert "mean over the image and its mirror" in (tta_run.metrics.parent / "model_card.md").read_text()


def test_export_with_tta_passes_parity_and_records_it(trained_run, tta_run):  # noqa: F811
    parity = json.loads((tta_run.onnx.parent / "parity.json").read_text())
    assert parity["passed"] is True and parity["tta"] == "hflip"
    assert read_file_metadata(tta_run.onnx)["tta"] == "hflip"
    assert read_model_info(create_session(tta_run.onnx, "cpu")).tta == "hflip"
    # The graph computes mean(softmax(f(x)), softmax(f(flip x))), not the plain softmax.
    model, _ = load_checkpoint(trained_run.checkpoints["custom_cnn"])
    images = load_cache(trained_run.cache_dir).splits["val"].images
    onnx_probs = predict_onnx(create_session(tta_run.onnx, "cpu"), images)
    np.testing.assert_allclose(onnx_probs, predict_probs(model, images, tta=True), atol=1e-5, rtol=0)
    assert np.abs(onnx_probs - predict_probs(model, images)).max() > 1e-4
    # The INT8 copy keeps the flip and the mean inside (float after the Softmax) and passes its check.
    int8 = tta_run.onnx.parent / "model.int8.onnx"
    assert json.loads((tta_run.onnx.parent / "int8.json").read_text())["shipped"] is True
    assert read_model_info(create_session(int8, "cpu")).tta == "hflip"
    int8_probs = predict_onnx(create_session(int8, "cpu"), images)
    assert np.mean(int8_probs.argmax(axis=1) == onnx_probs.argmax(axis=1)) >= 0.97


def test_a_plain_export_records_no_tta(trained_run, tmp_path):  # noqa: F811
    out = export_onnx(trained_run.checkpoints["custom_cnn"], trained_run.cache_dir, trained_run.cfg,
                      tmp_path / "model.onnx", trained_run.metrics["custom_cnn"], "v1")
    assert read_file_metadata(out)["tta"] == "none"
    assert json.loads((tmp_path / "parity.json").read_text())["tta"] == "none"


def test_export_refuses_a_tta_setting_other_than_the_evaluation(trained_run, tta_run, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match=r"evaluated with test-time augmentation 'hflip' but evaluate\.tta=false"):
        export_onnx(trained_run.checkpoints["custom_cnn"], trained_run.cache_dir, trained_run.cfg,
                    tmp_path / "model.onnx", tta_run.metrics, "v1")
    assert not (tmp_path / "model.onnx").exists()


def test_scoring_a_tta_export_gives_the_evaluation_probabilities(trained_run, tta_run, tmp_path):  # noqa: F811
    out = tmp_path / "preds.csv"
    score_folder(tta_run.onnx, trained_run.data_root / "val", out, tta_run.cfg)
    with out.open(newline="") as handle:
        scored = {row["path"]: [float(row[f"prob_{c}"]) for c in _CLASSES] for row in csv.DictReader(handle)}
    evaluated = read_predictions(tta_run.metrics, "val", _CLASSES)
    assert sorted(scored) == sorted(rel.removeprefix("val/") for rel in evaluated)
    for rel, (_, probs) in evaluated.items():
        np.testing.assert_allclose(scored[rel.removeprefix("val/")], probs, atol=1e-4, rtol=0)


def test_tta_is_a_checked_boolean_setting():
    assert load_config(None, ["evaluate.tta=true"]).evaluate.tta is True
    with pytest.raises(Exception, match="evaluate.tta"):
        load_config(None, ["evaluate.tta=3"])
