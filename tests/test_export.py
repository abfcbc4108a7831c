"""ONNX export: checker, metadata round trip, parity against torch, dynamic batch, refusal on a parity failure."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from medpipe.config import load_config
from medpipe.data.cache import load_cache
from medpipe.evaluate.predict import predict_probs
from medpipe.export import ParityError, export_onnx
from medpipe.onnx_runtime import CPU_PROVIDER, create_session, predict_onnx, read_model_info
from medpipe.preprocess import PREPROCESS_VERSION
from medpipe.train import load_checkpoint
from shipping_fixtures import PRIOR_KEYS, TrainedRun, checkpoint_with_meta, onnx_with_metadata
from shipping_fixtures import trained_run  # noqa: F401


@pytest.fixture(scope="module")
def exported(trained_run: TrainedRun) -> dict[str, Path]:  # noqa: F811
    """Both models exported once (version v1) into the module's scratch folder."""
    out = {}
    for name, checkpoint in trained_run.checkpoints.items():
        out[name] = export_onnx(checkpoint, trained_run.cache_dir, trained_run.cfg,
                                trained_run.work / "export" / name / "model.onnx", trained_run.metrics[name], "v1")
    return out


@pytest.mark.parametrize("name", ["custom_cnn", "resnet18"])
def test_export_passes_checker_and_records_metadata(exported, trained_run, name):  # noqa: F811
    path = exported[name]
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert not list(path.parent.glob("*.data")), "weights must be inside the .onnx file (external_data=False)"
    meta = {p.key: p.value for p in proto.metadata_props}
    model, ckpt_meta = load_checkpoint(trained_run.checkpoints[name])
    data = load_cache(trained_run.cache_dir)
    assert json.loads(meta["classes"]) == data.classes == ["normal", "benign", "cancer"]
    assert meta["input_size"] == "32" and meta["input_channels"] == "1"
    assert "0..255" in meta["input"] and "float32" in meta["input"] and "single channel" in meta["input"]
    norm = json.loads(meta["normalization"])
    assert norm["mean"] == pytest.approx(float(model.normalize.mean))
    assert norm["std"] == pytest.approx(float(model.normalize.std))
    assert meta["output"] == "probabilities"
    assert meta["model_name"] == name and meta["version"] == "v1"
    assert meta["manifest_hash"] == data.manifest_hash == ckpt_meta["manifest_hash"]
    assert meta["preprocess_version"] == PREPROCESS_VERSION
    val = json.loads(trained_run.metrics[name].read_text())["splits"]["val"]
    summary = json.loads(meta["metrics"])
    assert summary["split"] == "val" and summary["macro_auc"] == val["macro_auc"]
    assert summary["balanced_accuracy"] == val["balanced_accuracy"]
    # The prior correction travels exactly as training computed it, with what operators need to judge it.
    for key in PRIOR_KEYS:
        assert json.loads(meta[key]) == ckpt_meta[key]
    info = read_model_info(create_session(path, "cpu"), path)
    assert (info.classes, info.input_size, info.version, info.model_name) == (data.classes, 32, "v1", name)
    assert info.prior_correction == ckpt_meta["prior_correction"]


@pytest.mark.parametrize("name", ["custom_cnn", "resnet18"])
def test_parity_report_and_real_agreement(exported, trained_run, name):  # noqa: F811
    parity = json.loads((exported[name].parent / "parity.json").read_text())
    assert parity["passed"] is True and parity["images"] == 16 and parity["argmax_mismatches"] == 0
    assert 0.0 <= parity["max_abs_diff"] <= trained_run.cfg.export.parity_atol
    assert parity["provider"] == CPU_PROVIDER and parity["version"] == "v1" and parity["model_name"] == name
    # Independently of the report: all val images, ONNX Runtime vs the torch evaluation path.
    images = load_cache(trained_run.cache_dir).splits["val"].images
    model, _ = load_checkpoint(trained_run.checkpoints[name])
    onnx_probs = predict_onnx(create_session(exported[name], "cpu"), images, batch_size=7)
    torch_probs = predict_probs(model, images, "cpu", 64)
    np.testing.assert_allclose(onnx_probs, torch_probs, atol=1e-4, rtol=0)
    np.testing.assert_array_equal(onnx_probs.argmax(1), torch_probs.argmax(1))


@pytest.mark.parametrize("name", ["custom_cnn", "resnet18"])
def test_dynamic_batch_one_and_five(exported, trained_run, name):  # noqa: F811
    session = create_session(exported[name], "cpu")
    assert session.get_inputs()[0].shape[0] == "batch"
    images = load_cache(trained_run.cache_dir).splits["val"].images[:5]
    model, _ = load_checkpoint(trained_run.checkpoints[name])
    expected = predict_probs(model, images, "cpu", 5)
    for batch in (1, 5):
        x = images[:batch, None].astype(np.float32)
        out = session.run(None, {session.get_inputs()[0].name: x})[0]
        assert out.shape == (batch, 3)
        np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=1e-5)  # probabilities, not logits
        np.testing.assert_allclose(out, expected[:batch], atol=1e-4, rtol=0)


def test_parity_failure_refuses_the_export(trained_run, tmp_path):  # noqa: F811
    # A tolerance far below float32 resolution (0 is not a tolerance the config takes) cannot be met by two
    # different runtimes: the export must be refused and leave nothing.
    cfg = load_config(None, [f"data.cache_dir={trained_run.work / 'cache'}", "data.image_size=32",
                             "export.parity_atol=1e-12", "export.parity_images=16"])
    out = tmp_path / "refused" / "model.onnx"
    with pytest.raises(ParityError) as info:
        export_onnx(trained_run.checkpoints["custom_cnn"], trained_run.cache_dir, cfg, out, version="v2")
    message = str(info.value)
    assert "max |Δ probability|" in message and "export.parity_atol = 1e-12" in message
    assert not out.exists()
    assert list(out.parent.iterdir()) == [], "no temp file, no parity.json may be left behind"


def test_export_refuses_a_bad_version_and_a_foreign_cache(trained_run, tmp_path):  # noqa: F811
    with pytest.raises(ValueError, match="version '../x'"):
        export_onnx(trained_run.checkpoints["custom_cnn"], trained_run.cache_dir, trained_run.cfg,
                    tmp_path / "model.onnx", version="../x")
    with pytest.raises(FileNotFoundError, match="not a medpipe cache"):
        export_onnx(trained_run.checkpoints["custom_cnn"], tmp_path, trained_run.cfg, tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_checkpoint_without_priors_exports_without_a_correction(trained_run, tmp_path):  # noqa: F811
    """Checkpoints written before training recorded its priors still export, with no invented factors."""
    old = checkpoint_with_meta(trained_run.checkpoints["custom_cnn"], tmp_path / "old" / "best.pt", drop=PRIOR_KEYS)
    path = export_onnx(old, trained_run.cache_dir, trained_run.cfg, tmp_path / "out" / "model.onnx", version="v0")
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert not set(PRIOR_KEYS) & set(meta)
    assert read_model_info(create_session(path, "cpu"), path).prior_correction is None


@pytest.mark.parametrize("value", ["[0.5,0.5]", "[0.5,-0.1,0.6]", "[0,0,0]", "[NaN,0.5,0.5]", '["a",1,1]',
                                   "[true,1,1]", '{"normal":1}', "not json"])
def test_malformed_prior_correction_metadata_is_refused(exported, tmp_path, value):
    """A risk computed from bad factors would be wrong without any visible sign: refuse the model instead."""
    path = onnx_with_metadata(exported["custom_cnn"], tmp_path / "edited.onnx", prior_correction=value)
    with pytest.raises(ValueError, match="'prior_correction' must be a list of 3 finite non-negative") as info:
        read_model_info(create_session(path, "cpu"), path)
    assert str(path) in str(info.value)


def test_export_refuses_a_checkpoint_with_malformed_factors(trained_run, tmp_path):  # noqa: F811
    bad = checkpoint_with_meta(trained_run.checkpoints["custom_cnn"], tmp_path / "bad.pt", prior_correction=[0.5, 0.5])
    out = tmp_path / "out" / "model.onnx"
    with pytest.raises(ValueError, match="checkpoint meta 'prior_correction' must be a list of 3"):
        export_onnx(bad, trained_run.cache_dir, trained_run.cfg, out, version="v0")
    assert not out.exists()
