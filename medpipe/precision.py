"""Which exported model scores: FP32 (model.onnx) or the INT8 copy (model.int8.onnx, medpipe.quantize).

The rule (score.precision, or `medpipe score --precision`), shared by `medpipe score`, the scoring DAG and the
inbox: `auto` scores with FP32 where the graph runs on CUDA (INT8 kernels there are no faster, and FP32 is the
model that was evaluated) and with INT8 on CPU, where integer kernels run several times faster. A version exported
without INT8 (export.int8=false, or a model that failed its check) falls back to FP32 under `auto`, with a
message; an explicit `int8` is then an error. A local .onnx file named by the caller is scored as it is; its
precision (read from its metadata) must not contradict an explicit setting.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medpipe.onnx_runtime import CPU_PROVIDER, choose_providers, read_file_metadata
from medpipe.registry import INT8_MODEL_FILE, MODEL_FILE, MissingFileError, resolve_model
from medpipe.store import Store, sha256_file

__all__ = ["PrecisionError", "file_precision", "wanted_precision", "resolve_for_scoring"]

_logger = logging.getLogger(__name__)


class PrecisionError(ValueError):
    """The precision asked for cannot be served (no INT8 model, or a named file of the other precision)."""


def file_precision(metadata: dict[str, str]) -> str:
    """"int8" for a model quantized by medpipe (its metadata holds `quantization`), else "fp32"."""
    return "int8" if metadata.get("quantization") else "fp32"


def wanted_precision(precision: str, provider: str) -> tuple[str, str]:
    """(precision, why) for score.precision and score.provider: auto -> FP32 on CUDA, INT8 on CPU."""
    if precision not in ("auto", "fp32", "int8"):
        raise ValueError(f"score.precision={precision!r}: allowed values are auto, fp32, int8")
    if precision != "auto":
        return precision, f"score.precision={precision}"
    runs_on = choose_providers(provider)[0]
    return ("int8" if runs_on == CPU_PROVIDER else "fp32"), f"score.precision=auto on {runs_on}"


def _local(path: Path, precision: str, want: str, why: str) -> tuple[Path, dict[str, Any]]:
    """A local file (as is) or a release folder (its model.int8.onnx or model.onnx by the rule)."""
    if path.is_dir():
        int8 = path / INT8_MODEL_FILE
        if want == "int8" and int8.is_file():
            path = int8
        elif want == "int8" and precision == "int8":
            raise PrecisionError(f"score.precision=int8 but {path} holds no {INT8_MODEL_FILE} (exported with "
                                 "export.int8=false, or the INT8 model failed its check: see int8.json there); "
                                 "use score.precision=fp32 or auto")
        else:
            if want == "int8":
                why += f"; {path} holds no {INT8_MODEL_FILE}, scoring with FP32 {MODEL_FILE}"
                _logger.warning("%s", why)
            path = path / MODEL_FILE
    else:
        actual = file_precision(read_file_metadata(path))
        if precision != "auto" and actual != precision:
            raise PrecisionError(f"score.precision={precision} but {path} is an {actual.upper()} model; name the "
                                 f"{precision.upper()} file (or its release folder), or use score.precision=auto")
        why = f"the named file {path.name} ({actual.upper()})"
    return path, {"source": "local", "path": str(path), "sha256": sha256_file(path), "precision_reason": why}


def resolve_for_scoring(model_ref: str | Path, store: Store | None, dest_dir: Path, precision: str,
                        provider: str) -> tuple[Path, dict[str, Any]]:
    """The model file to score with, downloaded and sha256-verified when it comes from the store.

    Args:
        model_ref: a local .onnx file, a release folder (holding model.onnx), or a registry ref ("champion",
            "VERSION", "MODEL/VERSION").
        store: the model store (only used for registry refs; None then is an error).
        dest_dir: where registry downloads land.
        precision: score.precision (auto | fp32 | int8).
        provider: score.provider (what auto decides on).

    Returns:
        (path, info): info as `medpipe.registry.resolve_model` returns it (or {"source": "local", ...}), plus
        "precision_reason" (how the file was chosen, including an auto fallback to FP32).

    Raises:
        PrecisionError: int8 asked for explicitly and the version or folder has none, or a named file of the
            other precision.
    """
    want, why = wanted_precision(precision, provider)
    path = Path(model_ref)
    if path.is_dir() and (path / MODEL_FILE).is_file() or path.is_file():
        return _local(path, precision, want, why)
    if str(model_ref).endswith(".onnx"):
        raise FileNotFoundError(f"model file {model_ref} does not exist")
    if store is None:
        raise ValueError(f"model {model_ref!r} is a registry reference but no store was given")
    if want == "int8":
        try:
            onnx_path, info = resolve_model(store, str(model_ref), dest_dir, INT8_MODEL_FILE)
            return onnx_path, {**info, "precision_reason": why}
        except MissingFileError as exc:
            if precision == "int8":
                raise PrecisionError(f"score.precision=int8 but {exc}; use score.precision=fp32 or auto") from None
            why += f"; {exc}: scoring with FP32 {MODEL_FILE}"
            _logger.warning("%s", why)
    onnx_path, info = resolve_model(store, str(model_ref), dest_dir)
    return onnx_path, {**info, "precision_reason": why}
