"""Ctrl-C and SIGTERM end `medpipe run` with one line and exit 130 / 143, name `--resume` and leave no
half-written file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medpipe.run_folder import RunFolder
from medpipe_testdata import REPO_ROOT, write_dataset

# Many short epochs, so that the signal lands while training runs.
SLOW = ["data.image_size=32", "train.epochs=400", "train.patience=400", "train.batch_size=8", "train.device=cpu",
        "models.names=[custom_cnn]", "augment.enabled=false", "evaluate.splits=[val]"]


def _start(data: Path, out: Path, cache: Path, *extra: str) -> subprocess.Popen:
    sets = [arg for s in [*SLOW, f"data.cache_dir={cache}"] for arg in ("--set", s)]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "medpipe", "run", "--data", str(data), "--out", str(out), *sets,
                             *extra], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not path.is_file():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} never appeared; medpipe said:\n{proc.communicate()[1][-3000:]}")
        time.sleep(0.05)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_ends_the_run_with_one_line_and_names_resume(tmp_path: Path, signum: int, code: int) -> None:
    data = write_dataset(tmp_path / "data", per_class=4, size=32)
    run = RunFolder(tmp_path / "run")
    proc = _start(data, run.root, tmp_path / "cache")
    _wait_for(run.checkpoint("custom_cnn", "last"), proc)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-3000:]
    message = [line for line in err.splitlines() if line.startswith("medpipe:")]
    assert len(message) == 1 and "Traceback" not in err, err[-3000:]
    assert f"interrupted ({signal.Signals(signum).name}) while training custom_cnn at epoch" in message[0]
    assert f"`--resume` continues from {run.checkpoint('custom_cnn', 'last')}" in message[0]
    leftovers = [p.name for p in run.root.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]
    assert not leftovers  # temp files of the atomic writes were removed
    assert not run.history_path("custom_cnn").exists() and not run.finished

    # Without --resume the unfinished run is refused (tests/test_run_folder.py: with it, the run goes on).
    again = _start(data, run.root, tmp_path / "cache", "--set", "train.epochs=400")
    assert again.wait(timeout=120) == 1 and "pass --resume" in again.communicate()[1]
