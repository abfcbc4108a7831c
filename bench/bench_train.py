"""Training throughput: medpipe's device-resident data path vs. its ceiling vs. the original PIL+DataLoader path.

For each model it times whole training steps (forward, backward, optimizer) and prints images/s for:
  ceiling   - the same step fed one pre-made device tensor (no sampling, no augmentation): the upper bound
  medpipe   - medpipe's real path: weighted index draw on the device, on-device augmentation, mixup, step
  +ema      - (with --ema-decay) medpipe's path plus the per-step weight-averaging update (train.ema_decay)
  pil       - the original classifier's path: JPEG decode + PIL/torchvision transforms in DataLoader workers
              every epoch, then host->device copy and the same step

Usage:
  python bench/bench_train.py --data sample_data/mammo-ddsm-sample --size 64 --steps 20
  python bench/bench_train.py --data ../shared/data/mammo-ddsm --size 224 --steps 50 --device cuda
  python bench/bench_train.py --data ../shared/data/mammo-ddsm --size 64 --ema-decay 0.99
  python bench/bench_train.py --data ../shared/data/mammo-ddsm --size 64 --steps 10 --max-images 300 --nproc 2

--nproc N: multi-process (DDP) mode. Runs medpipe's DDP step (every rank draws and augments the global batch of
--batch images, trains on its slice; medpipe.distributed) under torchrun with 1 and with N processes and prints
the global img/s and the scaling efficiency (img/s with N / (N x img/s with 1)). On CPU each process gets one
thread (OMP_NUM_THREADS=1, one core per rank as one GPU per rank), so CPU figures show the cost of gloo's
all-reduce and of every rank augmenting the whole global batch, not GPU scaling (needs N <= the free cores).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medpipe.config import load_config
from medpipe.data.augment import augment_batch, mixup, weighted_indices
from medpipe.data.layout import discover
from medpipe.models import build_model, param_groups
from medpipe.preprocess import load_image


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _step_fn(model, optimizer, device: str, num_classes: int, cfg):
    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        if device == "cuda":
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            logits = model(x)
        target = y if y.dtype.is_floating_point else F.one_hot(y, num_classes).float()
        loss = F.cross_entropy(logits.float(), target, label_smoothing=cfg.train.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def _timed(run_step, steps: int, warmup: int, batch: int, device: str) -> float:
    for _ in range(warmup):
        run_step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        run_step()
    _sync(device)
    return steps * batch / (time.perf_counter() - start)


def _load_arrays(samples, size: int) -> tuple[np.ndarray, np.ndarray]:
    images = np.stack([load_image(s.path, size) for s in samples])
    labels = np.array([s.label_index for s in samples], dtype=np.int64)
    return images, labels


class _PilDataset(torch.utils.data.Dataset):
    """What the original classifier did: decode the file and run PIL transforms every time an image is drawn."""

    def __init__(self, samples, size: int):
        from torchvision import transforms as T

        self.samples = samples
        self.transform = T.Compose([
            T.Grayscale(1), T.RandomRotation(30), T.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(0.7, 1.3)),
            T.RandomHorizontalFlip(), T.ColorJitter(0.3, 0.3), T.PILToTensor(), T.RandomErasing(p=0.3)])

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        from PIL import Image

        with Image.open(self.samples[index].path) as img:
            x = self.transform(img.convert("L")).float()
        return x, self.samples[index].label_index


def _training_model(name: str, cfg, device: str, kind: str) -> torch.nn.Module:
    """The model as medpipe trains it: seeded, on the device, channels_last on CUDA, in train mode."""
    torch.manual_seed(0)
    model = build_model(name, cfg, len(cfg.data.classes)).to(device)
    if kind == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model.train()


Batch = tuple[torch.Tensor, torch.Tensor]


def _medpipe_batches(samples, cfg, args, device: str) -> tuple[Callable[[], Batch], torch.Tensor, torch.Tensor,
                                                                torch.Tensor]:
    """medpipe's device-resident data path: (next_batch, images, labels, sampling weights), where next_batch()
    draws a weighted batch of args.batch and augments and mixes it on the device (seeded: the same on every rank)."""
    num_classes = len(cfg.data.classes)
    gen = torch.Generator(device=device).manual_seed(0)
    rng = np.random.default_rng(0)
    images, labels = _load_arrays(samples, args.size)
    x_dev = torch.from_numpy(images).unsqueeze(1).to(device)
    y_dev = torch.from_numpy(labels).to(device)
    counts = np.bincount(labels, minlength=num_classes)
    weights = torch.tensor((1.0 / np.maximum(counts, 1))[labels], dtype=torch.float32, device=device)

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        idx = weighted_indices(weights, args.batch, gen)
        x = augment_batch(x_dev[idx].float(), cfg.augment, gen)
        y = F.one_hot(y_dev[idx], num_classes).float()
        return mixup(x, y, cfg.augment.mixup_alpha, gen, rng)

    return next_batch, x_dev, y_dev, weights


def bench_model(name: str, samples, cfg, args) -> dict:
    device, batch = args.device, args.batch
    num_classes = len(cfg.data.classes)
    model = _training_model(name, cfg, device, device)
    optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=1e-3)
    step = _step_fn(model, optimizer, device, num_classes, cfg)
    next_batch, x_dev, y_dev, weights = _medpipe_batches(samples, cfg, args, device)
    fixed_x, fixed_y = x_dev[:batch].float(), y_dev[:batch]
    if len(fixed_y) < batch:  # tiny datasets: repeat to a full batch
        reps = -(-batch // len(fixed_y))
        fixed_x, fixed_y = fixed_x.repeat(reps, 1, 1, 1)[:batch], fixed_y.repeat(reps)[:batch]

    def medpipe_step() -> None:
        step(*next_batch())

    results = {"ceiling": _timed(lambda: step(fixed_x, fixed_y), args.steps, args.warmup, batch, device),
               "medpipe": _timed(medpipe_step, args.steps, args.warmup, batch, device)}
    if args.ema_decay > 0:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(args.ema_decay), use_buffers=True)

        def medpipe_ema_step() -> None:
            medpipe_step()
            ema.update_parameters(model)

        results["ema"] = _timed(medpipe_ema_step, args.steps, args.warmup, batch, device)
    loader = torch.utils.data.DataLoader(
        _PilDataset(samples, args.size), batch_size=batch, num_workers=args.workers, drop_last=True,
        sampler=torch.utils.data.WeightedRandomSampler(weights.cpu().double(),
                                                          num_samples=(args.steps + args.warmup + 1) * batch),
        pin_memory=device == "cuda", persistent_workers=args.workers > 0)
    batches = iter(loader)

    def pil_step() -> None:
        x, y = next(batches)
        step(x.to(device, non_blocking=True), y.to(device, non_blocking=True))

    results["pil"] = _timed(pil_step, args.steps, args.warmup, batch, device)
    return results


def bench_ddp_worker(name: str, samples, cfg, args) -> None:
    """One torchrun rank: time medpipe's DDP training step; rank 0 prints a RESULT line for the launcher."""
    from medpipe import distributed

    world = distributed.world()
    device = distributed.setup("cpu" if args.device == "cpu" else "cuda") or args.device
    kind = "cuda" if device.startswith("cuda") else "cpu"  # _step_fn and _sync know "cuda" and "cpu"
    model = _training_model(name, cfg, device, kind)
    net = distributed.wrap_model(model, device) if world.size > 1 else model
    step = _step_fn(net, torch.optim.AdamW(param_groups(model, cfg), lr=1e-3), kind, len(cfg.data.classes), cfg)
    next_batch = _medpipe_batches(samples, cfg, args, device)[0]  # the same global batch on every rank
    part = distributed.rank_slice(args.batch, world)

    def ddp_step() -> None:
        x, y = next_batch()
        step(x[part], y[part])

    rate = _timed(ddp_step, args.steps, args.warmup, args.batch, kind)  # global images/s, as rank 0 sees it
    distributed.barrier()
    if distributed.is_main():
        print("RESULT " + json.dumps({"model": name, "nproc": world.size, "img_s": rate}), flush=True)


def bench_nproc(args, argv: list[str]) -> None:
    """Launch the DDP worker under torchrun with 1 and with args.nproc processes; print img/s and scaling."""
    worker_argv = [a for i, a in enumerate(argv) if a != "--nproc" and (i == 0 or argv[i - 1] != "--nproc")
                   and not a.startswith("--nproc=")]
    rates: dict[tuple[str, int], float] = {}
    for nproc in sorted({1, args.nproc}):
        env = dict(os.environ)
        if args.device == "cpu":  # one core per process, as one GPU per rank (more threads than cores spin-wait)
            env["OMP_NUM_THREADS"] = "1"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   str(Path(__file__).resolve()), *worker_argv, "--ddp-worker"]
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
        for line in done.stdout.splitlines():
            if line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
                rates[(result["model"], result["nproc"])] = result["img_s"]
    print(f"{'model':<12}{'processes':>10}{'img/s':>10}{'speed-up':>10}{'efficiency':>12}")
    for (name, nproc), rate in sorted(rates.items()):
        speedup = rate / rates[(name, 1)]
        print(f"{name:<12}{nproc:>10}{rate:>10.1f}{speedup:>9.2f}x{100 * speedup / nproc:>11.1f}%")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="sample_data/mammo-ddsm-sample", help="dataset root (train split is used)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for the PIL path")
    parser.add_argument("--max-images", type=int, default=2000, help="images loaded for the device paths")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=["custom_cnn", "resnet18"])
    parser.add_argument("--ema-decay", type=float, default=0.0, help="also time medpipe's path with EMA updates")
    parser.add_argument("--nproc", type=int, default=0, help="DDP mode: compare torchrun with 1 and N processes")
    parser.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)  # set by --nproc's launcher
    args = parser.parse_args()
    if args.nproc > 0 and not args.ddp_worker:
        print(f"{args.nproc} vs 1 process(es) under torchrun; {args.size}px, global batch {args.batch}, "
              f"{args.steps} timed steps, device {args.device}, {os.cpu_count()} CPU cores")
        bench_nproc(args, sys.argv[1:])
        return
    cfg = load_config(None, [f"data.image_size={args.size}", "models.resnet18.weights=none"])
    layout = discover(Path(args.data), cfg.data.classes, cfg.data.label_aliases, cfg.data.patient_id_pattern)
    samples = layout.by_split("train")[: args.max_images]
    if args.ddp_worker:
        for name in args.models:
            bench_ddp_worker(name, samples, cfg, args)
        return
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {device_name}; torch {torch.__version__}; {len(samples)} train images from {args.data}; "
          f"{args.size}px, batch {args.batch}, {args.steps} timed steps")
    print(f"{'model':<12}{'ceiling img/s':>15}{'medpipe img/s':>15}{'% of ceiling':>14}{'PIL+DataLoader':>16}{'speed-up':>10}"
          + (f"{'medpipe+EMA img/s':>19}" if args.ema_decay > 0 else ""))
    for name in args.models:
        r = bench_model(name, samples, cfg, args)
        print(f"{name:<12}{r['ceiling']:>15.1f}{r['medpipe']:>15.1f}{100 * r['medpipe'] / r['ceiling']:>13.1f}%"
              f"{r['pil']:>16.1f}{r['medpipe'] / r['pil']:>9.2f}x" + (f"{r['ema']:>19.1f}" if "ema" in r else ""))


if __name__ == "__main__":
    main()
