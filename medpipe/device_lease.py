"""One GPU per task on a host that runs several tasks at once: a lease over the GPUs this process can see.

`train.device: auto` (or `cuda`) used to mean "whatever cuda:0 is": two trainings started side by side by one
Airflow worker with two GPUs both ran on GPU 0. `leased_device` hands each concurrently running task a different
visible GPU and keeps it until the task ends. The lease is an exclusive `fcntl.flock` on one lock file per GPU in a
per-host folder: the kernel drops the lock when its process exits in any way (kill -9 included), so a dead task
never keeps a GPU. The lock file names the GPU by its entry in CUDA_VISIBLE_DEVICES when that is set (the physical
index or UUID the worker was given), so tasks that see the same GPU under different indices still exclude each
other. An explicit `cuda:N` is the operator's choice and is used as given, without a lease.

Multi-GPU training (`leased_devices`): the task that launches torchrun leases N GPUs at once and hands exactly
those to the ranks in CUDA_VISIBLE_DEVICES; the ranks do not lease again (medpipe.distributed).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["DeviceLeaseError", "leased_device", "leased_devices", "lock_dir", "LOCK_DIR_ENV"]

_logger = logging.getLogger(__name__)

LOCK_DIR_ENV = "MEDPIPE_GPU_LOCK_DIR"  # per host; default <tmp>/medpipe-gpu-locks
_POLL_S = 0.5


class DeviceLeaseError(RuntimeError):
    """No visible GPU became free in time; the message names the holders."""


def lock_dir() -> Path:
    return Path(os.environ.get(LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "medpipe-gpu-locks")


def _visible_names(count: int) -> list[str]:
    """A stable name per visible GPU: its CUDA_VISIBLE_DEVICES entry, else its index."""
    entries = [e.strip() for e in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if e.strip()]
    return [entries[i] if i < len(entries) else str(i) for i in range(count)]


def _try_lock(path: Path, owner: str) -> int | None:
    """An fd holding an exclusive lock on `path`, or None when another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return None
        raise
    os.ftruncate(fd, 0)
    os.write(fd, owner.encode())  # for the message a waiting task prints; the lock itself is what counts
    return fd


def _holders(paths: list[Path]) -> str:
    return "; ".join(f"{p.stem}: {p.read_text(errors='replace').strip() or '?'}" for p in paths if p.is_file())


def _cuda_device_count() -> int:
    import torch  # torch stays off the CLI's and DAG files' start-up path

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


@contextlib.contextmanager
def leased_device(setting: str, *, wait_s: float = 3600.0, task: str = "medpipe",
                  device_count: Callable[[], int] = _cuda_device_count) -> Iterator[str]:
    """The torch device a task runs on, held exclusively (among medpipe tasks on this host) until the block ends.

    Args:
        setting: the config's device ("auto", "cpu", "cuda", "cuda:N").
        wait_s: how long to wait for a free GPU when all are leased.
        task: who holds the lease (written into the lock file, shown to waiting tasks).
        device_count: the number of visible GPUs (tests simulate it; default torch's count).

    Yields:
        "cpu", the explicit "cuda:N", or "cuda:<i>" for the leased visible GPU i.

    Raises:
        DeviceLeaseError: every visible GPU stayed leased for `wait_s`.
        ValueError: "cuda" asked for on a machine where torch sees no GPU.
    """
    if setting == "cpu" or setting.startswith("cuda:"):
        yield setting
        return
    count = device_count()
    if count == 0:
        if setting == "cuda":
            raise ValueError("device 'cuda' was requested but torch sees no CUDA GPU; use 'cpu' or 'auto'")
        yield "cpu"
        return
    folder = lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"cuda-{name.replace('/', '_')}.lock" for name in _visible_names(count)]
    owner = f"pid {os.getpid()} on {os.uname().nodename}: {task}"
    deadline = time.monotonic() + wait_s
    while True:
        for index, path in enumerate(paths):
            fd = _try_lock(path, owner)
            if fd is not None:
                _logger.info("%s runs on cuda:%d (lease %s)", task, index, path)
                try:
                    yield f"cuda:{index}"
                finally:
                    os.close(fd)  # closing the last fd drops the flock
                return
        if time.monotonic() >= deadline:
            raise DeviceLeaseError(f"all {count} visible GPUs stayed leased for {wait_s:.0f} s ({_holders(paths)}); "
                                   f"lock files in {folder} (${LOCK_DIR_ENV})")
        time.sleep(_POLL_S)


@contextlib.contextmanager
def leased_devices(setting: str, count: int, *, wait_s: float = 3600.0, task: str = "medpipe",
                   device_count: Callable[[], int] = _cuda_device_count) -> Iterator[list[str] | None]:
    """`count` visible GPUs held together until the block ends (a torchrun launch); None for the CPU.

    Yields:
        the leased GPUs' names as CUDA_VISIBLE_DEVICES entries (its entries when it is set, else indices), for
        the launched processes' CUDA_VISIBLE_DEVICES; None when train.device is cpu or no GPU is visible (the
        ranks then run on the CPU with gloo).

    Raises:
        DeviceLeaseError: fewer than `count` GPUs are visible, or `count` did not become free within `wait_s`
            (all or nothing: holding some while waiting for more could deadlock two such tasks).
        ValueError: "cuda:N" (one fixed GPU cannot be N GPUs), or "cuda" without a GPU.
    """
    if setting.startswith("cuda:"):
        raise ValueError(f"train.device={setting!r} names one GPU; training on {count} GPUs needs train.device "
                         "auto or cuda")
    visible = 0 if setting == "cpu" else device_count()
    if visible == 0:
        if setting == "cuda":
            raise ValueError("device 'cuda' was requested but torch sees no CUDA GPU; use 'cpu' or 'auto'")
        yield None
        return
    if visible < count:
        raise DeviceLeaseError(f"{count} GPUs asked for but only {visible} are visible "
                               f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r})")
    folder = lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    names = _visible_names(visible)
    paths = [folder / f"cuda-{name.replace('/', '_')}.lock" for name in names]
    owner = f"pid {os.getpid()} on {os.uname().nodename}: {task}"
    deadline = time.monotonic() + wait_s
    while True:
        held: list[tuple[int, int]] = []  # (visible index, fd)
        for index, path in enumerate(paths):
            fd = _try_lock(path, owner)
            if fd is not None:
                held.append((index, fd))
                if len(held) == count:
                    break
        if len(held) == count:
            chosen = [names[index] for index, _ in held]
            _logger.info("%s runs on GPUs %s (leases in %s)", task, ",".join(chosen), folder)
            try:
                yield chosen
            finally:
                for _, fd in held:
                    os.close(fd)
            return
        for _, fd in held:  # not enough: give back what was taken, so another waiting task can complete its set
            os.close(fd)
        if time.monotonic() >= deadline:
            raise DeviceLeaseError(f"{count} of the {visible} visible GPUs did not become free together within "
                                   f"{wait_s:.0f} s ({_holders(paths)}); lock files in {folder} (${LOCK_DIR_ENV})")
        time.sleep(_POLL_S)
