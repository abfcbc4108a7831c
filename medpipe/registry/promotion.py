"""Who may become champion: a version whose folder holds a passed gate verdict for that model, or one promoted by hand.

Before this, `medpipe export --model custom_cnn` (which skips the gate) followed by `medpipe publish` made that
model the champion without a word. Now publishing reads the version folder's gate.json (`GateDecision`, copied
there by export from the run): only a decision that passed with this model as its challenger moves the champion
pointer by itself. Anything else (no gate.json, a failed gate, another model's verdict, an unreadable file) is
published, the pointer stays, and the message says why and how to promote it anyway (`medpipe publish --promote`).
A manual promotion is recorded in champion.json (`promotion: "manual"`, `promoted_without_gate: true`) so the
Models page and `medpipe models show` can say the champion never passed a gate.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpipe.contracts import ContractError, GateDecision

__all__ = ["GATE_FILE", "GateVerdict", "PROMOTE_HINT", "gate_verdict", "promotion_record"]

GATE_FILE = "gate.json"  # medpipe.run_folder.GATE_NAME; not imported from there: the registry stays below run folders
PROMOTE_HINT = "medpipe publish --promote"


@dataclass(frozen=True)
class GateVerdict:
    """Whether a version folder may become champion on its own, and why (a sentence naming the file)."""

    passed: bool
    reason: str


def gate_verdict(version_dir: str | Path, model_name: str) -> GateVerdict:
    """Read `version_dir`/gate.json and decide whether it is a passed verdict for `model_name`.

    Never raises for a missing or broken gate.json: that is a verdict too ("no passed gate"), and the version is
    still published; only its promotion depends on this.
    """
    path = Path(version_dir) / GATE_FILE
    if not path.is_file():
        return GateVerdict(False, f"{path} does not exist: the version was exported without a gate decision")
    try:
        decision = GateDecision.read(path)
    except ContractError as exc:
        return GateVerdict(False, f"{path} is not a readable gate decision: {exc}")
    if decision.challenger != model_name:
        return _other_model(path, decision, model_name)
    if not decision.passed:
        reasons = "; ".join(str(r) for r in decision.reasons) or "no reason recorded"
        return GateVerdict(False, f"{path}: challenger {model_name} did not pass the gate ({reasons})")
    return GateVerdict(True, f"{path}: challenger {model_name} passed the gate")


def _other_model(path: Path, decision: GateDecision, model_name: str) -> GateVerdict:
    """A verdict about another model (e.g. `export --model resnet18` after the gate chose custom_cnn)."""
    outcome = "passed" if decision.passed else "failed"
    return GateVerdict(False, f"{path} is the gate decision for {decision.challenger} ({outcome}), not for "
                              f"{model_name}: {model_name} never passed a gate")


def promotion_record(verdict: GateVerdict, promote: bool) -> dict[str, Any]:
    """What champion.json says about how the version got there."""
    if verdict.passed:
        return {"promotion": "gate", "promoted_without_gate": False, "promotion_reason": verdict.reason}
    if not promote:
        raise ValueError("promotion_record: a version without a passed gate becomes champion only with promote=True")
    return {"promotion": "manual", "promoted_without_gate": True,
            "promotion_reason": f"promoted by hand ({PROMOTE_HINT}) without a passed gate: {verdict.reason}"}
