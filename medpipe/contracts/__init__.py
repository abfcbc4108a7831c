"""Typed contracts for what stages hand each other: checkpoint meta, metrics.json, gate.json,
ensemble.json, and the run record the store keeps of every run.

Each has a `schema_version`, one writer (`to_dict` / `write(path)`) and one reader (`read_metrics(path)`,
`read_gate_decision(path)`, `<Contract>.parse(raw, source)` for objects, bytes or text from elsewhere: a
checkpoint's meta, the model store, XCom). Cheap to import: no torch, no numpy.
"""

from __future__ import annotations

from medpipe.contracts._base import ContractError
from medpipe.contracts.checkpoint import CheckpointMeta
from medpipe.contracts.ensemble import EnsembleRecord
from medpipe.contracts.gate import GateDecision, read_gate_decision
from medpipe.contracts.metrics import HEADLINE_METRICS, MetricsReport, read_metrics
from medpipe.contracts.run_record import RUN_STATUSES, RunRecord

__all__ = ["CheckpointMeta", "ContractError", "EnsembleRecord", "GateDecision", "HEADLINE_METRICS", "MetricsReport",
           "RUN_STATUSES", "RunRecord", "read_gate_decision", "read_metrics"]
