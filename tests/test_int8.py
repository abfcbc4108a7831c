"""INT8 for CPU scoring: export quantizes (real ONNX Runtime) and checks against FP32 on val, ships only a model that
passes, publish uploads and verifies it, and score picks INT8 on CPU (auto) or what it is told."""

from __future__ import annotations

import csv
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from medpipe.cli import main
from medpipe.config import ConfigError, load_config
from medpipe.export import export_onnx
from medpipe.fileio import sha256_file
from medpipe.onnx_runtime import create_session, read_file_metadata, read_model_info
from medpipe.precision import PrecisionError
from medpipe.registry import IntegrityError, publish_version
from medpipe.score import score_folder
from medpipe.store import LocalStore
from shipping_fixtures import TrainedRun, shipping_config
from shipping_fixtures import trained_run  # noqa: F401

_CPU = ("score.provider=cpu",)


def _release(run: TrainedRun, name: str, *settings: str, checkpoint: Path | None = None) -> Path:  # noqa: F811
    """custom_cnn exported as v1 into a publishable folder (metrics.json beside it) with `settings`."""
    out = run.work / name
    cfg = shipping_config(run.work, *settings)
    export_onnx(checkpoint or run.checkpoints["custom_cnn"], run.cache_dir, cfg, out / "model.onnx",
                run.metrics["custom_cnn"], "v1")
    shutil.copyfile(run.metrics["custom_cnn"], out / "metrics.json")
    return out


@pytest.fixture(scope="module")
def release(trained_run: TrainedRun) -> Path:  # noqa: F811
    return _release(trained_run, "int8-release")


def _outlier_checkpoint(run: TrainedRun, dest: Path, factor: float = 1e4) -> Path:  # noqa: F811
    """The same function as custom_cnn's best.pt, with one channel of the first block's output `factor` times
    larger and the next conv's weights on it `factor` times smaller (ReLU and max-pool commute with a positive
    scale): FP32 is unchanged, but a per-tensor INT8 range set by that channel rounds every other channel to
    zero. The activation outlier that makes real models fail their INT8 check, made certain."""
    import torch

    state = torch.load(run.checkpoints["custom_cnn"], map_location="cpu", weights_only=False)
    weights = state["model_state"]
    for key in ("features.1.weight", "features.1.bias"):  # BatchNorm gamma and beta of block 1, channel 0
        weights[key][0] *= factor
    weights["features.4.weight"][:, 0] /= factor  # block 2's conv reads channel 0 scaled back
    dest.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, dest)
    return dest


@pytest.fixture(scope="module")
def failed_release(trained_run: TrainedRun) -> Path:  # noqa: F811
    """A model INT8 cannot represent (activation outlier), checked with tolerances tightened through the config."""
    checkpoint = _outlier_checkpoint(trained_run, trained_run.work / "outlier" / "best.pt")
    return _release(trained_run, "int8-failed", "export.int8_min_agreement=0.99", "export.int8_max_auc_diff=0.005",
                    checkpoint=checkpoint)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_int8_is_written_checked_and_reported(release, trained_run):  # noqa: F811
    report = json.loads((release / "int8.json").read_text())
    assert report["shipped"] is True and report["onnx"] == "model.int8.onnx", report
    check = report["check"]
    assert check["passed"] and check["split"] == "val" and check["images"] == 24  # every val image
    assert check["argmax_agreement"] >= check["min_agreement"] == 0.97
    assert check["auc_diff"] == pytest.approx(abs(check["macro_auc_int8"] - check["macro_auc_fp32"]))
    assert check["auc_diff"] <= check["max_auc_diff"] == 0.01
    quant = report["quantization"]
    assert quant["calibration_split"] == "train" and quant["calibration_images"] == 24  # all 24 train images
    assert json.loads((release / "parity.json").read_text())["int8"] == {
        "shipped": True, "onnx": "model.int8.onnx", "reason": report["reason"]}
    # The INT8 file is a real quantized graph with the FP32 model's contract (metadata) and int8 weights.
    fp32_meta, int8_meta = read_file_metadata(release / "model.onnx"), read_file_metadata(release / "model.int8.onnx")
    assert {k: int8_meta.get(k) for k in fp32_meta} == fp32_meta and "quantization" not in fp32_meta
    import onnx

    ops = {node.op_type for node in onnx.load(str(release / "model.int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Softmax"} <= ops
    info = read_model_info(create_session(release / "model.int8.onnx", "cpu"))
    assert info.precision == "int8" and info.classes == ["normal", "benign", "cancer"]


def test_a_failed_check_ships_fp32_only_and_says_why(failed_release, caplog):
    assert (failed_release / "model.onnx").is_file() and not (failed_release / "model.int8.onnx").exists()
    report = json.loads((failed_release / "int8.json").read_text())
    assert report["shipped"] is False and report["onnx"] is None
    assert report["reason"].startswith("INT8 model not shipped: ") and "export.int8_" in report["reason"]
    assert report["check"]["passed"] is False and report["check"]["reasons"]
    parity = json.loads((failed_release / "parity.json").read_text())
    assert parity["passed"] is True and parity["int8"]["shipped"] is False
    assert parity["int8"]["reason"] == report["reason"]


def test_int8_off_writes_no_int8(trained_run):  # noqa: F811
    out = _release(trained_run, "int8-off", "export.int8=false")
    assert sorted(p.name for p in out.glob("*.onnx")) == ["model.onnx"] and not (out / "int8.json").exists()
    assert json.loads((out / "parity.json").read_text())["int8"]["reason"] == "export.int8=false"


def test_score_uses_int8_on_cpu_in_auto_and_fp32_when_told(release, trained_run, tmp_path, caplog):  # noqa: F811
    folder = trained_run.data_root / "val"
    caplog.set_level(logging.INFO, logger="medpipe.score")
    auto = score_folder(release, folder, tmp_path / "auto.csv", load_config(None, list(_CPU)))
    assert (auto["precision"], auto["model_file"], auto["provider"]) == ("int8", "model.int8.onnx",
                                                                         "CPUExecutionProvider")
    assert auto["precision_reason"] == "score.precision=auto on CPUExecutionProvider"
    assert "(model.int8.onnx, INT8: score.precision=auto on CPUExecutionProvider)" in caplog.text
    assert auto["model_sha256"] == sha256_file(release / "model.int8.onnx")
    fp32 = score_folder(release, folder, tmp_path / "fp32.csv", load_config(None, [*_CPU, "score.precision=fp32"]))
    assert (fp32["precision"], fp32["model_file"]) == ("fp32", "model.onnx")
    a, b = _rows(tmp_path / "auto.csv"), _rows(tmp_path / "fp32.csv")
    assert [r["path"] for r in a] == [r["path"] for r in b]
    agree = np.mean([ra["predicted"] == rb["predicted"] for ra, rb in zip(a, b)])
    assert agree >= 0.97  # what the export's check measured on the same val images


def test_missing_int8_auto_falls_back_explicit_int8_errors(failed_release, release, trained_run,  # noqa: F811
                                                           tmp_path):
    folder = trained_run.data_root / "val"
    auto = score_folder(failed_release, folder, tmp_path / "a.csv", load_config(None, list(_CPU)))
    assert auto["precision"] == "fp32" and "holds no model.int8.onnx, scoring with FP32" in auto["precision_reason"]
    with pytest.raises(PrecisionError, match="score.precision=int8 but .*int8-failed holds no model.int8.onnx"):
        score_folder(failed_release, folder, tmp_path / "b.csv", load_config(None, [*_CPU, "score.precision=int8"]))
    with pytest.raises(PrecisionError, match=r"score.precision=int8 but .*model.onnx is an FP32 model"):
        score_folder(release / "model.onnx", folder, tmp_path / "c.csv",
                     load_config(None, [*_CPU, "score.precision=int8"]))
    assert not list(tmp_path.glob("[bc].csv"))


def test_publish_uploads_and_score_verifies_the_int8_model(release, failed_release, trained_run,  # noqa: F811
                                                           tmp_path):
    store = LocalStore(tmp_path / "store")
    result = publish_version(store, release, "custom_cnn", "v1", promote=True)  # no gate ran: promoted by hand
    assert "model.int8.onnx" in result["uploaded"] and "int8.json" in result["uploaded"]
    manifest = json.loads(store.get_bytes("models/custom_cnn/v1/manifest.json"))
    recorded = {e["path"]: e["sha256"] for e in manifest["files"]}
    assert recorded["model.int8.onnx"] == sha256_file(release / "model.int8.onnx")
    folder, cfg = trained_run.data_root / "val", load_config(None, list(_CPU))
    summary = score_folder("champion", folder, tmp_path / "ok.csv", cfg, store=store)
    assert (summary["precision"], summary["model_sha256"]) == ("int8", recorded["model.int8.onnx"])

    stored = store.root / "models" / "custom_cnn" / "v1" / "model.int8.onnx"
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="model.int8.onnx: downloaded sha256 .* does not match"):
        score_folder("champion", folder, tmp_path / "bad.csv", cfg, store=store)
    fp32 = score_folder("custom_cnn/v1", folder, tmp_path / "fp32.csv", load_config(None, [*_CPU,
                        "score.precision=fp32"]), store=store)
    assert fp32["model_sha256"] == recorded["model.onnx"]

    publish_version(store, failed_release, "custom_cnn", "v2")  # a version without INT8
    assert score_folder("custom_cnn/v2", folder, tmp_path / "v2.csv", cfg, store=store)["precision"] == "fp32"
    with pytest.raises(PrecisionError, match="custom_cnn/v2 has no model.int8.onnx"):
        score_folder("custom_cnn/v2", folder, tmp_path / "v2b.csv", load_config(None, [*_CPU,
                     "score.precision=int8"]), store=store)


def test_cli_precision_flag(release, trained_run, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "s.csv"
    assert main(["score", "--model", str(release), "--input", str(trained_run.data_root / "val"), "--output",
                 str(out), "--precision", "fp32", "--set", "score.provider=cpu"]) == 0
    assert "FP32 model.onnx (score.precision=fp32)" in capsys.readouterr().out


@pytest.mark.parametrize("override, message", [
    ("export.int8_min_agreement=1.5", "export.int8_min_agreement=1.5"),
    ("export.int8_max_auc_diff=-0.1", "export.int8_max_auc_diff=-0.1"),
    ("export.int8_calibration_images=0", "export.int8_calibration_images=0"),
    ("export.int8=maybe", "export.int8=maybe"),
    ("score.precision=int4", "score.precision=int4"),
])
def test_int8_settings_are_range_checked(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(None, [override])
