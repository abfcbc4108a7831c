"""The two competing models: a small custom CNN and a ResNet-18 transfer model.

Contract shared by training, evaluation and ONNX export: input is float32 (N, 1, H, W) holding raw pixel values
0..255; each model normalises inside (mean/std buffers saved in its state dict), so the exported ONNX file needs
nothing but the shared preprocessing in front of it. Output is logits (N, C).
"""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path

import torch
from torch import nn

from medpipe.config import Config

__all__ = ["build_model", "check_pretrained_weights", "load_model_state", "LogitOffset", "Normalize", "CustomCNN",
           "ResNet18Classifier", "unfreeze_for_epoch", "param_groups"]

_logger = logging.getLogger(__name__)

_RESNET18_FILE = "resnet18-f37072fd.pth"  # torchvision's ResNet18_Weights.IMAGENET1K_V1 file name


class Normalize(nn.Module):
    """(x - mean) / std on raw 0..255 pixels; mean and std are set from the training data before training."""

    def __init__(self, mean: float = 127.5, std: float = 64.0) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(float(mean)))
        self.register_buffer("std", torch.tensor(float(std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class LogitOffset(nn.Module):
    """Adds a fixed per-class offset to the logits in eval mode only (validation, evaluation, export).

    Training must see the raw logits: with the offset in the loss, the network would simply learn it away.
    Zeros (no change) unless training sets it; see `train.balanced_decision`.
    """

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.register_buffer("offset", torch.zeros(num_classes))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.training else logits + self.offset


def load_model_state(model: nn.Module, state: dict) -> None:
    """load_state_dict, accepting checkpoints written before the logit offset existed (they get zeros)."""
    current = model.state_dict()
    state = dict(state)
    for key in current:
        if key.endswith("logit_offset.offset") and key not in state:
            state[key] = torch.zeros_like(current[key])
    model.load_state_dict(state)


class CustomCNN(nn.Module):
    """Four conv blocks (conv-BN-ReLU-maxpool), global average pooling, dropout and a two-layer head."""

    def __init__(self, num_classes: int, channels: list[int], dropout: float) -> None:
        super().__init__()
        self.normalize = Normalize()
        blocks: list[nn.Module] = []
        in_ch = 1
        for out_ch in channels:
            blocks += [nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=False), nn.BatchNorm2d(out_ch),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            in_ch = out_ch
        self.features = nn.Sequential(*blocks)
        # Global pooling keeps the head independent of the input size (the same weights serve 64 or 224 px).
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(in_ch, 128), nn.ReLU(inplace=True),
                                  nn.Dropout(dropout / 2), nn.Linear(128, num_classes))
        self.logit_offset = LogitOffset(num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit_offset(self.head(self.pool(self.features(self.normalize(x)))))


class ResNet18Classifier(nn.Module):
    """torchvision ResNet-18 on single-channel input with a dropout + linear head."""

    BACKBONE_STAGES = ("layer4", "layer3", "layer2", "layer1", "stem")  # unfreezing order, top first

    def __init__(self, num_classes: int, dropout: float, weights: str) -> None:
        super().__init__()
        from torchvision.models import resnet18

        self.normalize = Normalize()
        net = resnet18(weights=None)
        self.pretrained = weights != "none"
        if self.pretrained:
            net.load_state_dict(_load_resnet18_state(weights))
        # Grayscale input: sum the RGB filters of conv1 into one channel, which keeps the pretrained response to
        # a gray image exactly (timm's adapt_input_conv does the same).
        conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        with torch.no_grad():
            conv1.weight.copy_(net.conv1.weight.sum(dim=1, keepdim=True))
        net.conv1 = conv1
        in_features = net.fc.in_features
        net.fc = nn.Identity()
        self.backbone = net
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes))
        self.logit_offset = LogitOffset(num_classes)

    def stage_modules(self, stage: str) -> list[nn.Module]:
        if stage == "stem":
            return [self.backbone.conv1, self.backbone.bn1]
        return [getattr(self.backbone, stage)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit_offset(self.head(self.backbone(self.normalize(x))))


_DOWNLOAD_TIMEOUT_S = 60  # per socket operation while fetching ImageNet weights


def _load_resnet18_state(weights: str) -> dict:
    if weights == "imagenet":
        from torchvision.models import ResNet18_Weights

        previous = socket.getdefaulttimeout()
        # torch.hub opens the URL without a timeout; a server that accepts and never answers must not hang the run.
        socket.setdefaulttimeout(_DOWNLOAD_TIMEOUT_S)
        try:
            return ResNet18_Weights.IMAGENET1K_V1.get_state_dict(progress=False)
        except Exception as exc:  # URLError, SSL errors, proxies: all mean "could not download"
            hub_dir = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch")) / "hub" / "checkpoints"
            raise RuntimeError(
                f"models.resnet18.weights=imagenet: could not download the ImageNet weights ({exc.__class__.__name__}: "
                f"{exc}). Place the file {_RESNET18_FILE} (from {ResNet18_Weights.IMAGENET1K_V1.url}) at "
                f"{hub_dir / _RESNET18_FILE} (set TORCH_HOME to change the folder), or pass a file with "
                f"--set models.resnet18.weights=/path/to/{_RESNET18_FILE}, or train from scratch with "
                f"--set models.resnet18.weights=none"
            ) from None
        finally:
            socket.setdefaulttimeout(previous)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"models.resnet18.weights={weights!r}: expected 'imagenet', 'none' or an existing "
                                f".pth file with torchvision ResNet-18 weights; {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if "conv1.weight" not in state or "fc.weight" not in state:
        raise ValueError(f"{path}: not a torchvision ResNet-18 state dict (missing conv1.weight / fc.weight)")
    return state


def check_pretrained_weights(cfg: Config) -> None:
    """Load the configured pretrained weights once, before anything else runs, so that a missing file or an
    offline machine stops `medpipe run` in seconds, not after the first model has trained for an hour.

    Raises:
        RuntimeError / FileNotFoundError / ValueError: as building the model would, naming what to do.
    """
    if "resnet18" in cfg.models.names and cfg.models.resnet18.weights != "none":
        _load_resnet18_state(cfg.models.resnet18.weights)


def build_model(name: str, cfg: Config, num_classes: int) -> nn.Module:
    """Build `custom_cnn` or `resnet18` as configured in cfg.models."""
    if name == "custom_cnn":
        return CustomCNN(num_classes, cfg.models.custom_cnn.channels, cfg.models.custom_cnn.dropout)
    if name == "resnet18":
        rc = cfg.models.resnet18
        return ResNet18Classifier(num_classes, rc.dropout, rc.weights)
    raise ValueError(f"Invalid model {name!r}. Only custom_cnn and resnet18 are supported.")


def unfreeze_for_epoch(model: nn.Module, epoch: int, every: int) -> list[str]:
    """Progressive unfreezing for the ResNet: head only, then layer4, layer3, ... one more stage every `every` epochs.

    Only meaningful with pretrained weights; a randomly initialised backbone is trained whole from the start
    (freezing random filters teaches nothing). Returns the names of the trainable backbone stages.
    """
    if not isinstance(model, ResNet18Classifier):
        return []
    stages = list(ResNet18Classifier.BACKBONE_STAGES)
    n_open = len(stages) if (not model.pretrained or every <= 0) else min(len(stages), epoch // every)
    for index, stage in enumerate(stages):
        for module in model.stage_modules(stage):
            for param in module.parameters():
                param.requires_grad_(index < n_open)
    return stages[:n_open]


def param_groups(model: nn.Module, cfg: Config) -> list[dict]:
    """Optimizer groups: the ResNet backbone gets backbone_lr and its head head_lr; the custom CNN one lr.

    Frozen parameters stay in the groups (AdamW skips tensors without gradients), so unfreezing later needs no
    new optimizer and the cosine schedule continues unchanged.
    """
    if isinstance(model, ResNet18Classifier):
        rc = cfg.models.resnet18
        # A lower backbone lr protects pretrained features; random features have nothing to protect.
        backbone_lr = rc.backbone_lr if model.pretrained else rc.head_lr
        return [{"params": list(model.backbone.parameters()), "lr": backbone_lr, "name": "backbone"},
                {"params": list(model.head.parameters()), "lr": rc.head_lr, "name": "head"}]
    return [{"params": list(model.parameters()), "lr": cfg.train.lr, "name": "all"}]
