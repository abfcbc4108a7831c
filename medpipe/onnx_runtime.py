"""ONNX Runtime for medpipe models: provider choice, session creation, metadata, batched prediction.

Shared by export (parity), gate (re-scoring the champion) and score. The package is onnxruntime-gpu, which on a
machine without a GPU still lists CUDA/TensorRT providers and silently falls back to CPU when asked for CUDA;
so providers are chosen explicitly (CUDA only when torch sees a GPU) and callers report the provider that
actually runs, `session.get_providers()[0]`.

The metadata keys written by `medpipe.export` and read back here are the contract of a medpipe ONNX file.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medpipe.priors import PRIOR_META_KEYS, read_prior_correction

if TYPE_CHECKING:  # onnxruntime is imported inside functions: it pulls CUDA libraries in at import time
    import onnxruntime

__all__ = [
    "CPU_PROVIDER",
    "CUDA_PROVIDER",
    "META_KEYS",
    "OnnxModelInfo",
    "choose_providers",
    "create_session",
    "active_provider",
    "read_model_info",
    "read_file_metadata",
    "predict_onnx",
    "metadata_as_json",
]

_logger = logging.getLogger(__name__)

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
# metadata_props of a medpipe ONNX file; values are strings (JSON where structured).
META_KEYS = {
    "classes": "class names in output order (JSON list)",
    "input_size": "image height = width in pixels",
    "input_channels": "channels of the input tensor (1)",
    "input": "what the input tensor holds",
    "normalization": "mean/std applied inside the graph (JSON)",
    "output": "'probabilities' (softmax inside the graph)",
    "tta": "test-time augmentation inside the graph: 'hflip' (mean softmax over the image and its mirror) or 'none'",
    "model_name": "custom_cnn | resnet18 | ensemble",
    "version": "the model version",
    "manifest_hash": "hash of the training data manifest",
    "preprocess_version": "medpipe.preprocess.preprocess_id the model was trained with (version + options)",
    "metrics": "validation metrics summary (JSON)",
    "members": "an ensemble's members: [{model, checkpoint_sha256}] (JSON); absent for a single model",
    "combine": "how an ensemble combines its members (the mean of their probabilities); absent for a single model",
    "quantization": "how an INT8 copy was quantized (medpipe.quantize); absent for the FP32 model",
    **PRIOR_META_KEYS,
}
_REQUIRED = ("classes", "input_size", "input_channels", "output")


@dataclass
class OnnxModelInfo:
    """What a scorer needs to know about a medpipe ONNX file, read from its metadata."""

    classes: list[str]
    input_size: int
    input_channels: int
    output: str
    model_name: str | None = None
    version: str | None = None
    preprocess_version: str | None = None
    manifest_hash: str | None = None
    prior_correction: list[float] | None = None  # None: the model predates prior correction
    tta: str = "none"  # "hflip": the graph averages over the image and its mirror; models before the key: "none"
    precision: str = "fp32"  # "int8": a quantized copy (metadata key `quantization`)
    metadata: dict[str, str] = field(default_factory=dict)


def choose_providers(provider: str = "auto") -> list[str]:
    """Execution providers for a session, in priority order.

    Args:
        provider: "auto" (CUDA when torch sees a GPU and ONNX Runtime has the CUDA provider, else CPU),
            "cpu", or "cuda" (an error when no GPU is usable).

    Returns:
        e.g. ["CUDAExecutionProvider", "CPUExecutionProvider"] or ["CPUExecutionProvider"].
    """
    if provider not in ("auto", "cpu", "cuda"):
        raise ValueError(f"Invalid provider {provider!r}. Only auto, cpu and cuda are supported.")
    if provider == "cpu":
        return [CPU_PROVIDER]
    # torch first: importing it loads the CUDA libraries from its wheels, which onnxruntime-gpu then finds.
    import torch

    import onnxruntime as ort

    gpu = torch.cuda.is_available()
    has_cuda_ep = CUDA_PROVIDER in ort.get_available_providers()
    if gpu and has_cuda_ep:
        if hasattr(ort, "preload_dlls"):  # covers a process that imported onnxruntime before torch
            ort.preload_dlls()
        return [CUDA_PROVIDER, CPU_PROVIDER]
    if provider == "cuda":
        why = "torch sees no CUDA GPU" if not gpu else f"this onnxruntime has no {CUDA_PROVIDER}"
        raise RuntimeError(f"score.provider=cuda but {why}; use score.provider=auto or cpu")
    if gpu:
        _logger.warning("a GPU is present but onnxruntime offers only %s: running on CPU",
                        ort.get_available_providers())
    return [CPU_PROVIDER]


def create_session(onnx_path: str | Path, provider: str = "auto",
                   intra_op_threads: int = 0) -> "onnxruntime.InferenceSession":
    """An InferenceSession with full graph optimisation on the chosen providers.

    Args:
        onnx_path: the .onnx file.
        provider: see `choose_providers`.
        intra_op_threads: threads per operator; 0 lets ONNX Runtime use one per physical core.
    """
    providers = choose_providers(provider)
    import onnxruntime as ort

    path = Path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {path} does not exist")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = int(intra_op_threads)
    # Threads spin-waiting between runs would steal the cores that decode the next batch.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types; all mean "unusable file"
        raise ValueError(f"ONNX Runtime cannot load {path}: {exc}") from exc
    if session.get_providers()[0] != providers[0]:
        _logger.warning("asked for %s, ONNX Runtime runs %s", providers[0], session.get_providers()[0])
    return session


def active_provider(session: "onnxruntime.InferenceSession") -> str:
    """The provider that actually runs the graph (ONNX Runtime falls back silently)."""
    return session.get_providers()[0]


def read_model_info(session: "onnxruntime.InferenceSession", source: str | Path = "<session>") -> OnnxModelInfo:
    """Read and check the medpipe metadata of a loaded model.

    Raises:
        ValueError: naming the file and the missing or malformed key.
    """
    meta = dict(session.get_modelmeta().custom_metadata_map)
    missing = [k for k in _REQUIRED if k not in meta]
    if missing:
        raise ValueError(f"{source} is not a medpipe ONNX model: metadata lacks {missing} "
                         f"(expected keys: {sorted(META_KEYS)})")
    try:
        classes = json.loads(meta["classes"])
        size, channels = int(meta["input_size"]), int(meta["input_channels"])
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{source}: malformed medpipe metadata ({exc}): classes={meta['classes']!r}, "
                         f"input_size={meta['input_size']!r}, input_channels={meta['input_channels']!r}") from None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes) or len(classes) < 2:
        raise ValueError(f"{source}: metadata 'classes' must be a JSON list of >= 2 names, got {meta['classes']!r}")
    if meta["output"] != "probabilities":
        raise ValueError(f"{source}: metadata output={meta['output']!r}; medpipe scores models whose output is "
                         "'probabilities' (softmax inside the graph)")
    if channels != 1:
        raise ValueError(f"{source}: input_channels={channels}; medpipe preprocessing yields 1 channel")
    factors = read_prior_correction(meta, len(classes), f"{source}: metadata")
    return OnnxModelInfo(classes=classes, input_size=size, input_channels=channels, output=meta["output"],
                         model_name=meta.get("model_name"), version=meta.get("version"),
                         preprocess_version=meta.get("preprocess_version"),
                         manifest_hash=meta.get("manifest_hash"), prior_correction=factors,
                         tta=meta.get("tta") or "none", precision="int8" if meta.get("quantization") else "fp32",
                         metadata=meta)


def read_file_metadata(onnx_path: str | Path) -> dict[str, str]:
    """The metadata_props of an ONNX file as a dict, read without building an inference session.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable ONNX model (naming it).
    """
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(onnx_path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {path} does not exist")
    try:
        # Weights stored beside the file are not needed for the metadata; medpipe exports embed them anyway.
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, OSError) as exc:
        raise ValueError(f"{path} is not a readable ONNX model: {exc}") from exc
    return {entry.key: entry.value for entry in proto.metadata_props}


def predict_onnx(session: "onnxruntime.InferenceSession", images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Probabilities of a medpipe ONNX model on (N, H, W) uint8 images, the arrays `load_image` returns.

    Returns:
        (N, C) float32.
    """
    images = np.asarray(images)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be a (N, H, W) uint8 array, got shape {images.shape} dtype {images.dtype}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    input_name = session.get_inputs()[0].name
    outputs: list[np.ndarray] = []
    for start in range(0, images.shape[0], batch_size):
        # The model takes raw 0..255 values as float32 (N, 1, H, W); normalisation is inside the graph.
        batch = images[start:start + batch_size, None].astype(np.float32)
        outputs.append(session.run(None, {input_name: batch})[0])
    if not outputs:
        width = session.get_outputs()[0].shape[-1]
        return np.zeros((0, width if isinstance(width, int) else 0), dtype=np.float32)
    return np.concatenate(outputs).astype(np.float32, copy=False)


def metadata_as_json(value: Any) -> str:
    """JSON for a metadata value, compact and stable (sorted keys)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
