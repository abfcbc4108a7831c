"""Config sections of training and evaluation: augment, train, models, evaluate (composed into medpipe.config.Config).

Kept apart from the data sections and the loader so each file stays one screenful of settings; import them from
medpipe.config like every other section. Every number has its range here (medpipe.config_types).
"""

from __future__ import annotations

from dataclasses import field
from typing import Annotated, Literal

from pydantic import Field
from pydantic.dataclasses import dataclass

from medpipe.config_types import (STRICT, ClassWeights, Count, CountOrOff, Float, Fraction, Int, NonNegativeFloat,
                                  PositiveFloat, Probability)

__all__ = ["AugmentConfig", "TrainConfig", "CustomCnnConfig", "ResnetConfig", "ModelsConfig", "EvaluateConfig",
           "MODEL_NAMES"]

MODEL_NAMES = ("custom_cnn", "resnet18")

AreaFraction = Annotated[Float, Field(gt=0, le=1)]  # a crop keeps some of the image and at most all of it


@dataclass(kw_only=True, config=STRICT)
class AugmentConfig:
    enabled: bool = True
    rotation_degrees: Annotated[Float, Field(ge=0, le=180)] = 30.0  # angle drawn from [-d, d]; 180 = any angle
    crop_scale: tuple[AreaFraction, AreaFraction] = (0.7, 1.0)  # random resized crop: area fraction, low <= high
    crop_ratio: tuple[PositiveFloat, PositiveFloat] = (0.7, 1.3)  # random resized crop: aspect ratio, low <= high
    hflip_p: Probability = 0.5
    brightness: Fraction = 0.3  # factor drawn from [1 - b, 1 + b]; b = 1 could black an image out
    contrast: Fraction = 0.3  # as brightness
    erasing_p: Probability = 0.3
    mixup_alpha: NonNegativeFloat = 0.3  # Beta(alpha, alpha) mixing weights; 0 disables mixup

    def __post_init__(self) -> None:
        for name in ("crop_scale", "crop_ratio"):
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"augment.{name}={[low, high]}: the range must be [low, high] with low <= high")


@dataclass(kw_only=True, config=STRICT)
class TrainConfig:
    epochs: Count = 50
    batch_size: Count = 32  # the global batch: under torchrun each of N ranks trains on batch_size / N of it
    optimizer: Literal["adamw"] = "adamw"
    lr: PositiveFloat = 1e-3
    weight_decay: NonNegativeFloat = 2e-4
    scheduler: Literal["cosine", "none"] = "cosine"
    # Early stopping: epochs without improvement of `monitor`; at least 1 (set it >= epochs to never stop early).
    patience: Count = 10
    monitor: Literal["macro_auc", "balanced_accuracy", "f1_macro", "f1_weighted", "accuracy", "loss"] = "macro_auc"
    # Guard on the best epoch (medpipe/selection.py): an epoch whose val balanced accuracy does not exceed chance
    # (1 / classes present in val) + this margin is collapsed and cannot become best.pt while another epoch
    # qualifies; if none does, best.pt is the best by `monitor`, marked collapsed, and the gate refuses it.
    # 0 = require only better than chance.
    min_balanced_accuracy_margin: Fraction = 0.05
    label_smoothing: Fraction = 0.1
    # One weight >= 0 per class (data.classes order), "auto" (inverse class frequency, mean 1) or "none".
    class_weights: ClassWeights = field(default_factory=lambda: [0.1, 3.0, 4.0])
    weighted_sampling: bool = True  # draw batches with probability inverse to class frequency
    # Decide under equal class priors whatever sampling x class weights taught: evaluated/exported logits get
    # log(uniform / training prior) added (post-hoc logit adjustment, Menon et al. 2021); 0 with sampling alone.
    balanced_decision: bool = True
    seed: Annotated[Int, Field(ge=0, le=2**64 - 1)] = 42  # the range torch.manual_seed and numpy both take
    # "auto": a GPU when torch sees one, leased per task so concurrent tasks on one host get different GPUs
    # (medpipe/device_lease.py), else the CPU; "cuda": the same, but an error without a GPU; "cuda:N": exactly
    # that visible GPU (no lease: the operator's choice); "cpu".
    device: Annotated[str, Field(pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$")] = "auto"
    eval_batch_size: Count = 256
    # Exponential moving average of the weights (torch.optim.swa_utils), updated every step; validation, best.pt
    # and export use the averaged weights. 0 = off (the original classifier had none). With a small val split the
    # raw weights' val metric jumps between epochs, and selecting the best epoch picks a lucky spike; the
    # average moves smoothly. Typical: 0.99-0.999 (horizon ~ 1 / (1 - decay) steps).
    ema_decay: Fraction = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.class_weights, list) and not sum(self.class_weights) > 0:
            raise ValueError(f"train.class_weights={self.class_weights}: at least one weight must be positive "
                             "(all zero leave no loss to learn from); or use 'auto' or 'none'")


@dataclass(kw_only=True, config=STRICT)
class CustomCnnConfig:
    # The conv blocks' output channels, one block each (each halves the resolution).
    channels: Annotated[list[Count], Field(min_length=1)] = field(default_factory=lambda: [32, 64, 128, 256])
    dropout: Fraction = 0.5  # before the head's first layer (half of it before the second)


@dataclass(kw_only=True, config=STRICT)
class ResnetConfig:
    # imagenet: torchvision's weights (download or TORCH_HOME); none: random init; otherwise a path to a .pth.
    weights: str = "imagenet"
    dropout: Fraction = 0.5
    head_lr: PositiveFloat = 1e-3
    backbone_lr: PositiveFloat = 1e-4
    # Progressive unfreezing: head only first, then layer4, layer3, ... one more every N epochs (0 = all at once).
    unfreeze_every: CountOrOff = 5


@dataclass(kw_only=True, config=STRICT)
class ModelsConfig:
    names: list[Literal["custom_cnn", "resnet18"]] = field(default_factory=lambda: list(MODEL_NAMES))
    custom_cnn: CustomCnnConfig = field(default_factory=CustomCnnConfig)
    resnet18: ResnetConfig = field(default_factory=ResnetConfig)


@dataclass(kw_only=True, config=STRICT)
class EvaluateConfig:
    splits: list[Literal["val", "test"]] = field(default_factory=lambda: ["val", "test"])  # missing ones skipped
    select_split: Literal["val", "test"] = "val"  # the split the comparison summary ranks models on
    # Patient-level bootstrap: 95 % intervals of macro AUC and balanced accuracy in metrics.json, the model card and
    # the summary (medpipe/evaluate/uncertainty.py). 0 = off.
    bootstrap_resamples: CountOrOff = 1000
    # Grad-CAM grid per split (plots/<split>_gradcam.png, in the model card): for each true class this many most
    # confident right calls and as many worst misses, with where the model found its evidence. 0 = off.
    explain_per_class: Int = 2
    # Score each split again with everything outside the largest bright region blacked out (on a mammogram: film
    # labels, markers, borders) and report the paired difference (medpipe/evaluate/reliance.py).
    outside_region_check: bool = True
    # Flip test-time augmentation: the mean of the softmax over the image and its horizontal mirror, in evaluation
    # and inside the exported ONNX graph (so scoring does the same). Grad-CAM and training's validation see the
    # image as it is.
    tta: bool = False
    # With two or more models: the mean of their probabilities as one more candidate, "ensemble" (the `ensemble`
    # stage: metrics, card, summary row, a gate challenger, exported as one ONNX graph; medpipe/ensemble.py).
    ensemble: bool = True

    def __post_init__(self) -> None:
        if not 0 <= self.explain_per_class <= 8:
            raise ValueError(f"evaluate.explain_per_class must be in 0..8 (0 = no Grad-CAM plot), "
                             f"got {self.explain_per_class}")
