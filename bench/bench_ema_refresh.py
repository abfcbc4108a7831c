"""Cost of weight averaging's BatchNorm refresh (train.ema_decay > 0) against a training epoch.

After each epoch the averaged model's BatchNorm statistics are recomputed on up to 1,024 un-augmented training
images (medpipe.training_loop._refresh_ema_batchnorm). This times that refresh and `--steps` training steps of
the same state on the same device, and prints the refresh as a share of a full epoch of the training split.

Usage:
  python bench/bench_ema_refresh.py --data ../shared/data/mammo-ddsm --size 64 [--model custom_cnn] [--steps 10]
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medpipe.config import load_config  # noqa: E402
from medpipe.data.cache import build_cache, load_cache  # noqa: E402
from medpipe.device import resolve_device  # noqa: E402
from medpipe.training_loop import TrainingState, _refresh_ema_batchnorm, _train_one_epoch  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="dataset root with train/ and val/")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--model", default="custom_cnn", choices=["custom_cnn", "resnet18"])
    parser.add_argument("--steps", type=int, default=10, help="training steps timed")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cache-dir", default=None, help="default: a temporary folder")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(None, [f"data.image_size={args.size}", f"data.cache_dir={args.cache_dir or tmp}",
                                 "train.ema_decay=0.99", "models.resnet18.weights=none"])
        device = resolve_device(args.device)
        data = load_cache(build_cache(args.data, cfg))
        n_train = len(data.splits["train"].labels)
        batch = cfg.train.batch_size
        timed_rows = np.arange(min(n_train, args.steps * batch))
        state = TrainingState.create(args.model, cfg, data, timed_rows, device)
        _train_one_epoch(state, cfg, device, len(data.classes))  # warm-up
        started = time.perf_counter()
        _train_one_epoch(state, cfg, device, len(data.classes))
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        per_step = (time.perf_counter() - started) / math.ceil(len(timed_rows) / batch)
        full = TrainingState.create(args.model, cfg, data, np.arange(n_train), device)
        _refresh_ema_batchnorm(full, cfg, device)  # warm-up
        started = time.perf_counter()
        _refresh_ema_batchnorm(full, cfg, device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        refresh = time.perf_counter() - started
    epoch = per_step * math.ceil(n_train / batch)
    print(f"{args.model} at {args.size} px on {device} ({torch.get_num_threads()} threads): training step "
          f"{per_step:.3f} s (batch {batch}) -> epoch of {n_train} images ~{epoch:.1f} s; BatchNorm refresh "
          f"({min(n_train, 1024)} images) {refresh:.2f} s = {refresh / epoch:.0%} of an epoch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
