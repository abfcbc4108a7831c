"""The epoch loop behind medpipe.train.train_model: device-resident data, on-device sampling and augmentation."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from medpipe import distributed
from medpipe.config import Config
from medpipe.data.augment import augment_batch, mixup, weighted_indices
from medpipe.device import is_cuda
from medpipe.evaluate.metrics import compute_metrics
from medpipe.evaluate.predict import predict_probs
from medpipe.models import build_model, load_model_state, param_groups, unfreeze_for_epoch
from medpipe.priors import checkpoint_prior_facts, class_weight_vector, sampling_weights
from medpipe.selection import chance_balanced_accuracy, is_better, qualification, replaces_best

__all__ = ["TrainingState", "run_epochs", "is_better"]  # is_better: defined in medpipe.selection

_logger = logging.getLogger(__name__)

# Training images whose activations set the averaged model's BatchNorm statistics after each epoch: 32 batches
# of 32 estimate a channel mean to ~1 % of its spread, for ~1/6 of a 2,000-image epoch's compute.
_BN_REFRESH_IMAGES = 1024


@dataclass
class TrainingState:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    generator: torch.Generator
    rng: np.random.Generator
    train_rows: np.ndarray
    x_train: torch.Tensor  # uint8 (N, 1, H, W) on the device
    y_train: torch.Tensor  # int64 (N,) on the device
    sample_weights: torch.Tensor | None
    loss_weights: torch.Tensor | None
    ema: Any = None  # torch.optim.swa_utils.AveragedModel when cfg.train.ema_decay > 0
    epoch: int = 0  # epochs completed
    best_score: float = float("nan")
    best_epoch: int = 0
    # The best epoch's `qualified` (medpipe.selection): False until an epoch is kept, and while only collapsed
    # epochs have been; None = not judged (val holds one class).
    best_qualified: bool | None = False
    bad_epochs: int = 0
    stopped_early: bool = False
    seconds: float = 0.0  # training wall time of earlier sessions of this run (kept in last.pt for --resume)
    history: list[dict] = field(default_factory=list)
    priors: dict = field(default_factory=dict)  # medpipe.priors.checkpoint_prior_facts: recorded in checkpoints
    # Under torchrun: the DistributedDataParallel wrapper that trains `model` (None in one process), and the
    # requires_grad flags it was built for (a change of them needs a new wrapper: distributed.wrap_model).
    ddp: Any = None
    ddp_trainable: tuple = ()

    @classmethod
    def create(cls, model_name: str, cfg: Config, data, train_rows: np.ndarray, device: str) -> "TrainingState":
        torch.manual_seed(cfg.train.seed)
        train = data.splits["train"]
        num_classes = len(data.classes)
        labels = train.labels[train_rows]
        model = build_model(model_name, cfg, num_classes)
        images = train.images[train_rows]
        # Normalisation from the training pixels; saved in the state dict, so ONNX carries it too.
        model.normalize.mean.fill_(float(images.mean()))
        model.normalize.std.fill_(float(images.std()) or 1.0)
        priors = checkpoint_prior_facts(cfg, data, train_rows)
        # Set before the EMA copy below, so the averaged model carries the same (constant) offset.
        model.logit_offset.offset.copy_(torch.as_tensor(priors["logit_offset"], dtype=torch.float32))
        model.to(device)
        if is_cuda(device):
            model = model.to(memory_format=torch.channels_last)
        optimizer = torch.optim.AdamW(param_groups(model, cfg), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
        scheduler = (torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.train.epochs)
                     if cfg.train.scheduler == "cosine" else None)
        generator = torch.Generator(device=device).manual_seed(cfg.train.seed)
        sample_weights = None
        if cfg.train.weighted_sampling:
            sample_weights = torch.tensor(sampling_weights(labels, num_classes), dtype=torch.float32, device=device)
        ema = None
        if cfg.train.ema_decay > 0:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            # Buffers are averaged too, but only as a start: after each epoch the BatchNorm statistics are
            # recomputed for the averaged weights (_refresh_ema_batchnorm).
            ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema_decay), use_buffers=True)
        cw = class_weight_vector(cfg.train.class_weights, labels, num_classes)
        loss_weights = None if cw is None else torch.tensor(cw, dtype=torch.float32, device=device)
        return cls(model=model, optimizer=optimizer, scheduler=scheduler, generator=generator,
                   rng=np.random.default_rng(cfg.train.seed), train_rows=train_rows,
                   x_train=torch.from_numpy(images).unsqueeze(1).to(device),
                   y_train=torch.from_numpy(labels).to(device), sample_weights=sample_weights,
                   loss_weights=loss_weights, ema=ema, priors=priors)

    @property
    def eval_model(self) -> torch.nn.Module:
        """The weights that are validated, checkpointed as best.pt and exported: the average when EMA is on."""
        return self.ema.module if self.ema is not None else self.model

    def resumable(self) -> dict:
        return {"raw_model_state": self.model.state_dict() if self.ema is not None else None,
                "ema_state": self.ema.state_dict() if self.ema is not None else None,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler else None,
                "generator": self.generator.get_state(), "rng": self.rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(), "progress": {
                    "epoch": self.epoch, "best_score": self.best_score, "best_epoch": self.best_epoch,
                    "best_qualified": self.best_qualified, "bad_epochs": self.bad_epochs,
                    "stopped_early": self.stopped_early, "seconds": self.seconds, "history": self.history}}

    def restore(self, saved: dict) -> None:
        # "model_state" holds the evaluated (averaged) weights; training resumes from the raw ones.
        load_model_state(self.model, saved.get("raw_model_state") or saved["model_state"])
        if self.ema is not None and saved.get("ema_state"):
            self.ema.load_state_dict(saved["ema_state"])
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.scheduler and saved.get("scheduler"):
            self.scheduler.load_state_dict(saved["scheduler"])
        self.generator.set_state(saved["generator"])
        self.rng.bit_generator.state = saved["rng"]
        torch.set_rng_state(saved["torch_rng"])
        progress = saved["progress"]
        if "best_qualified" not in progress:  # a run started before the guard: its best stays unjudged
            self.best_qualified = None if progress.get("best_epoch") else False
        for key, value in progress.items():
            setattr(self, key, value)

    def qualification(self, epoch: int, margin: float) -> dict | None:
        """medpipe.selection.qualification of one epoch (1-based) from its history record; None if not recorded."""
        record = next((r for r in self.history if r.get("epoch") == epoch), None)
        if record is None or "val_chance_balanced_accuracy" not in record:
            return None
        return qualification(record.get("val_balanced_accuracy"), record["val_chance_balanced_accuracy"], margin)


def _train_one_epoch(state: TrainingState, cfg: Config, device: str, num_classes: int) -> float:
    """One epoch; returns the mean training loss. Under torchrun every rank draws and augments the same GLOBAL
    batch (same seeded generators) and trains on its slice (medpipe.distributed), so a single process with the
    same seed sees the same images."""
    state.model.train()
    net = state.ddp if state.ddp is not None else state.model
    world = distributed.world()
    skipped = 0
    n = len(state.y_train)
    batch = min(cfg.train.batch_size, n)
    steps = math.ceil(n / batch)
    order = None if state.sample_weights is not None else torch.randperm(n, generator=state.generator, device=device)
    total = torch.zeros((), device=device)  # summed on the device: no host sync per step
    for step in range(steps):
        if state.sample_weights is not None:
            idx = weighted_indices(state.sample_weights, batch, state.generator)
        else:
            idx = order[step * batch:(step + 1) * batch]
        x = augment_batch(state.x_train[idx].float(), cfg.augment, state.generator)
        y = F.one_hot(state.y_train[idx], num_classes).float()
        x, y = mixup(x, y, cfg.augment.mixup_alpha if cfg.augment.enabled else 0.0, state.generator, state.rng)
        share = 1.0
        if world.size > 1:
            count = len(idx)
            if count < world.size:  # an epoch's tail too small to give every rank an image: all ranks skip it
                skipped += 1
                continue
            part = distributed.rank_slice(count, world)
            x, y = x[part], y[part]
            share = len(y) / count
        if is_cuda(device):
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=is_cuda(device)):
            logits = net(x)
        loss = F.cross_entropy(logits.float(), y, weight=state.loss_weights, label_smoothing=cfg.train.label_smoothing)
        state.optimizer.zero_grad(set_to_none=True)
        # DDP averages gradients over the ranks; weighting each rank's mean loss by its share of the global batch
        # (x world size) makes that average the gradient of the global batch's mean loss, uneven slices too.
        (loss * (share * world.size) if world.size > 1 else loss).backward()
        state.optimizer.step()
        if state.ema is not None:
            state.ema.update_parameters(state.model)  # the un-wrapped module: identical on every rank
        total += loss.detach() * share if world.size > 1 else loss.detach()
    distributed.all_reduce_sum(total)  # every rank reports the global batch's mean loss
    return float(total.item()) / max(1, steps - skipped)


def _refresh_ema_batchnorm(state: TrainingState, cfg: Config, device: str) -> None:
    """Recompute the averaged model's BatchNorm statistics with its own weights (torch's `update_bn`).

    Averaging the raw model's running statistics (AveragedModel's use_buffers) gives statistics of activations
    that the averaged weights do not produce: while the weights move fast (from random weights, at 224 px) the
    averaged model then predicts almost everything as one class (measured: dev val macro AUC 0.519 with the
    averaged statistics, 0.980 with recomputed ones, same weights). The sample is fixed (seeded), drawn as
    training draws (class-balanced under weighted sampling), without augmentation, as evaluation sees images.
    """
    from torch.optim.swa_utils import update_bn

    n = len(state.y_train)
    count = min(n, _BN_REFRESH_IMAGES)
    generator = torch.Generator(device=device).manual_seed(cfg.train.seed)  # not the training generator
    idx = (weighted_indices(state.sample_weights, count, generator) if state.sample_weights is not None
           else torch.randperm(n, generator=generator, device=device)[:count])
    batch = min(cfg.train.batch_size, count)
    memory_format = torch.channels_last if is_cuda(device) else torch.contiguous_format
    batches = (state.x_train[idx[i:i + batch]].float().contiguous(memory_format=memory_format)
               for i in range(0, count, batch))
    # bf16 on CUDA as in training (BatchNorm itself runs in fp32 under autocast).
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=is_cuda(device)):
        update_bn(batches, state.ema.module)


def _validate(state: TrainingState, cfg: Config, data, device: str) -> dict:
    val = data.splits["val"]
    probs = predict_probs(state.eval_model, val.images, device=device, batch_size=cfg.train.eval_batch_size)
    nll = -np.log(np.clip(probs[np.arange(len(val.labels)), val.labels], 1e-12, None))
    metrics = compute_metrics(val.labels, probs, data.classes)
    names = ("macro_auc", "balanced_accuracy", "f1_macro", "f1_weighted", "accuracy")
    # Chance: the majority baseline's balanced accuracy on val, which the guard on the best epoch asks to beat.
    return {"val_loss": float(nll.mean()), **{f"val_{k}": metrics[k] for k in names},
            "val_chance_balanced_accuracy": chance_balanced_accuracy(val.labels)}


def _wrap_for_ranks(state: TrainingState, device: str) -> None:
    """Under torchrun: (re)build the DDP wrapper when the trainable parameters changed (first epoch, unfreezing)."""
    if not distributed.is_distributed():
        return
    trainable = tuple(p.requires_grad for p in state.model.parameters())
    if state.ddp is None or trainable != state.ddp_trainable:
        state.ddp, state.ddp_trainable = distributed.wrap_model(state.model, device), trainable


def run_epochs(state: TrainingState, cfg: Config, data, device: str, on_best: Callable[[], None],
               on_epoch_end: Callable[[], None]) -> None:
    """Train until cfg.train.epochs or early stopping; calls on_best / on_epoch_end to checkpoint."""
    num_classes = len(data.classes)
    monitor = cfg.train.monitor
    if state.stopped_early:  # resuming a run that early stopping already ended: it stays ended
        _logger.info("training already stopped early at epoch %d; nothing to resume", state.epoch)
        return
    bar = tqdm(range(state.epoch, cfg.train.epochs), desc=f"train {type(state.model).__name__}", unit="epoch",
               disable=None if distributed.is_main() else True)
    for epoch in bar:
        stages = unfreeze_for_epoch(state.model, epoch, cfg.models.resnet18.unfreeze_every)
        _wrap_for_ranks(state, device)
        train_loss = _train_one_epoch(state, cfg, device, num_classes)
        if state.ema is not None:
            _refresh_ema_batchnorm(state, cfg, device)
        if state.scheduler is not None:
            state.scheduler.step()
        # Rank 0 validates and sends the metrics to the others (their BatchNorm running statistics are their own
        # until DDP's next forward re-broadcasts rank 0's): every rank then takes the best-epoch and early-stop
        # decisions below from the same record with the same code, so all stop at the same epoch.
        val = distributed.on_main(lambda: _validate(state, cfg, data, device), f"validate epoch {epoch + 1}")
        record = {"epoch": epoch + 1, "train_loss": train_loss, **val,
                  "lr": state.optimizer.param_groups[-1]["lr"], "trainable_stages": stages}
        state.history.append(record)
        state.epoch = epoch + 1
        score = record["val_loss"] if monitor == "loss" else record[f"val_{monitor}"]
        score = float("nan") if score is None else float(score)
        guard = state.qualification(state.epoch, cfg.train.min_balanced_accuracy_margin)
        record["qualified"] = guard["qualified"]
        if guard["qualified"] is False:
            _logger.info("epoch %d cannot become best.pt while another epoch qualifies: %s", state.epoch,
                         guard["reason"])
        if replaces_best(score, guard["qualified"], state.best_score, state.best_qualified, monitor):
            state.best_score, state.best_epoch, state.bad_epochs = score, state.epoch, 0
            state.best_qualified = guard["qualified"]
            on_best()
        else:
            state.bad_epochs += 1
        bar.set_postfix({"train_loss": f"{train_loss:.3f}", f"val_{monitor}": f"{score:.3f}"})
        _logger.info("epoch %d: train_loss %.4f val %s %.4f", state.epoch, train_loss, monitor, score)
        if state.bad_epochs >= cfg.train.patience:
            state.stopped_early = True
        on_epoch_end()
        if state.stopped_early:
            _logger.info("early stop: no %s improvement for %d epochs", monitor, cfg.train.patience)
            break
