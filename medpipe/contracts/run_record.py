"""runs/<run_id>/record.json, one retraining run as the store keeps it: written by `medpipe.run_record` (the
`record` stage, last of medpipe.stages.STAGES), read by the Runs, Compare and trend views of the Airflow plugin.

Kept beside the versions so that the UI can show every run (published or not) without reading work folders,
which live on workers and are cleaned up.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from medpipe.contracts._base import Contract

__all__ = ["RunRecord", "RUN_STATUSES"]

# passed: the gate passed (and the run published unless publishing was left out); rejected: the gate did not pass.
RUN_STATUSES = ("passed", "rejected")


@dataclasses.dataclass(frozen=True, kw_only=True)
class RunRecord(Contract):
    """What one run computed and decided (schema in docs/stages.md, "Run record")."""

    KIND = "run record"
    SCHEMA_VERSION = 1
    REQUIRED = {"run_id": str, "status": str, "models": dict, "gate": dict}

    schema_version: int = SCHEMA_VERSION
    run_id: str  # the store key segment: <run folder name>-<8 hex of run.json's sha256>
    started_at: str | None = None  # run.json's created_at (UTC, ISO 8601)
    finished_at: str | None = None  # when the record was built
    status: str  # RUN_STATUSES
    split: str | None = None  # the split the gate decided on (gate.split)
    primary_metric: str | None = None  # gate.primary_metric
    # model -> {"device", "splits": {split: {metric: {"value", "interval": [lo, hi] | None}}}}, ensemble included
    models: dict[str, dict[str, Any]]
    gate: dict[str, Any]  # {"passed", "challenger", "reasons", "champion_metric": the champion's primary, re-scored}
    champion_before: dict[str, str] | None = None  # {"model_name", "version"}: what the gate compared against
    champion_after: dict[str, str] | None = None  # the store's champion when the record was written
    published: dict[str, str] | None = None  # {"model_name", "version"} this run published, if any
    dag_id: str | None = None  # set when Airflow ran it
    dag_run_id: str | None = None
    medpipe_version: str | None = None
    code_commit: str | None = None
    data_manifest_hash: str | None = None
    config_hash: str | None = None
    stage_seconds: dict[str, float] = dataclasses.field(default_factory=dict)  # task id -> seconds
    hardware: dict[str, Any] = dataclasses.field(default_factory=dict)  # {"cpu_count", "device_kind", "gpus"}

    @classmethod
    def _regenerate(cls, raw: dict[str, Any], source: str | Path | None) -> str:
        return "it is written once by the `record` stage (`medpipe record --run RUN`); a broken one is removed by hand"

    def primary(self, model: str | None = None) -> tuple[float | None, list[float] | None]:
        """(value, interval) of the primary metric on the gate's split for `model` (default: the challenger)."""
        name = model or self.gate.get("challenger")
        entry = (((self.models.get(str(name)) or {}).get("splits") or {}).get(self.split or "") or {}).get(
            self.primary_metric or "") or {}
        return entry.get("value"), entry.get("interval")
