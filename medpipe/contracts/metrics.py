"""metrics.json, the evaluation's report: written by `medpipe.evaluate.evaluate_model`, read by the run summary,
the gate, export, publish, the CLI and the Models page (schema of a split in docs/stages.md)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from medpipe.contracts._base import Contract, ContractError

__all__ = ["HEADLINE_METRICS", "MetricsReport", "read_metrics"]

# The metrics every summary shows, in this order (run summary, model card, ONNX metadata, registry, Models page).
HEADLINE_METRICS = ("accuracy", "balanced_accuracy", "f1_weighted", "f1_macro", "macro_auc")


@dataclasses.dataclass(frozen=True, kw_only=True)
class MetricsReport(Contract):
    """One model evaluated on the cached splits, beside the majority-class baseline."""

    KIND = "metrics.json"
    SCHEMA_VERSION = 1
    REQUIRED = {"model": str, "classes": list, "splits": dict}
    ADDED_LATER = frozenset({"tta"})

    schema_version: int = SCHEMA_VERSION
    model: str  # the model name, e.g. "resnet18"
    classes: list[str]
    manifest_hash: str | None = None  # dataset version evaluated on
    checkpoint_manifest_hash: str | None = None  # dataset version the checkpoint was trained on
    checkpoint: str | None = None  # relative to the metrics.json folder, e.g. "../best.pt"
    checkpoint_sha256: str | None = None
    epoch: int | None = None
    preprocess_version: str | None = None
    device: str | None = None
    tta: str | None = None  # test-time augmentation of the predictions: "hflip" or "none"; None = before it existed
    training: dict[str, Any] | None = None  # epochs_run, best_epoch, monitor, best_score, ...
    split_counts: dict[str, dict[str, int]] | None = None  # split -> class -> images, train included
    prior_correction: dict[str, Any] | None = None  # factors, source, training_prior, train_class_counts
    splits: dict[str, dict[str, Any]]  # split -> `medpipe.evaluate.metrics.compute_metrics` (+ intervals, ...)

    @classmethod
    def _regenerate(cls, raw: dict[str, Any], source: str | Path | None) -> str:
        folder = source.parent if isinstance(source, Path) else None
        checkpoint = raw.get("checkpoint")
        if folder is not None and isinstance(checkpoint, str):
            checkpoint = os.path.normpath(folder / checkpoint)
        return (f"run `medpipe evaluate --checkpoint {checkpoint or 'CHECKPOINT'} --data DATA --out "
                f"{folder or 'EVAL_FOLDER'}` again")

    def split(self, name: str) -> dict[str, Any]:
        """The metrics of one split; ContractError naming the file and the splits it has when it lacks `name`."""
        values = self.splits.get(name)
        if not isinstance(values, dict):
            raise ContractError(f"{self.source or self.KIND} has no metrics for split {name!r} (it has "
                                f"{sorted(self.splits)}); set evaluate.splits to include it and "
                                f"{self._regenerate(self.to_dict(), self.source)}")
        return values

    def headline(self, split: str) -> dict[str, float | None]:
        """The HEADLINE_METRICS of one split (None where undefined)."""
        values = self.split(split)
        return {key: values.get(key) for key in HEADLINE_METRICS}

    def recall(self, split: str) -> dict[str, float | None]:
        """Recall per class on one split."""
        return {c: (m or {}).get("recall") for c, m in (self.split(split).get("per_class") or {}).items()}


def read_metrics(path: str | Path) -> MetricsReport:
    """Read a metrics.json (any version up to MetricsReport.SCHEMA_VERSION).

    Raises:
        FileNotFoundError: no such file (the message says how to write it).
        ContractError: not JSON, a newer schema_version, required keys missing (see `Contract.parse`).
    """
    return MetricsReport.read(path)
