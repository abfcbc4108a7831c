"""Config sections of the shipping stages: gate, export, store, score (composed into medpipe.config.Config).

Kept apart from the training sections so each file stays one screenful of settings; import them from
medpipe.config like every other section.
"""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Literal

from pydantic import Field
from pydantic.dataclasses import dataclass

from medpipe.config_types import STRICT, Count, CountOrOff, Float, Int, NonNegativeFloat, Probability

__all__ = ["GateConfig", "ExportConfig", "StoreConfig", "ScoreConfig"]

# Gate metrics that count images (medpipe.evaluate.metrics.flatten_metrics); every other one is a rate in [0, 1].
_COUNT_METRICS = ("n",)
_COUNT_METRIC_PREFIXES = ("support_",)


@dataclass(kw_only=True, config=STRICT)
class GateConfig:
    primary_metric: str = "macro_auc"  # ranks the two models to pick the challenger
    split: Literal["val", "test"] = "val"
    # Absolute thresholds: metric name -> minimum. "recall_<class>" is per-class recall. A rate's minimum is in
    # [0, 1]; only the counts n and support_<class> (images in the split, of a class) take larger minimums.
    min_metrics: dict[str, NonNegativeFloat] = field(
        default_factory=lambda: {"macro_auc": 0.80, "balanced_accuracy": 0.55, "recall_cancer": 0.40}
    )
    must_beat_baseline: bool = True  # balanced accuracy above the majority-class baseline's
    # Refuse a challenger whose best epoch never beat chance by train.min_balanced_accuracy_margin (a collapsed
    # model that calls almost everything one class). false only where a model must ship regardless (a demo).
    refuse_collapsed: bool = True
    # The challenger may trail the re-scored champion's primary metric (a rate) by at most this much; 1 = never.
    champion_tolerance: Annotated[Float, Field(ge=0, le=1)] = 0.01
    # The models the challenger may be picked from: empty = every model the run evaluated, the ensemble included.
    # A team that has decided to ship only the ensemble (or only one network) names it here, so a run never
    # promotes a model it would not deploy.
    candidates: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name, minimum in self.min_metrics.items():
            is_count = name in _COUNT_METRICS or name.startswith(_COUNT_METRIC_PREFIXES)
            if minimum > 1 and not is_count:
                raise ValueError(f"gate.min_metrics.{name}={minimum}: {name} is a rate, its minimum must be in "
                                 "[0, 1] (only the counts n and support_<class> go above 1)")


@dataclass(kw_only=True, config=STRICT)
class ExportConfig:
    # ONNX opset: 18 is the one torch's dynamo exporter writes (lower ones go through onnx's version converter,
    # which not every operator survives); 23 is the newest torch 2.14 supports (torch.onnx._constants
    # .ONNX_MAX_OPSET).
    opset: Annotated[Int, Field(ge=18, le=23)] = 20
    # Max |probability difference| ONNX Runtime vs torch on real images; 1 or more would pass anything.
    parity_atol: Annotated[Float, Field(gt=0, lt=1)] = 1e-4
    parity_images: Count = 64
    # A statically quantized INT8 copy (model.int8.onnx, medpipe.quantize) for CPU scoring; false: FP32 only.
    int8: bool = True
    # Training images the INT8 activation ranges are calibrated on (a seeded sample; all when there are fewer).
    int8_calibration_images: Annotated[Int, Field(ge=1, le=10_000)] = 256
    # INT8 ships only when, on every val image, its arg-max equals FP32's for at least this share of images and
    # its macro AUC is within int8_max_auc_diff of FP32's. 0.97: a 3-class model whose decision changes for more
    # than 3 images in 100 is a different model, not a faster one; 0.01 AUC is the champion tolerance the gate
    # already accepts between model versions (gate.champion_tolerance), so INT8 never costs more than that.
    int8_min_agreement: Probability = 0.97
    int8_max_auc_diff: Annotated[Float, Field(ge=0, le=1)] = 0.01


@dataclass(kw_only=True, config=STRICT)
class StoreConfig:
    uri: str = "./medpipe-store"  # a local directory, or s3://bucket/prefix
    endpoint_url: str | None = None  # MinIO or another S3-compatible server
    region: str | None = None
    max_attempts: Annotated[Int, Field(ge=1, le=20)] = 5  # botocore tries in all, exponential backoff between
    # Seconds to wait for a TCP connection, and for the server's next bytes once connected: an endpoint that
    # accepts and never answers fails after about read_timeout_s x max_attempts instead of hanging the task.
    connect_timeout_s: Annotated[Float, Field(gt=0, le=300)] = 10.0
    read_timeout_s: Annotated[Float, Field(gt=0, le=3600)] = 60.0
    # Files above this size are uploaded in parts of this size: S3 takes parts of 5 MiB to 5 GiB.
    multipart_threshold_mb: Annotated[Int, Field(ge=5, le=5 * 1024)] = 64


@dataclass(kw_only=True, config=STRICT)
class ScoreConfig:
    batch_size: Count = 64
    decode_workers: Count = 2  # threads decoding images while the previous batch runs
    provider: Literal["auto", "cpu", "cuda"] = "auto"
    # Which exported model scores: auto = FP32 on CUDA, INT8 on CPU (falling back to FP32, with a message, for a
    # version exported without INT8); fp32 / int8 = that one (int8 without an INT8 model is an error).
    precision: Literal["auto", "fp32", "int8"] = "auto"
    intra_op_threads: CountOrOff = 0  # ONNX Runtime threads per operator on CPU; 0 = one per physical core
    # Class prevalence the risk_<class> columns assume (data.classes order), e.g. a screening population's;
    # None = the training set's. Non-negative, rescaled to sum 1.
    prevalence: list[Float] | None = None
    # medpipe_inbox: fail a batch's task when it drifted from the training data (PSI over medpipe.drift's
    # threshold); off: the batch is flagged in its summary.json and the log, and the task succeeds.
    fail_on_drift: bool = False

    def __post_init__(self) -> None:
        if self.prevalence is not None and (min(self.prevalence, default=-1) < 0 or not sum(self.prevalence) > 0):
            raise ValueError(f"score.prevalence must be non-negative numbers with a positive sum, one per class, "
                             f"got {self.prevalence}")
