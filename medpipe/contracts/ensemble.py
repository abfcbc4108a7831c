"""models/ensemble/ensemble.json: the ensemble candidate's members, so that evaluation and export rebuild the same
model (medpipe.ensemble). It holds no weights: each member is a best.pt of the same run, named with its sha256."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from medpipe.contracts._base import Contract

__all__ = ["EnsembleRecord", "COMBINE"]

COMBINE = "mean of the members' probabilities (each with its own balanced-decision logit offset)"


@dataclasses.dataclass(frozen=True, kw_only=True)
class EnsembleRecord(Contract):
    """The members of an ensemble and what they share (classes, pixels, data)."""

    KIND = "ensemble.json"
    SCHEMA_VERSION = 1
    REQUIRED = {"members": list, "classes": list, "image_size": int}

    schema_version: int = SCHEMA_VERSION
    model_name: str = "ensemble"
    # [{"model": "resnet18", "checkpoint": "../resnet18/best.pt" (relative to this file), "checkpoint_sha256"}]
    members: list[dict[str, Any]]
    combine: str = COMBINE
    classes: list[str]
    image_size: int
    manifest_hash: str | None = None  # the dataset version the members were trained on
    preprocess_version: str | None = None

    @classmethod
    def _regenerate(cls, raw: dict[str, Any], source: str | Path | None) -> str:
        return "run the ensemble stage again (`medpipe run --resume --out RUN` after removing models/ensemble/)"
