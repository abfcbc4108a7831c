"""Export a trained checkpoint to ONNX that outputs probabilities, with metadata, checked against torch.

The graph takes float32 (N, 1, H, W) raw pixels 0..255 with a dynamic batch dimension; normalisation and softmax
are inside, so a scorer needs only `medpipe.preprocess.load_image` in front of it. Before the file appears at its
final path it must pass `onnx.checker` and a parity test on real validation images: ONNX Runtime vs torch, max
|Δ probability| <= cfg.export.parity_atol and identical argmax. A failure leaves nothing at the output path.
Before that, with export.int8, the INT8 copy for CPU scoring is built and checked against it (medpipe.quantize);
its failure is reported in int8.json and parity.json, never an export failure.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medpipe.config import Config
from medpipe.contracts import CheckpointMeta, EnsembleRecord, read_metrics
from medpipe.data.cache import load_cache
from medpipe.ensemble import load_model, member_metadata
from medpipe.evaluate.predict import predict_probs, probabilities, tta_name
from medpipe.fileio import atomic_output, atomic_write_text
from medpipe.onnx_runtime import create_session, metadata_as_json, predict_onnx
from medpipe.preprocess import PREPROCESS_VERSION
from medpipe.priors import prior_metadata
from medpipe.quantize import build_int8
from medpipe.run_folder import INT8_ONNX_NAME, INT8_REPORT_NAME, PARITY_NAME

if TYPE_CHECKING:
    import torch

__all__ = ["ParityError", "export_onnx", "export_module", "model_metadata", "check_parity", "PARITY_NAME",
           "INPUT_DESCRIPTION"]

_logger = logging.getLogger(__name__)

INPUT_DESCRIPTION = "float32 raw pixels 0..255, single channel, shape (N, 1, H, W); N is dynamic"
_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class ParityError(RuntimeError):
    """ONNX Runtime and torch disagree on real images beyond the allowed tolerance; the export is refused."""


def _probability_model(model: "torch.nn.Module", tta: bool = False) -> "torch.nn.Module":
    """Wrap a logits model so that the exported graph ends in softmax (decided once: ONNX outputs probabilities).

    With `tta` the graph computes mean(softmax(f(x)), softmax(f(flip(x)))), through the same function as
    evaluation (`medpipe.evaluate.predict.probabilities`); the logit offset is inside f, so applied to both.
    """
    import torch

    class ProbabilityModel(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module, tta: bool) -> None:
            super().__init__()
            self.inner, self.tta = inner, tta

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return probabilities(self.inner, x, self.tta)

    return ProbabilityModel(model, tta).eval()


def _normalization(model: "torch.nn.Module") -> dict[str, Any]:
    """mean/std of the model's Normalize; an ensemble whose members normalise differently: {"members": [...]}."""
    from medpipe.models import Normalize  # torch stays off the CLI's start-up path

    found = [{"mean": float(m.mean), "std": float(m.std)} for m in model.modules() if isinstance(m, Normalize)]
    if not found:
        raise ValueError(f"{type(model).__name__} has no Normalize module: not a medpipe model")
    return found[0] if all(f == found[0] for f in found) else {"members": found}


def _metrics_summary(metrics_path: Path | None, split: str = "val") -> dict[str, Any] | None:
    if metrics_path is None:
        return None
    report = read_metrics(metrics_path)
    if split not in report.splits:
        return None
    return {"split": split, "n": report.split(split).get("n"), **report.headline(split),
            "recall": report.recall(split)}


def model_metadata(model: "torch.nn.Module", meta: Mapping[str, Any], version: str,
                   metrics_summary: dict[str, Any] | None, tta: bool = False) -> dict[str, str]:
    """The metadata_props of an exported model (keys documented in `medpipe.onnx_runtime.META_KEYS`).

    Args:
        model: the logits model (its Normalize buffers give mean/std).
        meta: checkpoint meta, a `CheckpointMeta` or its dict (model_name, classes, image_size, manifest_hash,
            preprocess_version, and from checkpoints that record them prior_correction, training_prior,
            train_class_counts), or an ensemble record's dict (members: recorded as `members` and `combine`;
            no prior correction, see medpipe.evaluate.ensemble).
        version: the model version.
        metrics_summary: headline validation metrics, or None.
        tta: the graph averages over the image and its mirror (recorded as `tta`: "hflip" or "none").

    Raises:
        ValueError: the checkpoint's prior_correction is not one finite non-negative factor per class.
    """
    metadata = {
        "classes": metadata_as_json(list(meta["classes"])),
        "input_size": str(int(meta["image_size"])),
        "input_channels": "1",
        "input": INPUT_DESCRIPTION,
        "normalization": metadata_as_json({**_normalization(model), "applied": "inside the graph: (x - mean) / std"}),
        "output": "probabilities",
        "tta": tta_name(tta),
        "model_name": str(meta["model_name"]),
        "version": version,
        "manifest_hash": str(meta.get("manifest_hash") or ""),
        "preprocess_version": str(meta.get("preprocess_version") or PREPROCESS_VERSION),
        "metrics": metadata_as_json(metrics_summary),
    }
    # None of these for checkpoints from before training recorded its priors: no made-up factors.
    metadata.update((key, metadata_as_json(value)) for key, value in prior_metadata(meta).items())
    metadata.update((key, metadata_as_json(value)) for key, value in member_metadata(meta).items())
    return metadata


def export_module(model: "torch.nn.Module", out_path: str | Path, image_size: int, metadata: dict[str, str],
                  opset: int = 20, tta: bool = False) -> Path:
    """Export a logits model as a self-contained ONNX file whose output is probabilities; checked by onnx.checker.

    Writes `out_path` directly (callers that need atomicity pass a temp path).

    Args:
        model: a medpipe model (float32 (N,1,H,W) 0..255 in, logits out).
        out_path: the .onnx file to write.
        image_size: H = W of the example input.
        metadata: string key/values stored in metadata_props.
        opset: ONNX opset.
        tta: export mean(softmax(f(x)), softmax(f(flip(x)))) (flip test-time augmentation).
    """
    import onnx
    import torch

    out_path = Path(out_path)
    wrapped = _probability_model(model.cpu().eval(), tta)
    example = (torch.rand(2, 1, image_size, image_size) * 255.0,)
    torch.onnx.export(
        wrapped, example, str(out_path), dynamo=True, external_data=False, opset_version=opset,
        input_names=["x"], output_names=["probabilities"],
        # Key = forward()'s argument name; a batch of 2 in the example keeps the dimension symbolic.
        dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, verbose=False,
    )
    proto = onnx.load(str(out_path))
    del proto.metadata_props[:]
    for key, value in sorted(metadata.items()):
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, str(out_path))
    return out_path


def check_parity(onnx_path: str | Path, model: "torch.nn.Module", images: np.ndarray, atol: float,
                 batch_size: int = 8, tta: bool = False) -> dict[str, Any]:
    """Compare ONNX Runtime (CPU) with torch (CPU, fp32) on the same uint8 images; `tta`: the torch side with
    flip test-time augmentation, as a graph exported with it computes.

    Both run on CPU in fp32 because parity checks the graph, not GPU numerics (torch's CUDA path is bf16).
    A batch size that does not divide the image count exercises the dynamic batch dimension.

    Returns:
        {"images", "max_abs_diff", "atol", "argmax_mismatches", "passed", "provider", "batch_size"}.
    """
    session = create_session(onnx_path, "cpu")
    onnx_probs = predict_onnx(session, images, batch_size)
    torch_probs = predict_probs(model, images, "cpu", batch_size, tta=tta)
    max_diff = float(np.max(np.abs(onnx_probs.astype(np.float64) - torch_probs))) if len(images) else 0.0
    mismatches = int(np.sum(onnx_probs.argmax(axis=1) != torch_probs.argmax(axis=1)))
    return {"images": int(len(images)), "max_abs_diff": max_diff, "atol": float(atol),
            "argmax_mismatches": mismatches, "passed": bool(max_diff <= atol and mismatches == 0),
            "provider": session.get_providers()[0], "batch_size": batch_size, "tta": tta_name(tta)}


def _checked_cache(cache_dir: Path, meta: CheckpointMeta | EnsembleRecord) -> Any:
    """The cache the model was trained on, with val images (parity and the INT8 check run on them)."""
    data = load_cache(cache_dir)
    if list(data.classes) != meta.classes or int(data.image_size) != meta.image_size:
        raise ValueError(f"cache {cache_dir} holds classes {data.classes} at {data.image_size} px but the checkpoint "
                         f"predicts {meta.classes} at {meta.image_size} px; use the cache it was trained on")
    val = data.splits.get("val")
    if val is None or len(val.labels) == 0:
        raise ValueError(f"cache {cache_dir} has no val images: parity is checked on real validation images")
    return data


def _int8(fp32_path: Path, out_dir: Path, data: Any, cfg: Config) -> dict[str, Any]:
    """model.int8.onnx (when it passes its check) and int8.json beside the FP32 model; the summary for parity.json.

    Runs before model.onnx reaches its final name, so a folder holding model.onnx never lacks the INT8 decision.
    """
    int8_path = out_dir / INT8_ONNX_NAME
    if not cfg.export.int8:
        int8_path.unlink(missing_ok=True)  # a leftover of an earlier, interrupted attempt with INT8 on
        (out_dir / INT8_REPORT_NAME).unlink(missing_ok=True)
        return {"shipped": False, "onnx": None, "reason": "export.int8=false"}
    train, val = data.splits.get("train"), data.splits["val"]
    calibration_pool = train.images if train is not None else val.images[:0]  # none: reported, not shipped
    report = build_int8(fp32_path, int8_path, calibration_pool, np.asarray(val.images), np.asarray(val.labels),
                        list(data.classes), cfg)
    if not report["shipped"]:
        int8_path.unlink(missing_ok=True)
        _logger.warning("%s: %s (FP32 model.onnx is shipped)", out_dir, report["reason"])
    else:
        check = report["check"]
        _logger.info("%s: INT8 model shipped: arg-max agreement %.4f, |Δ macro AUC| %.4f on %d val images",
                     out_dir, check["argmax_agreement"], check["auc_diff"], check["images"])
    atomic_write_text(out_dir / INT8_REPORT_NAME, json.dumps(report, indent=2) + "\n")
    return {key: report[key] for key in ("shipped", "onnx", "reason")}


def _export_tta(cfg: Config, metrics_path: Path | None) -> bool:
    """evaluate.tta, refused when the evaluation whose metrics go into the metadata (and that the gate passed)
    predicted otherwise: the exported graph must compute what was evaluated. Older metrics.json: "none"."""
    tta = cfg.evaluate.tta
    if metrics_path is not None:
        evaluated = read_metrics(metrics_path).tta or "none"
        if evaluated != tta_name(tta):
            raise ValueError(f"{metrics_path} was evaluated with test-time augmentation {evaluated!r} but "
                             f"evaluate.tta={str(tta).lower()} would export {tta_name(tta)!r}: the exported model "
                             f"must compute what was evaluated; set evaluate.tta={str(evaluated == 'hflip').lower()} "
                             "or evaluate again")
    return tta


def export_onnx(checkpoint: str | Path, cache_dir: str | Path, cfg: Config, out_path: str | Path,
                metrics_path: str | Path | None = None, version: str | None = None) -> Path:
    """Export a checkpoint to ONNX (probabilities out, metadata in) after checking it against torch.

    Also writes `parity.json` beside `out_path`, and with export.int8 the INT8 copy `model.int8.onnx` (only when
    it passes its check against FP32, medpipe.quantize) and its report `int8.json`.

    Args:
        checkpoint: best.pt written by `medpipe.train`, or an ensemble.json (`medpipe.ensemble`): one graph
            holding every member and the mean.
        cache_dir: the cache the model was trained on (parity uses its val images).
        cfg: the config (export.opset, export.parity_atol, export.parity_images, export.int8*, evaluate.tta).
        out_path: the .onnx file to write (replaced atomically).
        metrics_path: the model's metrics.json; its val summary goes into the metadata.
        version: the model version stored in the metadata (default "unversioned").

    Returns:
        out_path.

    Raises:
        ParityError: max |Δ| above export.parity_atol or a different argmax; nothing is written.
        ValueError: evaluate.tta differs from the tta of `metrics_path`'s evaluation.
    """
    version = version or "unversioned"
    if not _VERSION.fullmatch(version) or ".." in version:
        raise ValueError(f"version {version!r}: use 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter "
                         "or digit")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    metrics_path = Path(metrics_path) if metrics_path else None
    tta = _export_tta(cfg, metrics_path)
    model, meta = load_model(checkpoint, "cpu")
    data = _checked_cache(Path(cache_dir), meta)
    images = np.asarray(data.splits["val"].images[:max(1, cfg.export.parity_images)])
    meta_view = meta if isinstance(meta, Mapping) else meta.to_dict()  # an EnsembleRecord is not a Mapping
    metadata = model_metadata(model, meta_view, version, _metrics_summary(metrics_path), tta)
    # The model appears at out_path only after it passed the checker and parity; a failure removes the temp.
    with atomic_output(out_path) as tmp:
        export_module(model, tmp, meta.image_size, metadata, cfg.export.opset, tta)
        parity = check_parity(tmp, model, images, cfg.export.parity_atol, tta=tta)
        if not parity["passed"]:
            raise ParityError(
                f"refusing to export {checkpoint}: ONNX Runtime vs torch on {parity['images']} validation images "
                f"gives max |Δ probability| = {parity['max_abs_diff']:.3g} (allowed: export.parity_atol = "
                f"{parity['atol']:.3g}) and {parity['argmax_mismatches']} different predicted classes (allowed: 0)")
        parity.update({"onnx": out_path.name, "model_name": meta.model_name, "version": version,
                       "checkpoint": Path(checkpoint).name, "split": "val",
                       "int8": _int8(tmp, out_path.parent, data, cfg)})
        atomic_write_text(out_path.parent / PARITY_NAME, json.dumps(parity, indent=2) + "\n")
    _logger.info("exported %s (%s, version %s): parity max |Δ| %.2g on %d images", out_path, meta.model_name,
                 version, parity["max_abs_diff"], parity["images"])
    return out_path
