"""Multi-process training of one model under torchrun (DistributedDataParallel), and launching torchrun.

Under `torchrun --nproc_per_node=N -m medpipe train ...` every process runs the same command; torchrun sets
WORLD_SIZE, RANK and LOCAL_RANK. Without WORLD_SIZE (or with WORLD_SIZE=1) nothing here changes anything: every
helper is a no-op that returns what one process would, so training behaves exactly as before.

The decisions (why each one):
- Backend: NCCL on CUDA, gloo on CPU (the only CPU backend; CI runs 2 gloo processes on tiny images).
- Devices: rank i trains on cuda:<LOCAL_RANK>. Ranks do NOT take a medpipe.device_lease lease: the process that
  launches torchrun (the Airflow train task, `launch_torchrun`) leases N GPUs and passes exactly those in
  CUDA_VISIBLE_DEVICES, so cuda:0..N-1 of every rank are the leased GPUs and no other task can be given them.
- `train.batch_size` is the GLOBAL batch: each step every rank draws the same global weighted sample (the same
  seeded generator on every rank), augments it identically and trains on its own contiguous slice. A single
  process with the same seed draws the very same images and augmentations, so the only differences left are
  BatchNorm's per-rank batch statistics and floating-point summation order (see README, multi-GPU training).
  Augmenting the whole global batch on every rank repeats a few cheap kernels; the model's forward/backward,
  which is the cost, is split.
- Files: rank 0 alone writes (config, checkpoints, history, caches, run folder); the others wait for it.
- Decisions: rank 0 validates and broadcasts the epoch's record; every rank takes the early-stop, best-epoch and
  unfreezing decisions from that same record with the same code, so they cannot disagree.
"""

from __future__ import annotations

import atexit
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

__all__ = ["World", "world", "is_distributed", "is_main", "setup", "barrier", "broadcast_object", "on_main",
           "rank_slice", "all_reduce_sum", "wrap_model", "torchrun_command", "launch_torchrun", "DistributedError"]

_logger = logging.getLogger(__name__)
T = TypeVar("T")

# Collective timeout: rank 0 may build the image cache or evaluate while the others wait at a barrier; torch's
# default (10 min for NCCL) would kill a run whose cache takes longer to decode.
_TIMEOUT = timedelta(hours=2)


class DistributedError(RuntimeError):
    """torchrun's environment is inconsistent, or a step on rank 0 failed while the other ranks waited."""


@dataclass(frozen=True)
class World:
    size: int = 1
    rank: int = 0
    local_rank: int = 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit():
        raise DistributedError(f"environment variable {name}={value!r}: expected a whole number (set by torchrun)")
    return int(value)


def world() -> World:
    """This process's place among torchrun's processes (size 1 outside torchrun)."""
    size = _env_int("WORLD_SIZE", 1)
    found = World(size=size, rank=_env_int("RANK", 0), local_rank=_env_int("LOCAL_RANK", 0))
    if size < 1 or not 0 <= found.rank < size:
        raise DistributedError(f"WORLD_SIZE={size}, RANK={found.rank}: RANK must be in [0, WORLD_SIZE)")
    return found


def is_distributed() -> bool:
    return world().size > 1


def is_main() -> bool:
    """True in the one process that writes files: rank 0, or the only process."""
    return world().rank == 0


def _initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def setup(device_setting: str) -> str | None:
    """Join torchrun's process group (once per process) and return this rank's device; None outside torchrun.

    Args:
        device_setting: train.device ("auto", "cpu", "cuda", "cuda:N"). "cpu" forces gloo on CPU; otherwise
            CUDA is used when torch sees a GPU. An explicit "cuda:N" is refused: under torchrun each rank's
            device is cuda:LOCAL_RANK among CUDA_VISIBLE_DEVICES.
    """
    found = world()
    if found.size == 1:
        return None
    import torch
    import torch.distributed as dist

    if device_setting.startswith("cuda:"):
        raise DistributedError(f"train.device={device_setting!r} under torchrun: each rank uses cuda:LOCAL_RANK; "
                               "set train.device=auto (or cuda) and choose GPUs with CUDA_VISIBLE_DEVICES")
    use_cuda = device_setting != "cpu" and torch.cuda.is_available()
    if device_setting == "cuda" and not use_cuda:
        raise DistributedError("train.device='cuda' under torchrun but torch sees no CUDA GPU; use cpu or auto")
    device = f"cuda:{found.local_rank}" if use_cuda else "cpu"
    if use_cuda:
        if found.local_rank >= torch.cuda.device_count():
            raise DistributedError(f"LOCAL_RANK={found.local_rank} but only {torch.cuda.device_count()} GPUs are "
                                   f"visible (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
        torch.cuda.set_device(device)
    if not _initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", timeout=_TIMEOUT)
        atexit.register(_teardown)
        _logger.info("rank %d/%d (local %d) joined the %s process group on %s", found.rank, found.size,
                     found.local_rank, dist.get_backend(), device)
    return device


def _teardown() -> None:
    import torch.distributed as dist

    if _initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if _initialized():
        import torch.distributed as dist

        dist.barrier()


def broadcast_object(value: T) -> T:
    """Rank 0's `value` on every rank (pickled); the value itself outside torchrun."""
    if not _initialized():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(func: Callable[[], T], what: str) -> T:
    """Run `func` on rank 0 only (it writes files) and give every rank its result.

    A failure on rank 0 is sent to the others, which raise DistributedError naming `what`, instead of waiting at
    a barrier until the collective timeout.
    """
    if not _initialized():
        return func()
    outcome: tuple[bool, Any] = (True, None)
    if is_main():
        try:
            outcome = (True, func())
        except BaseException as exc:
            broadcast_object((False, f"{type(exc).__name__}: {exc}"))
            raise
    ok, value = broadcast_object(outcome)
    if not ok:
        raise DistributedError(f"rank 0 failed to {what}: {value}")
    return value


def rank_slice(count: int, w: World | None = None) -> slice:
    """This rank's contiguous part of a global batch of `count` rows (sizes differ by at most one)."""
    w = w or world()
    base, extra = divmod(count, w.size)
    start = w.rank * base + min(w.rank, extra)
    return slice(start, start + base + (1 if w.rank < extra else 0))


def all_reduce_sum(tensor):
    """The sum of `tensor` over the ranks (in place); the tensor itself outside torchrun."""
    if _initialized():
        import torch.distributed as dist

        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def wrap_model(model, device: str):
    """DistributedDataParallel around `model` (the un-wrapped module stays what EMA averages and checkpoints save).

    DDP registers its gradient hooks for the parameters that require grad when it is built, so the caller builds
    a new wrapper whenever unfreezing changes that set (a wrapper built before would not all-reduce the newly
    trainable parameters, and the ranks' weights would drift apart). Building it also broadcasts rank 0's weights.
    """
    from torch.nn.parallel import DistributedDataParallel

    index = int(device.split(":")[1]) if device.startswith("cuda:") else None
    return DistributedDataParallel(model, device_ids=None if index is None else [index])


def torchrun_command(nproc: int, medpipe_args: Sequence[str]) -> list[str]:
    """argv that runs `python -m medpipe <medpipe_args>` in `nproc` processes on this host (torchrun --standalone:
    a private rendezvous on a free local port, so several trainings on one host do not collide)."""
    if nproc < 1:
        raise DistributedError(f"nproc_per_node={nproc}: expected at least 1")
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "medpipe", *map(str, medpipe_args)]


def launch_torchrun(nproc: int, medpipe_args: Sequence[str], visible_devices: Sequence[str] | None) -> None:
    """Run medpipe under torchrun and wait; raise DistributedError when it fails.

    Args:
        visible_devices: the GPUs the caller leased (their CUDA_VISIBLE_DEVICES names); they become the ranks'
            only visible GPUs. None: CPU (gloo) processes; no GPU is made visible.
    """
    env = dict(os.environ)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(visible_devices) if visible_devices is not None else ""
    # Each rank would otherwise start one OpenMP thread per core: N ranks x all cores oversubscribe the host.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    command = torchrun_command(nproc, medpipe_args)
    _logger.info("launching %s (CUDA_VISIBLE_DEVICES=%r)", " ".join(command), env["CUDA_VISIBLE_DEVICES"])
    code = subprocess.run(command, env=env, check=False).returncode
    if code != 0:
        raise DistributedError(f"torchrun ({' '.join(command)}) exited with status {code}; each rank's error is in "
                               "the log above")

