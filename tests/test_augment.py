import numpy as np
import torch

from medpipe.config import load_config
from medpipe.data.augment import augment_batch, mixup, weighted_indices


def test_augmentation_is_per_sample_and_keeps_range():
    cfg = load_config().augment
    x = torch.rand(1, 1, 32, 32).repeat(8, 1, 1, 1) * 255
    out = augment_batch(x, cfg, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 255
    # Identical inputs must come out different: parameters are drawn per image.
    assert len({tuple(o.flatten()[:64].tolist()) for o in out}) == 8


def test_augmentation_is_seeded_and_can_be_disabled():
    cfg = load_config().augment
    x = torch.rand(4, 1, 32, 32) * 255
    a = augment_batch(x, cfg, torch.Generator().manual_seed(1))
    b = augment_batch(x, cfg, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    off = load_config(None, ["augment.enabled=false"]).augment
    assert torch.equal(augment_batch(x, off, torch.Generator()), x)


def test_mixup_mixes_images_and_labels_consistently():
    x = torch.stack([torch.zeros(1, 4, 4), torch.full((1, 4, 4), 100.0)])
    y = torch.eye(2)
    mx, my = mixup(x, y, 0.3, torch.Generator().manual_seed(0), np.random.default_rng(0))
    assert torch.allclose(my.sum(dim=1), torch.ones(2))
    assert torch.allclose(mx[:, 0, 0, 0] / 100, my[:, 1], atol=1e-6)


def test_weighted_draw_balances_classes():
    labels = np.array([0] * 90 + [1] * 9 + [2] * 1)
    counts = np.bincount(labels)
    weights = torch.tensor((1.0 / counts)[labels], dtype=torch.float32)
    drawn = labels[weighted_indices(weights, 30_000, torch.Generator().manual_seed(0)).numpy()]
    freq = np.bincount(drawn, minlength=3) / 30_000
    assert np.allclose(freq, 1 / 3, atol=0.02)
