"""Read the scored inbox batches that medpipe.inbox writes into the model store; nothing here computes or writes.

Layout (below the store's prefix)::

    scores/<model_name>/<version>/<batch>/errors.csv        path, reason
                                         /summary.json      counts, predicted-class distribution, means, drift
                                         /predictions.csv   written LAST: its presence means "scored"

A batch whose summary.json cannot be read is still listed, with the problem, like a broken version on the Models
page: one bad upload never hides the other batches.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medpipe_plugin.catalog import check_segment

if TYPE_CHECKING:
    from medpipe.store import Store

__all__ = ["SCORES_PREFIX", "SCORE_FILES", "BatchView", "load_batches", "score_file_key"]

SCORES_PREFIX = "scores/"
# The only files of a batch the page hands out (medpipe.inbox writes exactly these), with their media types.
SCORE_FILES = {"summary.json": "application/json", "errors.csv": "text/csv; charset=utf-8",
               "predictions.csv": "text/csv; charset=utf-8"}


@dataclass(frozen=True)
class BatchView:
    """One batch scored by one model version, as the Scoring page shows it."""

    model_name: str
    version: str
    batch: str
    files: tuple[str, ...]
    summary: dict[str, Any] = field(default_factory=dict)
    problems: tuple[str, ...] = ()

    @property
    def complete(self) -> bool:
        return "predictions.csv" in self.files

    @property
    def scored_at(self) -> str | None:
        value = self.summary.get("scored_at")
        return str(value) if value is not None else None

    @property
    def drift(self) -> dict[str, Any]:
        value = self.summary.get("drift")
        return value if isinstance(value, dict) else {}

    @property
    def drifted(self) -> bool:
        return bool(self.drift.get("drifted"))

    @property
    def servable(self) -> bool:
        """Whether its files can be linked: every key segment passes `check_segment` (the route checks the same)."""
        try:
            score_file_key(self.model_name, self.version, self.batch, "summary.json")
        except ValueError:
            return False
        return True


def score_file_key(model_name: str, version: str, batch: str, name: str) -> str:
    """The store key of one file of a scored batch; ValueError naming the bad segment or file otherwise."""
    check_segment(model_name, "model name")
    check_segment(version, "version")
    check_segment(batch, "batch")
    if name not in SCORE_FILES:
        raise ValueError(f"invalid file {name!r}: a scored batch serves only {list(SCORE_FILES)}")
    return f"{SCORES_PREFIX}{model_name}/{version}/{batch}/{name}"


def _read_summary(store: Store, key: str, problems: list[str]) -> dict[str, Any]:
    try:
        value = json.loads(store.get_bytes(key))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        problems.append(f"{key} is not valid JSON: {exc}")
        return {}
    if not isinstance(value, dict):
        problems.append(f"{key} holds a {type(value).__name__}, expected a JSON object")
        return {}
    return value


def load_batches(store: Store) -> tuple[list[BatchView], list[str]]:
    """Every scored batch, newest first (summary.json's scored_at; batches without one after them, by name), and
    the keys under scores/ that are not inside scores/<model>/<version>/<batch>/ (other than the scoring DAG's
    scores/<run>/<file>, which belong to no batch and are left out)."""
    groups: dict[tuple[str, str, str], list[str]] = {}
    problems: list[str] = []
    for key in store.list(SCORES_PREFIX):
        parts = key[len(SCORES_PREFIX):].split("/")
        if len(parts) == 2:  # medpipe_score's folder runs (scores/<run>/<file>): scored folders, not inbox batches
            continue
        if len(parts) != 4:
            problems.append(f"{key} is not inside scores/<model>/<version>/<batch>/")
            continue
        groups.setdefault((parts[0], parts[1], parts[2]), []).append(parts[3])
    batches = []
    for (model_name, version, batch), files in groups.items():
        found: list[str] = []
        prefix = f"{SCORES_PREFIX}{model_name}/{version}/{batch}/"
        summary = _read_summary(store, prefix + "summary.json", found) if "summary.json" in files else {}
        if "predictions.csv" not in files:
            found.append("predictions.csv is missing: scoring did not finish (the batch is scored again next run)")
        batches.append(BatchView(model_name, version, batch, tuple(sorted(files)), summary, tuple(found)))
    by_name = sorted(batches, key=lambda b: (b.batch, b.model_name, b.version))
    dated = sorted((b for b in by_name if b.scored_at), key=lambda b: b.scored_at or "", reverse=True)
    return dated + [b for b in by_name if not b.scored_at], problems
