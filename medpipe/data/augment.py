"""Batch augmentation on the device, with independent random parameters per image.

torchvision's v2 transforms draw ONE set of parameters per call, so a batch would share its rotation and crop;
drawing per-sample parameters and applying them as one affine grid_sample keeps augmentation a handful of
kernels per batch, on whatever device holds the data (architecture.md: data stays on the GPU).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from medpipe.config import AugmentConfig

__all__ = ["augment_batch", "mixup", "weighted_indices"]


def _uniform(n: int, low: float, high: float, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen, device=device) * (high - low) + low


def _affine_params(n: int, cfg: AugmentConfig, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Per-sample 2x3 matrices combining random resized crop, rotation and horizontal flip (normalised coords)."""
    area = _uniform(n, cfg.crop_scale[0], cfg.crop_scale[1], gen, device)
    log_ratio = _uniform(n, math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1]), gen, device)
    ratio = torch.exp(log_ratio)
    # Crop width/height as fractions of the image (clamped to the image, as RandomResizedCrop does).
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    tx = (torch.rand(n, generator=gen, device=device) * 2 - 1) * (1 - w)
    ty = (torch.rand(n, generator=gen, device=device) * 2 - 1) * (1 - h)
    angle = _uniform(n, -cfg.rotation_degrees, cfg.rotation_degrees, gen, device) * (math.pi / 180)
    flip = torch.where(torch.rand(n, generator=gen, device=device) < cfg.hflip_p, -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([
        torch.stack([w * cos * flip, -h * sin, tx], dim=1),
        torch.stack([w * sin * flip, h * cos, ty], dim=1),
    ], dim=1)
    return theta


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, gen: torch.Generator) -> torch.Tensor:
    """Augment a float batch (N, 1, H, W) of raw 0..255 pixels; returns a new tensor of the same shape.

    Geometric: random resized crop + rotation + horizontal flip (one grid_sample). Photometric: brightness and
    contrast factors. Random erasing: one rectangle per chosen image, filled with noise.
    """
    if not cfg.enabled:
        return x
    n, _, height, width = x.shape
    device = x.device
    theta = _affine_params(n, cfg, gen, device).to(x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if cfg.brightness > 0 or cfg.contrast > 0:
        b = _uniform(n, 1 - cfg.brightness, 1 + cfg.brightness, gen, device).view(n, 1, 1, 1)
        c = _uniform(n, 1 - cfg.contrast, 1 + cfg.contrast, gen, device).view(n, 1, 1, 1)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x * b - mean * b) * c + mean * b).clamp(0, 255)
    if cfg.erasing_p > 0:
        x = _random_erase(x, cfg.erasing_p, gen)
    return x


def _random_erase(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """RandomErasing (scale 0.02-0.33, ratio 0.3-3.3, as torchvision) as a per-image rectangular mask."""
    n, _, height, width = x.shape
    device = x.device
    area = _uniform(n, 0.02, 0.33, gen, device) * height * width
    ratio = torch.exp(_uniform(n, math.log(0.3), math.log(3.3), gen, device))
    eh = torch.sqrt(area * ratio).clamp(1, height)
    ew = torch.sqrt(area / ratio).clamp(1, width)
    y0 = torch.rand(n, generator=gen, device=device) * (height - eh)
    x0 = torch.rand(n, generator=gen, device=device) * (width - ew)
    rows = torch.arange(height, device=device).view(1, height, 1)
    cols = torch.arange(width, device=device).view(1, 1, width)
    inside = ((rows >= y0.view(n, 1, 1)) & (rows < (y0 + eh).view(n, 1, 1))
              & (cols >= x0.view(n, 1, 1)) & (cols < (x0 + ew).view(n, 1, 1)))
    chosen = (torch.rand(n, generator=gen, device=device) < p).view(n, 1, 1)
    mask = (inside & chosen).unsqueeze(1)
    # Like torchvision's RandomErasing(value="random"): standard-normal noise in normalised space, i.e. around
    # each image's own mean and spread; uniform 0..255 boxes would be brighter than any tissue and a shortcut.
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    std = x.std(dim=(1, 2, 3), keepdim=True)
    noise = (mean + std * torch.randn(x.shape, generator=gen, device=device, dtype=x.dtype)).clamp(0, 255)
    return torch.where(mask, noise, x)


def mixup(x: torch.Tensor, y_soft: torch.Tensor, alpha: float, gen: torch.Generator,
          rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup (Zhang et al. 2018): one lambda per batch from Beta(alpha, alpha), partner = a permutation.

    Lambda comes from a seeded numpy generator: it is one scalar per batch, and a host draw keeps CPU runs
    reproducible without a device sync.
    """
    if alpha <= 0:
        return x, y_soft
    lam = float(rng.beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=gen, device=x.device)
    return lam * x + (1 - lam) * x[perm], lam * y_soft + (1 - lam) * y_soft[perm]


def weighted_indices(weights: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """WeightedRandomSampler as one draw on the device: `n` indices with replacement, P(i) ∝ weights[i]."""
    return torch.multinomial(weights, n, replacement=True, generator=gen)
