"""Training under torchrun (DDP) on CPU with gloo: 2 processes on 32 px images against one process.

What is compared and why: with the same seed and global batch, two ranks draw and augment exactly the images
one process would (medpipe.distributed); what differs is BatchNorm, which in training mode normalises each
rank's slice by that slice's own statistics (torch's SyncBatchNorm, which would share them, runs on CUDA only),
and dropout's per-rank masks. The reference is therefore one process whose BatchNorm sees the two halves of every
batch separately, as the two ranks do, with rank 0's running statistics, and dropout off: then weights, BatchNorm
buffers and val loss agree to 1e-5 (measured: parameters bitwise equal, buffers and val loss to float
rounding). A plain single process differs by the per-slice BatchNorm statistics only (val loss within ~0.05 on
these tiny runs); that is expected, not checked.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import medpipe.training_loop as training_loop
from medpipe.config import load_config
from medpipe.data.cache import build_cache
from medpipe.device_lease import LOCK_DIR_ENV, DeviceLeaseError, leased_devices
from medpipe.distributed import DistributedError, World, rank_slice, torchrun_command, world
from medpipe.train import train_model
from medpipe_testdata import REPO_ROOT, write_dataset

TOLERANCE = 1e-5  # max |Δ| of every weight/buffer and of the val loss (see the module docstring)


def test_rank_slices_tile_the_global_batch() -> None:
    for count in (1, 7, 8, 33):
        for size in (1, 2, 3, 4):
            rows = [list(range(count))[rank_slice(count, World(size, r, r))] for r in range(size)]
            assert sum(rows, []) == list(range(count))  # in order, no overlap, nothing left out
            assert max(map(len, rows)) - min(map(len, rows)) <= 1


def test_world_from_torchrun_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert world() == World(1, 0, 0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert world() == World(2, 1, 1)
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(DistributedError, match="RANK must be in"):
        world()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(DistributedError, match="RANK='x'"):
        world()


def test_torchrun_command() -> None:
    command = torchrun_command(4, ["stage", "train", "--run", Path("/r"), "--model", "resnet18"])
    assert command[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m", "medpipe",
                           "stage", "train", "--run", "/r", "--model", "resnet18"]


def test_leasing_several_gpus_is_all_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(LOCK_DIR_ENV, str(tmp_path / "locks"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,7")
    with leased_devices("auto", 2, device_count=lambda: 3) as names:
        assert names == ["3", "5"]  # CUDA_VISIBLE_DEVICES entries: what the ranks' CUDA_VISIBLE_DEVICES gets
        with pytest.raises(DeviceLeaseError, match="did not become free together"), \
                leased_devices("auto", 2, wait_s=0.2, device_count=lambda: 3):
            pass
        with leased_devices("auto", 1, device_count=lambda: 3) as rest:
            assert rest == ["7"]
    with leased_devices("auto", 3, device_count=lambda: 3) as names:  # all were given back
        assert names == ["3", "5", "7"]
    with leased_devices("auto", 2, device_count=lambda: 0) as names:
        assert names is None  # no GPU: the ranks run on the CPU (gloo)
    with pytest.raises(DeviceLeaseError, match="only 3 are visible"), leased_devices("auto", 4, device_count=lambda: 3):
        pass
    with pytest.raises(ValueError, match="train.device='cuda:1'"), leased_devices("cuda:1", 2):
        pass


def _overrides(tmp_path: Path, epochs: int) -> list[str]:
    return ["data.image_size=32", f"data.cache_dir={tmp_path / 'cache'}", f"train.epochs={epochs}",
            "train.batch_size=8", "train.patience=5", "train.device=cpu", "train.scheduler=none",
            "models.custom_cnn.dropout=0", "models.resnet18.weights=none"]


def _torchrun_train(data: Path, out: Path, overrides: list[str], resume: bool = False) -> str:
    sets = [arg for item in overrides for arg in ("--set", item)]
    command = torchrun_command(2, ["train", "--data", data, "--out", out, "--model", "custom_cnn", *sets]
                               + (["--resume"] if resume else []))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return done.stdout + done.stderr


def _two_rank_batchnorm(monkeypatch: pytest.MonkeyPatch) -> None:
    """One process whose model, in training, runs each rank's slice of a batch separately (per-slice BatchNorm
    statistics) and keeps rank 0's running statistics, as DDP (broadcast_buffers) does."""
    build = training_loop.build_model

    def build_two_rank(*args, **kwargs):
        model = build(*args, **kwargs)
        forward = model.forward
        norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        names = ("running_mean", "running_var", "num_batches_tracked")

        def split_forward(x):
            if not model.training:
                return forward(x)
            first = forward(x[rank_slice(len(x), World(2, 0, 0))])
            kept = [[getattr(m, n).clone() for n in names] for m in norms]
            second = forward(x[rank_slice(len(x), World(2, 1, 1))])
            for module, buffers in zip(norms, kept):  # new tensors: autograd's saved ones stay untouched
                for name, buffer in zip(names, buffers):
                    setattr(module, name, buffer)
            return torch.cat([first, second])

        model.forward = split_forward
        return model

    monkeypatch.setattr(training_loop, "build_model", build_two_rank)


def test_two_gloo_ranks_train_as_one_process_and_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = write_dataset(tmp_path / "data", per_class=8, size=32)
    out = tmp_path / "ddp"
    first = _torchrun_train(data, out, _overrides(tmp_path, epochs=2))
    assert json.loads((out / "custom_cnn" / "history.json").read_text())["epochs_run"] == 2
    log = _torchrun_train(data, out, _overrides(tmp_path, epochs=3), resume=True)  # continues from last.pt

    finished = dict(re.findall(r"rank (\d)/2 finished custom_cnn after epoch (\d+)", first + log))
    assert finished == {"0": "3", "1": "3"}, first + log  # the later line per rank wins: both stopped at epoch 3
    assert len(re.findall(r"rank \d/2 finished", log)) == 2
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [f"custom_cnn/{n}" for n in
                     ("best.pt", "config.yaml", "history.json", "history.png", "last.pt")]  # one set, by rank 0
    summary = json.loads((out / "custom_cnn" / "history.json").read_text())
    assert summary["epochs_run"] == 3 and summary["world_size"] == 2 and len(summary["history"]) == 3

    _two_rank_batchnorm(monkeypatch)
    cfg = load_config(None, _overrides(tmp_path, epochs=3))
    ref = train_model(build_cache(data, cfg), "custom_cnn", cfg, tmp_path / "one" / "custom_cnn")
    expected = json.loads((ref / "history.json").read_text())
    for got, want in zip(summary["history"], expected["history"], strict=True):
        assert abs(got["val_loss"] - want["val_loss"]) <= TOLERANCE, (got, want)
        assert abs(got["train_loss"] - want["train_loss"]) <= TOLERANCE, (got, want)
    ours = torch.load(out / "custom_cnn" / "last.pt", weights_only=False)["model_state"]
    theirs = torch.load(ref / "last.pt", weights_only=False)["model_state"]
    diff = max((ours[k].double() - theirs[k].double()).abs().max().item() for k in theirs)
    assert diff <= TOLERANCE, diff


def test_train_stage_on_several_gpus_launches_torchrun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the DAG's train task runs with MEDPIPE_GPUS_PER_MODEL=2: torchrun over `medpipe stage train` on the
    run folder (the real launch is the 2-rank test above; here the command and its devices are recorded)."""
    from medpipe import distributed, stages

    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    data = write_dataset(tmp_path / "data", per_class=2, size=32)
    cfg = load_config(None, _overrides(tmp_path, epochs=1))
    run = stages.start_run(tmp_path / "run", cfg, data)
    launched = []
    monkeypatch.setattr(distributed, "launch_torchrun", lambda *args: launched.append(args))
    assert stages.run_stage("train", run, cfg, "custom_cnn", gpus=2) == run.model_dir("custom_cnn")
    assert launched == [(2, ["stage", "train", "--run", str(run.root), "--model", "custom_cnn"], None)]
    assert torchrun_command(2, launched[0][1])[2:6] == ["torch.distributed.run", "--standalone",
                                                       "--nproc_per_node=2", "-m"]
    from medpipe.cli import main  # the command each rank runs: `medpipe stage <name> --run <folder>`

    assert main(["stage", "validate", "--run", str(run.root)]) == 0
    assert run.validation_report_path.is_file()
