"""Per-image predictions that travel with a published version, so that any two versions scored on the same images
can be compared pairwise (the Models page's compare view) — without shipping a file name or a patient id.

`predictions.json` (in the release folder, published beside model.onnx) holds, for the gate's split and in the
cache's image order: the true labels, the probabilities, and one integer group per patient (numbered by first
appearance, so the patient bootstrap can resample whole patients). Names and ids stay in the run folder's
predictions_<split>.csv; what identifies the images is a sha256 of their ordered relative paths, which tells
whether two versions saw the same images in the same order and nothing about any one of them.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.fileio import atomic_write_text

__all__ = ["PAIRED_SCHEMA_VERSION", "write_paired_predictions", "paired_difference"]

PAIRED_SCHEMA_VERSION = 1


def write_paired_predictions(predictions_csv: str | Path, split: str, classes: list[str], data_manifest_hash: str,
                             out_path: str | Path) -> Path:
    """Write predictions.json from evaluation's predictions_<split>.csv (columns rel, patient, true, prob_<class>).

    Raises:
        FileNotFoundError / ValueError: naming the CSV when it is missing or lacks a column.
    """
    predictions_csv = Path(predictions_csv)
    if not predictions_csv.is_file():
        raise FileNotFoundError(f"{predictions_csv} does not exist: evaluate the model on {split} first")
    with predictions_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    needed = ["rel", "patient", "true", *(f"prob_{c}" for c in classes)]
    missing = [c for c in needed if rows and c not in rows[0]]
    if not rows or missing:
        raise ValueError(f"{predictions_csv}: expected rows with columns {needed}; missing {missing or 'all rows'}")
    groups: dict[str, int] = {}
    record = {
        "schema_version": PAIRED_SCHEMA_VERSION, "split": split, "data_manifest_hash": data_manifest_hash,
        "order_sha256": hashlib.sha256("\n".join(r["rel"] for r in rows).encode()).hexdigest(),
        "classes": list(classes), "labels": [classes.index(r["true"]) for r in rows],
        "groups": [groups.setdefault(r["patient"], len(groups)) for r in rows],
        "probs": [[round(float(r[f"prob_{c}"]), 6) for c in classes] for r in rows],
    }
    return atomic_write_text(Path(out_path), json.dumps(record, separators=(",", ":")))


def paired_difference(a: dict[str, Any], b: dict[str, Any], resamples: int = 1000) -> dict[str, Any]:
    """metric(b) − metric(a) with paired patient-bootstrap intervals (medpipe.evaluate.uncertainty), for two
    predictions.json records of the same images.

    Raises:
        ValueError: saying why the two cannot be paired (another split, dataset version, image order or classes).
    """
    from medpipe.evaluate.uncertainty import paired_difference_intervals

    for key, what in (("split", "split"), ("data_manifest_hash", "dataset version"), ("classes", "classes"),
                      ("order_sha256", "images (or their order)"), ("labels", "labels")):
        if a.get(key) != b.get(key):
            raise ValueError(f"they were scored on different {what}")
    labels = np.asarray(a["labels"], dtype=np.int64)
    return paired_difference_intervals(labels, np.asarray(b["probs"]), np.asarray(a["probs"]),
                                       np.asarray(a["groups"]), resamples=resamples)
