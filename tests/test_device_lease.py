"""The per-host GPU lease, on CPU with simulated device counts: concurrent tasks get different GPUs, a full host
makes a task wait and then say who holds what, and a task killed with SIGKILL frees its GPU."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medpipe.device_lease import LOCK_DIR_ENV, DeviceLeaseError, leased_device
from medpipe_testdata import REPO_ROOT


def _gpus(n: int):
    return lambda: n


@pytest.fixture(autouse=True)
def locks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(LOCK_DIR_ENV, str(tmp_path / "locks"))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return tmp_path / "locks"


def test_cpu_and_an_explicit_gpu_are_used_as_given() -> None:
    with leased_device("cpu", device_count=_gpus(2)) as device:
        assert device == "cpu"
    with leased_device("cuda:1", device_count=_gpus(2)) as device:
        assert device == "cuda:1"
    with leased_device("auto", device_count=_gpus(0)) as device:
        assert device == "cpu"
    with pytest.raises(ValueError, match="torch sees no CUDA GPU"), leased_device("cuda", device_count=_gpus(0)):
        pass


def test_concurrent_tasks_get_different_gpus_and_a_third_waits(locks: Path) -> None:
    with leased_device("auto", device_count=_gpus(2), task="a") as first:
        with leased_device("cuda", device_count=_gpus(2), task="b") as second:
            assert {first, second} == {"cuda:0", "cuda:1"}
            started = time.monotonic()
            with pytest.raises(DeviceLeaseError, match=r"all 2 visible GPUs stayed leased .*: a; .*: b"):
                with leased_device("auto", device_count=_gpus(2), wait_s=1.0, task="c"):
                    pass
            assert time.monotonic() - started >= 1.0
        with leased_device("auto", device_count=_gpus(2), task="d") as freed:  # b ended: its GPU is free again
            assert freed == second


def test_lock_files_name_the_gpus_the_worker_was_given(locks: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    with leased_device("auto", device_count=_gpus(2)) as device:
        assert device == "cuda:0"  # torch's index within the visible set
    assert sorted(p.name for p in locks.iterdir()) == ["cuda-3.lock"]


def test_a_killed_holder_frees_its_gpu(locks: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\n"
         "from medpipe.device_lease import leased_device\n"
         "with leased_device('auto', device_count=lambda: 1, task='doomed') as d:\n"
         "    print(d, flush=True); time.sleep(600)\n"],
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "cuda:0"
        with pytest.raises(DeviceLeaseError, match="doomed"):
            with leased_device("auto", device_count=_gpus(1), wait_s=0.5):
                pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
        with leased_device("auto", device_count=_gpus(1), wait_s=5) as device:
            assert device == "cuda:0"
    finally:
        holder.kill()
        holder.wait(timeout=30)
