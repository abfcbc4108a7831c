"""Training: data on the device, augmentation on the device, cosine LR, early stopping, best/last checkpoints.

One code path for CPU and GPU: bf16 autocast + channels_last on CUDA, fp32 on CPU. A seed makes CPU runs
reproducible. `train_model` writes best.pt (by cfg.train.monitor on val), last.pt (for --resume), history.json
and history.png into its output folder.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np

from medpipe import distributed
from medpipe.config import Config, config_from_dict, config_to_dict, save_config
from medpipe.contracts import CheckpointMeta
from medpipe.data.cache import load_cache
from medpipe.device import resolve_device  # re-exported: medpipe.train.resolve_device stays importable
from medpipe.evaluate.plots import plot_history
from medpipe.fileio import atomic_output, atomic_write_text
from medpipe.interrupts import Interrupted
from medpipe.run_folder import CHECKPOINT_NAMES, CONFIG_NAME, HISTORY_NAME, HISTORY_PLOT_NAME

__all__ = ["train_model", "load_checkpoint", "resolve_device", "TrainingError"]

_logger = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot start or continue; the message says why and what to do."""


def _image_digests(images: np.ndarray) -> list[bytes]:
    """One digest per cached image: equal for images with identical decoded pixels (a PNG copy of a JPEG too)."""
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in images]


def _train_indices(data, cfg: Config) -> np.ndarray:
    """Train rows to use: all, or without patients that also appear in val/test and without exact copies of
    val/test images (honest, patient-disjoint val even when validation's leakage findings were only warnings)."""
    train = data.splits["train"]
    keep = np.ones(len(train.labels), dtype=bool)
    if cfg.data.leakage == "exclude_from_train":
        held_out = {p for name, split in data.splits.items() if name != "train" for p in split.patients}
        keep = np.array([p not in held_out for p in train.patients], dtype=bool)
        if (~keep).any():
            _logger.warning("excluding %d train images whose patients also appear in val/test", int((~keep).sum()))
        held_out_images = {d for name, split in data.splits.items() if name != "train"
                           for d in _image_digests(split.images)}
        copies = np.array([d in held_out_images for d in _image_digests(train.images)], dtype=bool) & keep
        if copies.any():
            _logger.warning("excluding %d train images whose pixels are identical to a val/test image",
                            int(copies.sum()))
            keep &= ~copies
    return np.flatnonzero(keep)


def _checkpoint_meta(model_name: str, cfg: Config, data, epoch: int, score: float, priors: dict,
                     guard: dict | None = None) -> dict:
    """`guard`: medpipe.selection.qualification of the epoch whose weights are saved."""
    guard = guard or {}
    return CheckpointMeta(**priors, model_name=model_name, classes=list(data.classes), image_size=data.image_size,
                          manifest_hash=data.manifest_hash, epoch=epoch, monitor=cfg.train.monitor, best_score=score,
                          config=config_to_dict(cfg), preprocess_version=data.preprocessing,
                          qualified=guard.get("qualified"),
                          qualification={k: v for k, v in guard.items() if k != "qualified"} or None).to_dict()


def _guard_summary(state, cfg: Config) -> dict:
    """history.json's verdict on the best epoch: qualified, collapsed (no epoch qualified) and why."""
    guard = (state.qualification(state.best_epoch, cfg.train.min_balanced_accuracy_margin)
             or {"qualified": state.best_qualified, "reason": "not recorded (an epoch from before the guard)"})
    collapsed = state.best_qualified is False and state.best_epoch > 0
    reason = guard["reason"]
    if collapsed:
        reason = (f"no epoch of {state.epoch} qualified; best.pt is epoch {state.best_epoch}, the best by "
                  f"{cfg.train.monitor}, and {reason}")
    return {"best_epoch_qualified": state.best_qualified, "collapsed": collapsed,
            "qualification": {**{k: v for k, v in guard.items() if k != "qualified"}, "reason": reason}}


def load_checkpoint(path: str | Path, device: str = "cpu"):
    """Rebuild the model saved in a checkpoint (best.pt / last.pt), in eval mode.

    Returns:
        (model, meta) — meta as written by training, a `CheckpointMeta` (also readable as the dict it was).

    Raises:
        ContractError: the meta is from a newer medpipe or lacks required keys.
    """
    import torch

    from medpipe.models import build_model, load_model_state  # torch stays off the CLI's start-up path

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or "model_state" not in state or "meta" not in state:
        raise ValueError(f"{path} is not a medpipe checkpoint (expected keys model_state and meta)")
    meta = CheckpointMeta.parse(state["meta"], path)
    tree = copy.deepcopy(meta.config)
    tree["models"]["resnet18"]["weights"] = "none"  # the checkpoint holds the weights; never download them again
    model = build_model(meta.model_name, config_from_dict(tree), len(meta.classes))
    load_model_state(model, state["model_state"])
    model.to(device).eval()
    return model, meta


def train_model(cache_dir: str | Path, model_name: str, cfg: Config, out_dir: str | Path,
                resume: bool = False) -> Path:
    """Train one model on the cached train split, selecting on val.

    Args:
        cache_dir: a folder written by medpipe.data.cache.build_cache.
        model_name: "custom_cnn" or "resnet18".
        cfg: the config (train, augment, models sections).
        out_dir: where best.pt, last.pt, history.json, history.png and config.yaml go.
        resume: continue from out_dir/last.pt.

    Under torchrun (medpipe.distributed) every rank calls this with the same arguments: each trains on its slice
    of every global batch of train.batch_size images on cuda:LOCAL_RANK (or the CPU, gloo), rank 0 alone writes
    the files, and all ranks return once history.json is written.

    Returns:
        out_dir.
    """
    import torch

    from medpipe.training_loop import TrainingState, run_epochs  # torch stays off the CLI's start-up path

    ranks_device = distributed.setup(cfg.train.device)  # None outside torchrun
    main = distributed.is_main()
    out_dir = Path(out_dir)
    last_path = out_dir / CHECKPOINT_NAMES["last"]
    if not resume and last_path.exists():
        raise TrainingError(f"{out_dir} already holds a training run (last.pt); pass --resume to continue it, "
                            f"or choose another output folder (nothing is overwritten)")
    if resume and not last_path.exists():
        raise TrainingError(f"--resume: {last_path} does not exist; start without --resume")
    # Every rank has checked the folder before rank 0 writes into it (else a fast rank 0's last.pt could fail
    # a slower rank's "already holds a run" check).
    distributed.barrier()
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / CONFIG_NAME)
    data = load_cache(cache_dir)
    for split in ("train", "val"):
        if split not in data.splits or len(data.splits[split].labels) == 0:
            raise TrainingError(f"cache {cache_dir} has no {split} images; training needs train and val")
    try:
        device = ranks_device or resolve_device(cfg.train.device)
    except ValueError as exc:
        raise TrainingError(f"train.device: {exc}") from exc
    train_rows = _train_indices(data, cfg)
    state = TrainingState.create(model_name, cfg, data, train_rows, device)
    if resume:
        state.restore(torch.load(last_path, map_location="cpu", weights_only=False))
        _logger.info("resuming %s from epoch %d", model_name, state.epoch)
    started = time.perf_counter()
    # Training wall time up to the latest checkpoint, summed over --resume sessions (kept in last.pt).
    earlier_seconds = state.seconds

    def _save(kind: str) -> None:
        state.seconds = earlier_seconds + time.perf_counter() - started
        if not main:  # rank 0 alone writes; its weights are every rank's (DDP keeps them equal)
            return
        guard = state.qualification(state.epoch, cfg.train.min_balanced_accuracy_margin)
        payload = {"model_state": state.eval_model.state_dict(), "meta": _checkpoint_meta(
            model_name, cfg, data, state.epoch, state.best_score, state.priors, guard)}
        if kind == "last":
            payload.update(state.resumable())
        with atomic_output(out_dir / CHECKPOINT_NAMES[kind]) as tmp:
            torch.save(payload, tmp)

    try:
        run_epochs(state, cfg, data, device, on_best=lambda: _save("best"), on_epoch_end=lambda: _save("last"))
    except Interrupted as exc:  # say where it stopped and how to go on; last.pt holds the last finished epoch
        exc.where = f"while training {model_name} at epoch {state.epoch + 1}"
        exc.hint = (f"`--resume` continues from {last_path} (epoch {state.epoch})" if last_path.is_file()
                    else "no epoch had finished; nothing to resume")
        raise
    history_path = out_dir / HISTORY_NAME
    summary = {"model": model_name, "device": device, "epochs_run": state.epoch, "best_epoch": state.best_epoch,
               "monitor": cfg.train.monitor, "best_score": state.best_score, "stopped_early": state.stopped_early,
               "train_images": int(len(state.train_rows)), "seconds": round(state.seconds, 2),
               **({"world_size": distributed.world().size} if distributed.is_distributed() else {}),
               **_guard_summary(state, cfg), "history": state.history}
    if distributed.is_distributed():  # one line per rank: all must name the same epoch (tests check it)
        _logger.info("rank %d/%d finished %s after epoch %d (stopped early: %s)", distributed.world().rank,
                     distributed.world().size, model_name, state.epoch, state.stopped_early)
    if not main:
        distributed.barrier()  # return once rank 0 has written history.json
        return out_dir
    if summary["collapsed"]:
        _logger.warning("%s: %s. The gate refuses this model (check best_epoch_qualified); retrain with other "
                        "settings (learning rate, class weights, epochs)", model_name,
                        summary["qualification"]["reason"])
    plot_history(state.history, out_dir / HISTORY_PLOT_NAME)
    atomic_write_text(history_path, json.dumps(summary, indent=1))  # last: a history.json marks a finished training
    distributed.barrier()
    _logger.info("%s: best %s=%.4f at epoch %d; outputs in %s", model_name, cfg.train.monitor,
                 state.best_score, state.best_epoch, out_dir)
    return out_dir

