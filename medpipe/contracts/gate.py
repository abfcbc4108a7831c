"""gate.json, the gate's decision: written by `medpipe.gate.gate_models`, read by `medpipe export`, the retrain DAG
(the same object, through XCom) and the Models page."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from medpipe.contracts._base import Contract

__all__ = ["GateDecision", "read_gate_decision"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class GateDecision(Contract):
    """Whether the challenger of a run may ship, with every check and reason."""

    KIND = "gate.json"
    SCHEMA_VERSION = 1
    REQUIRED = {"passed": bool, "challenger": str, "reasons": list}

    schema_version: int = SCHEMA_VERSION
    passed: bool
    challenger: str  # the model name picked by gate.primary_metric
    split: str | None = None  # gate.split
    primary_metric: str | None = None
    candidates: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)  # name -> {primary, metrics}
    challenger_metrics: dict[str, float | None] = dataclasses.field(default_factory=dict)  # flatten_metrics names
    champion: dict[str, Any] | None = None  # re-scored on the current split; None on a first run
    champion_comparison: dict[str, Any] | None = None  # paired intervals, challenger minus champion
    first_run: bool | None = None
    tolerance: float | None = None  # gate.champion_tolerance
    checks: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # {name, value, threshold, passed, reason}
    reasons: list[str]
    # What the decision was taken under: {"gate": the gate settings, "store": the store's URI}. A run's decision is
    # taken once; asked again under other settings, medpipe.stages.gate refuses. None in files before it.
    settings: dict[str, Any] | None = None

    @classmethod
    def _regenerate(cls, raw: dict[str, Any], source: str | Path | None) -> str:
        run = source.parent if isinstance(source, Path) else "RUN"
        return f"run `medpipe gate --run {run}` again"


def read_gate_decision(path: str | Path) -> GateDecision:
    """Read a gate.json (any version up to GateDecision.SCHEMA_VERSION).

    Raises:
        FileNotFoundError: no such file (the message says how to write it).
        ContractError: not JSON, a newer schema_version, required keys missing (see `Contract.parse`).
    """
    return GateDecision.read(path)
