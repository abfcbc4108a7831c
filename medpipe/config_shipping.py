"""Config sections of the shipping stages: gate, export, store, score (composed into medpipe.config.Config).

Kept apart from the training sections so each file stays one screenful of settings; import them from
medpipe.config like every other section.
"""

from __future__ import annotations

from dataclasses import field
from typing import Literal

from pydantic import ConfigDict
from pydantic.dataclasses import dataclass

__all__ = ["GateConfig", "ExportConfig", "StoreConfig", "ScoreConfig"]

_STRICT = ConfigDict(extra="forbid", validate_assignment=True)  # as medpipe.config: unknown keys are errors


@dataclass(kw_only=True, config=_STRICT)
class GateConfig:
    primary_metric: str = "macro_auc"  # ranks the two models to pick the challenger
    split: Literal["val", "test"] = "val"
    # Absolute thresholds: metric name -> minimum. "recall_<class>" is per-class recall.
    min_metrics: dict[str, float] = field(
        default_factory=lambda: {"macro_auc": 0.80, "balanced_accuracy": 0.55, "recall_cancer": 0.40}
    )
    must_beat_baseline: bool = True  # balanced accuracy above the majority-class baseline's
    champion_tolerance: float = 0.01  # challenger may trail the re-scored champion by at most this much


@dataclass(kw_only=True, config=_STRICT)
class ExportConfig:
    opset: int = 20
    parity_atol: float = 1e-4  # max |probability difference| ONNX Runtime vs torch on real images
    parity_images: int = 64


@dataclass(kw_only=True, config=_STRICT)
class StoreConfig:
    uri: str = "./medpipe-store"  # a local directory, or s3://bucket/prefix
    endpoint_url: str | None = None  # MinIO or another S3-compatible server
    region: str | None = None
    max_attempts: int = 5  # botocore retries with exponential backoff
    multipart_threshold_mb: int = 64


@dataclass(kw_only=True, config=_STRICT)
class ScoreConfig:
    batch_size: int = 64
    decode_workers: int = 2  # threads decoding images while the previous batch runs
    provider: Literal["auto", "cpu", "cuda"] = "auto"
    intra_op_threads: int = 0  # ONNX Runtime threads per operator on CPU; 0 = one per physical core
    # Class prevalence the risk_<class> columns assume (data.classes order), e.g. a screening population's;
    # None = the training set's. Rescaled to sum 1.
    prevalence: list[float] | None = None

    def __post_init__(self) -> None:
        if self.prevalence is not None and (min(self.prevalence, default=-1) < 0 or not sum(self.prevalence) > 0):
            raise ValueError(f"score.prevalence must be non-negative numbers with a positive sum, one per class, "
                             f"got {self.prevalence}")
