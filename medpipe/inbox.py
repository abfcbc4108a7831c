"""New image folders scored as they arrive: an inbox of batches, each scored once per model version.

An inbox is a local folder or an `s3://bucket/prefix` (opened like the model store). A batch is a folder directly
under it, `<inbox>/<batch>/…images…`, and it is complete when `<batch>/_READY` exists: the exporting tool writes
that marker LAST, after every image, so a folder still being written is never touched. (An empty `_READY` is
enough; its content is ignored.)

Each batch is scored into the model store under `scores/<model>/<version>/<batch>/`: `errors.csv`,
`summary.json`, then `predictions.csv` LAST — its presence means "this version scored this batch". A batch
already scored by the current version is never scored again; one scored by an earlier version is rescored only
with `rescore=True` (off by default: a new champion does not redo the past unless asked). A scored batch is never
rewritten.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import json
import logging
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.config import Config, StoreConfig
from medpipe.drift import REFERENCE_NAME, batch_drift
from medpipe.fileio import atomic_write_text
from medpipe.onnx_runtime import read_file_metadata
from medpipe.preprocess import load_image, preprocess_options
from medpipe.score import errors_path_for, score_folder
from medpipe.store import LocalStore, Store, open_store, validate_key

__all__ = ["READY_MARKER", "InboxError", "ScoredBatch", "open_inbox", "ready_batches", "pending_batches",
           "scores_prefix", "score_batch", "read_reference"]

_logger = logging.getLogger(__name__)

READY_MARKER = "_READY"
_PREDICTIONS, _ERRORS, _SUMMARY = "predictions.csv", "errors.csv", "summary.json"


class InboxError(RuntimeError):
    """An inbox or batch cannot be used as asked (named, with what to do)."""


@dataclass(frozen=True)
class ScoredBatch:
    batch: str
    prefix: str  # scores/<model>/<version>/<batch>/ in the model store
    status: str  # "scored" or "already scored"
    summary: dict[str, Any]


def open_inbox(uri: str, store_cfg: StoreConfig) -> Store:
    """The inbox as a store: a local folder, or an S3 prefix reached with the model store's endpoint and timeouts."""
    if not uri.strip():
        raise InboxError("no inbox given: set MEDPIPE_INBOX (a folder or s3://bucket/prefix) or the DAG's inbox param")
    if "://" not in uri and not Path(uri).expanduser().is_dir():
        raise InboxError(f"inbox {uri} does not exist or is not a folder")
    return open_store(dataclasses.replace(store_cfg, uri=uri))


def ready_batches(inbox: Store) -> list[str]:
    """Names of the complete batches (a `<batch>/_READY` marker), sorted."""
    names = set()
    for key in inbox.list(""):
        parts = key.split("/")
        if len(parts) == 2 and parts[1] == READY_MARKER:
            try:
                scores_prefix("m", "v", parts[0])
            except ValueError as exc:  # a name that cannot be a store key: reported, the other batches go on
                _logger.warning("inbox %s: batch %r skipped: %s", inbox.uri(), parts[0], exc)
                continue
            names.add(parts[0])
    return sorted(names)


def scores_prefix(model_name: str, version: str, batch: str) -> str:
    prefix = f"scores/{model_name}/{version}/{batch}/"
    validate_key(prefix + _PREDICTIONS)
    return prefix


def _scored_by_any_version(store: Store, batch: str) -> bool:
    return any(key.endswith(f"/{batch}/{_PREDICTIONS}") and key.count("/") == 4 for key in store.list("scores/"))


def pending_batches(inbox: Store, store: Store, model_name: str, version: str, rescore: bool = False) -> list[str]:
    """Complete batches this model version has not scored; without `rescore`, also none that any version scored."""
    pending = []
    for batch in ready_batches(inbox):
        if store.exists(scores_prefix(model_name, version, batch) + _PREDICTIONS):
            continue
        if not rescore and _scored_by_any_version(store, batch):
            continue
        pending.append(batch)
    return pending


def read_reference(store: Store, model_name: str, version: str) -> dict[str, Any] | None:
    """The published version's training reference (reference.json), or None for a version without one."""
    key = f"models/{model_name}/{version}/{REFERENCE_NAME}"
    return json.loads(store.get_bytes(key)) if store.exists(key) else None


def _fetch(inbox: Store, batch: str, dest: Path) -> Path:
    """The batch's files as a local folder: the inbox folder itself when it is local, else a download."""
    if isinstance(inbox, LocalStore):
        return inbox.root / batch
    for key in inbox.list(f"{batch}/"):
        if key != f"{batch}/{READY_MARKER}":
            inbox.get_file(key, dest / key)
    return dest / batch


def _batch_profile(predictions_csv: Path, images_dir: Path, onnx_path: str | Path, cfg: Config,
                   reference: dict[str, Any] | None) -> dict[str, Any]:
    """What the batch looked like to the model: predicted-class counts, the mean of every prob_/risk_ column, and
    its drift against the model's training reference (medpipe.drift) when the model was published with one."""
    with predictions_csv.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = [c for c in (rows[0] if rows else {}) if c.startswith(("prob_", "risk_"))]
    profile: dict[str, Any] = {
        "predicted": dict(sorted(Counter(r["predicted"] for r in rows).items())),
        "mean": {c: round(sum(float(r[c]) for r in rows) / len(rows), 6) for c in columns} if rows else {}}
    if reference is None or not rows:
        profile["drift"] = {"available": False, "reason": "the model was published without a training reference"
                            if reference is None else "no image of the batch could be scored"}
        return profile
    # The images are decoded a second time here (score_folder keeps none): scoring is bound by the model (CPU, 224 px:
    # 61-139 img/s against ~3,900 img/s decoding, bench/bench_score.py), so the drift check adds little to a batch.
    meta = read_file_metadata(onnx_path)
    options = preprocess_options(meta.get("preprocess_version"))
    images = np.stack([load_image(images_dir / r["path"], int(meta["input_size"]), cfg.data.max_pixels, **options)
                       for r in rows])
    probs = np.array([[float(r[c]) for c in columns if c.startswith("prob_")] for r in rows])
    profile["drift"] = batch_drift(reference, images, probs)
    return profile


def score_batch(inbox: Store, batch: str, onnx_path: str | Path, model_name: str, version: str, store: Store,
                cfg: Config, work_dir: str | Path, reference: dict[str, Any] | None = None,
                registry_source: dict[str, Any] | None = None) -> ScoredBatch:
    """Score one complete batch with the given model and put its outputs into the store (predictions.csv last).

    `reference`: the model's training reference (its published reference.json), for the batch's drift; a batch
    over the threshold is flagged in its summary.json and in the log.
    `registry_source`: `resolve_model`'s info for `onnx_path`; without it the batch is scored as by an unverified
    model file (summary.json `verified: false`, medpipe.model_trust).

    Idempotent: a batch this version scored is returned as recorded; a retried task keeps the rows its failed try
    wrote in `work_dir` (score_folder's resume) and scores only the rest.
    """
    if batch not in ready_batches(inbox):
        raise InboxError(f"batch {batch!r} in {inbox.uri()} has no {READY_MARKER} marker: not complete, not scored")
    prefix = scores_prefix(model_name, version, batch)
    if store.exists(prefix + _PREDICTIONS):
        summary = json.loads(store.get_bytes(prefix + _SUMMARY)) if store.exists(prefix + _SUMMARY) else {}
        return ScoredBatch(batch, prefix, "already scored", summary)
    work_dir = Path(work_dir)
    images = _fetch(inbox, batch, work_dir / "images")
    output = work_dir / _PREDICTIONS
    summary = score_folder(onnx_path, images, output, cfg, resume=output.is_file(), markers=(READY_MARKER,),
                           registry_source=registry_source)
    # scored_at: when the batch's outputs were made, so a listing (the Scoring page) can show the newest first.
    record = {"batch": batch, "inbox": inbox.uri(batch), "model_name": model_name, "model_version": version,
              "scored_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              **{k: summary[k] for k in ("files", "scored", "kept", "errors", "provider", "precision", "model_file",
                                         "seconds", "verified", "verification")},
              **_batch_profile(output, images, onnx_path, cfg, reference)}
    if record["drift"].get("drifted"):
        _logger.warning("batch %s DRIFTED from the training data (PSI > %s): %s", batch, record["drift"]["threshold"],
                        record["drift"]["psi"])
    atomic_write_text(work_dir / _SUMMARY, json.dumps(record, indent=1))
    store.put_file(prefix + _ERRORS, errors_path_for(output))
    store.put_file(prefix + _SUMMARY, work_dir / _SUMMARY)
    store.put_file(prefix + _PREDICTIONS, output)  # last: marks the batch scored by this version
    if not isinstance(inbox, LocalStore):
        shutil.rmtree(work_dir / "images", ignore_errors=True)
    _logger.info("batch %s: %d images scored, %d errors -> %s", batch, summary["scored"] + summary["kept"],
                 summary["errors"], store.uri(prefix))
    return ScoredBatch(batch, prefix, "scored", record)
