"""A statically quantized INT8 copy of an exported model, for CPU scoring, shipped only when it agrees with FP32.

What is quantized: every Conv/Gemm/MatMul (weights int8 per output channel, activations uint8 per tensor, QDQ
format, which ONNX Runtime fuses into integer kernels) and the operators between them, up to the first Softmax.
The Softmax and everything after it (the flip-TTA mean, the ensemble's mean of its members) stay float: they cost
nothing, and probabilities rounded to 1/255 would tie images that AUC and the risk columns tell apart.

Calibration: activation ranges (MinMax) are measured on a seeded sample of *training* images from the uint8 cache,
fed exactly as a scorer feeds the FP32 model (float32 raw 0..255, (N, 1, H, W)): the val images are kept for the
check, so the check is not run on the images the ranges were fitted to.

The check, on every val image: arg-max agreement with FP32 >= export.int8_min_agreement and |macro AUC(INT8) -
macro AUC(FP32)| <= export.int8_max_auc_diff. A model that fails (or cannot be quantized) is not shipped; FP32
always is, and int8.json says why.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.config import Config
from medpipe.fileio import atomic_output
from medpipe.onnx_runtime import create_session, predict_onnx

__all__ = ["INT8_FORMAT", "quantize_model", "check_int8", "build_int8", "calibration_sample"]

_logger = logging.getLogger(__name__)

# Recorded in the INT8 model's metadata (key "quantization") and in int8.json; its presence marks an INT8 file.
INT8_FORMAT = "int8 static QDQ: weights int8 per channel, activations uint8 per tensor (MinMax on train images)"
_CALIBRATION_BATCH = 16


def calibration_sample(images: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` training images drawn without replacement with `seed` (all of them when there are fewer): the same
    sample for the same cache and settings, so an export is reproducible."""
    rng = np.random.default_rng(seed)
    index = np.sort(rng.choice(len(images), size=min(count, len(images)), replace=False))
    return np.asarray(images[index])


def _batches(images: np.ndarray) -> Iterator[np.ndarray]:
    """The FP32 model's input contract: float32 raw 0..255, (N, 1, H, W); normalisation is inside the graph."""
    for start in range(0, len(images), _CALIBRATION_BATCH):
        yield images[start:start + _CALIBRATION_BATCH, None].astype(np.float32)


def _float_tail(model_path: Path) -> list[str]:
    """Names of the Softmax nodes and every node downstream of them: kept out of quantization (module doc)."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    tainted = {out for node in graph.node if node.op_type == "Softmax" for out in node.output}
    names = [node.name for node in graph.node if node.op_type == "Softmax"]
    for node in graph.node:  # nodes are topologically sorted in a valid ONNX graph
        if node.op_type != "Softmax" and tainted.intersection(node.input):
            tainted.update(node.output)
            names.append(node.name)
    return names


def _pre_process(fp32_path: Path, dest: Path) -> tuple[Path, str | None]:
    """ONNX Runtime's recommended pre-processing (shape inference + graph optimisation) before quantization.

    It is optional: quantize_static works on the plain graph, only with fewer shapes known. Symbolic shape
    inference has failed on graphs from torch's dynamo exporter (opset >= 18 ops, symbolic batch dimensions it
    does not know), and such a failure must not cost the INT8 model; the reason is kept for int8.json.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(fp32_path), str(dest), skip_symbolic_shape=False)
        return dest, None
    except Exception as exc:  # noqa: BLE001 - any failure of an optional step: quantize the plain graph
        _logger.info("quant_pre_process failed on %s (%s); quantizing the graph as exported", fp32_path, exc)
        return fp32_path, f"{type(exc).__name__}: {exc}"


def quantize_model(fp32_path: str | Path, out_path: str | Path, calibration: np.ndarray) -> dict[str, Any]:
    """Write the INT8 model of `fp32_path` to `out_path` (directly; callers wanting atomicity pass a temp path).

    The FP32 model's metadata_props are kept (quantize_static copies them) and `quantization` is added.

    Args:
        calibration: (N, H, W) uint8 training images.

    Returns:
        {"format", "calibration_images", "pre_processed", "pre_process_error"}.
    """
    import onnx
    # onnxruntime.quantization imports onnx helpers and numpy kernels: only export needs it, not CLI start-up.
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, \
        quantize_static

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if calibration.ndim != 3 or calibration.dtype != np.uint8 or len(calibration) == 0:
        raise ValueError(f"calibration images must be a non-empty (N, H, W) uint8 array, got shape "
                         f"{calibration.shape} dtype {calibration.dtype}")
    input_name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._batches = _batches(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {input_name: batch}

    with tempfile.TemporaryDirectory(prefix="medpipe-int8-") as tmp:
        source, pre_error = _pre_process(fp32_path, Path(tmp) / "pre.onnx")
        quantize_static(
            str(source), str(out_path), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            # U8S8 (uint8 activations, int8 weights): on x86 ONNX Runtime turns every DQ-Conv-Q of it into
            # QLinearConv; with int8 activations (S8S8) it fused only 9 of ResNet-18's 20 convs (measured, ORT
            # 1.31, AVX-512 VNNI), leaving it ~1.1x FP32 instead of ~2.5x. On AVX2 machines without VNNI, U8S8 can
            # saturate; the check against FP32 below is what stops such a model from shipping.
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax, nodes_to_exclude=_float_tail(source),
        )
    proto = onnx.load(str(out_path))
    entry = next((e for e in proto.metadata_props if e.key == "quantization"), None) or proto.metadata_props.add()
    entry.key, entry.value = "quantization", INT8_FORMAT
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out_path))
    return {"format": INT8_FORMAT, "calibration_images": int(len(calibration)),
            "pre_processed": pre_error is None, "pre_process_error": pre_error}


def _macro_auc(labels: np.ndarray, probs: np.ndarray, classes: list[str]) -> float | None:
    # sklearn behind compute_metrics: loaded by export only, not at CLI start-up.
    from medpipe.evaluate.metrics import compute_metrics

    return compute_metrics(labels, probs, classes)["macro_auc"]


def check_int8(fp32_path: str | Path, int8_path: str | Path, images: np.ndarray, labels: np.ndarray,
               classes: list[str], min_agreement: float, max_auc_diff: float) -> dict[str, Any]:
    """INT8 against FP32 (both ONNX Runtime on CPU) on the same val images.

    Returns:
        {"split", "images", "argmax_agreement", "min_agreement", "macro_auc_fp32", "macro_auc_int8",
        "auc_diff", "max_auc_diff", "passed", "reasons"}; reasons lists each broken tolerance.
    """
    fp32 = predict_onnx(create_session(fp32_path, "cpu"), images)
    int8 = predict_onnx(create_session(int8_path, "cpu"), images)
    agreement = float(np.mean(fp32.argmax(axis=1) == int8.argmax(axis=1)))
    auc_fp32, auc_int8 = _macro_auc(labels, fp32, classes), _macro_auc(labels, int8, classes)
    diff = None if auc_fp32 is None or auc_int8 is None else abs(auc_int8 - auc_fp32)
    reasons = []
    if agreement < min_agreement:
        reasons.append(f"arg-max agreement with FP32 {agreement:.4f} < export.int8_min_agreement = {min_agreement}")
    if diff is None:
        reasons.append("macro AUC is undefined on the val images (no class with both positives and negatives)")
    elif diff > max_auc_diff:
        reasons.append(f"|macro AUC INT8 {auc_int8:.4f} - FP32 {auc_fp32:.4f}| = {diff:.4f} > "
                       f"export.int8_max_auc_diff = {max_auc_diff}")
    return {"split": "val", "images": int(len(images)), "argmax_agreement": agreement,
            "min_agreement": float(min_agreement), "macro_auc_fp32": auc_fp32, "macro_auc_int8": auc_int8,
            "auc_diff": diff, "max_auc_diff": float(max_auc_diff), "passed": not reasons, "reasons": reasons}


def build_int8(fp32_path: str | Path, out_path: str | Path, train_images: np.ndarray, val_images: np.ndarray,
               val_labels: np.ndarray, classes: list[str], cfg: Config) -> dict[str, Any]:
    """Quantize, check, and write `out_path` only when the check passed; never raises for a model that cannot
    be quantized or fails the check (FP32 ships regardless), the report says why.

    Args:
        fp32_path: the parity-checked FP32 model.
        train_images: (N, H, W) uint8 training images, the calibration pool.
        val_images, val_labels: the check's images and their labels.
        cfg: export.int8_calibration_images, export.int8_min_agreement, export.int8_max_auc_diff, train.seed.

    Returns:
        The int8.json report: {"shipped", "onnx" (file name or None), "reason", "quantization", "check"}.
    """
    out_path = Path(out_path)
    settings = cfg.export
    report: dict[str, Any] = {"shipped": False, "onnx": None, "reason": None, "quantization": None, "check": None}
    if len(train_images) == 0:
        report["reason"] = "no training images in the cache to calibrate on"
        return report
    calibration = calibration_sample(train_images, settings.int8_calibration_images, cfg.train.seed)
    try:
        # The model appears at out_path only once it passed the check; a failure removes the temp.
        with atomic_output(out_path) as tmp:
            report["quantization"] = {**quantize_model(fp32_path, tmp, calibration), "calibration_split": "train",
                                      "calibration_seed": cfg.train.seed}
            report["check"] = check_int8(fp32_path, tmp, val_images, val_labels, classes,
                                         settings.int8_min_agreement, settings.int8_max_auc_diff)
            if not report["check"]["passed"]:
                raise _CheckFailed("; ".join(report["check"]["reasons"]))
    except _CheckFailed as exc:
        report["reason"] = f"INT8 model not shipped: {exc}"
    except Exception as exc:  # noqa: BLE001 - quantization of an unusual graph failing must not stop FP32
        report["reason"] = f"INT8 model not shipped: quantization failed: {type(exc).__name__}: {exc}"
    else:
        report.update(shipped=True, onnx=out_path.name, reason="passed the check against FP32 on val")
    return report


class _CheckFailed(Exception):
    """The INT8 model disagrees with FP32 beyond the tolerances (internal: turned into the report's reason)."""
