"""The `meta` of a checkpoint (best.pt / last.pt): written by `medpipe.train`, read by `load_checkpoint` and through
it by evaluation and export. Stored in the checkpoint as a plain dict (`to_dict`), so a checkpoint unpickles
without this class."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from medpipe.contracts._base import Contract

__all__ = ["CheckpointMeta", "MODEL_INPUT"]

MODEL_INPUT = "float32 (N,1,H,W) raw pixels 0..255"


@dataclasses.dataclass(frozen=True, kw_only=True)
class CheckpointMeta(Contract, Mapping[str, Any]):
    """What a checkpoint's weights need to be used: the model, its classes and pixels, the data and config it was
    trained with, and the class priors it learned under.

    Also a read-only Mapping of `to_dict()`, so code that reads the meta as the dict it used to be
    (`meta["classes"]`, `meta.get("prior_correction")`) keeps working; new code reads the attributes.
    """

    KIND = "checkpoint meta"
    SCHEMA_VERSION = 1
    REQUIRED = {"model_name": str, "classes": list, "image_size": int, "manifest_hash": str, "epoch": int,
                "config": dict}
    ADDED_LATER = frozenset({"qualified", "qualification"})

    schema_version: int = SCHEMA_VERSION
    model_name: str
    classes: list[str]
    image_size: int
    manifest_hash: str  # the dataset version trained on
    epoch: int  # the epoch these weights are from
    monitor: str | None = None  # train.monitor
    best_score: float | None = None  # its value at that epoch (NaN when undefined on val)
    config: dict[str, Any]  # config_to_dict of the training config
    preprocess_version: str | None = None  # None: checkpoints older than the preprocessing identity
    input: str = MODEL_INPUT
    output: str = "logits"
    # Class priors (medpipe.priors.prior_facts); None in checkpoints written before training recorded them.
    train_class_counts: list[int] | None = None
    training_prior: list[float] | None = None
    output_prior: list[float] | None = None
    logit_offset: list[float] | None = None
    prior_correction: list[float] | None = None
    # The guard on the best epoch (medpipe.selection): whether the epoch of these weights beat chance balanced
    # accuracy on val by train.min_balanced_accuracy_margin; None = not judged (val held one class) or a checkpoint
    # from before the guard. `qualification`: {balanced_accuracy, chance, margin, required, reason}.
    qualified: bool | None = None
    qualification: dict[str, Any] | None = None

    @classmethod
    def _regenerate(cls, raw: dict[str, Any], source: str | Path | None) -> str:
        return "retrain: a checkpoint from an unknown medpipe (`medpipe train --data DATA --out OUT`)"

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())
