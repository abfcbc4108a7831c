"""Evaluation of the ensemble candidate (medpipe.ensemble): the same metrics.json, predictions, plots and model card
as a single model's (medpipe.evaluate.stage), so the summary, the gate, export and the registry read it as a model.

Differences, each stated in the card: no Grad-CAM (a mean of two networks has no one last convolution whose
gradients explain its decision; the members' cards show theirs), no training curves, and no prior correction
(see `_PRIOR_NOTE`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from medpipe.config import Config, config_to_dict
from medpipe.contracts import MetricsReport, read_metrics
from medpipe.data.cache import load_cache
from medpipe.ensemble import ENSEMBLE_NAME, load_ensemble
from medpipe.evaluate.card import write_model_card
from medpipe.evaluate.predict import resolve_device, tta_name
from medpipe.evaluate.stage import _baseline_class, _check_compatible, _evaluate_splits, _split_counts
from medpipe.fileio import sha256_file
from medpipe.run_folder import CARD_NAME, METRICS_NAME

__all__ = ["evaluate_ensemble"]

_logger = logging.getLogger(__name__)

# Each member's factors move its own outputs to its training prevalence; the mean of the members' outputs has no
# exact factors of that kind (renormalise(f * mean p) is not the mean of renormalise(f_m * p_m)), so none are made
# up: the ensemble is scored without risk columns, as a model from before prior correction.
_PRIOR_NOTE = ("none: the mean of the members' outputs has no exact prior-correction factors (each member's move "
               "its own outputs); scored without risk columns")
_GRADCAM_NOTE = ("Grad-CAM: not drawn for the ensemble. A mean of several networks has no single last convolution "
                 "whose gradients explain its decision; the members' model cards show where each found its evidence.")


def _member_facts(member_metrics: dict[str, Path]) -> dict[str, Any]:
    """The ensemble's training facts: its members, and the guard on the best epoch (medpipe.selection) over them:
    False when any member is collapsed (the gate refuses it too), True when all qualified, else None."""
    reports = {name: read_metrics(path) for name, path in member_metrics.items()}
    qualified = {name: (r.training or {}).get("best_epoch_qualified") for name, r in reports.items()}
    verdict = (False if False in qualified.values() else True if all(qualified.values()) else None)
    states = ", ".join(f"{name} {'collapsed' if q is False else 'qualified' if q else 'not judged'}"
                       for name, q in qualified.items())
    return {"members": list(reports), "member_epochs": {n: r.epoch for n, r in reports.items()},
            "best_epoch_qualified": verdict, "qualification": {"reason": f"members: {states}"}}


def evaluate_ensemble(record_path: str | Path, cache_dir: str | Path, cfg: Config, out_dir: str | Path,
                      member_metrics: dict[str, Path]) -> Path:
    """Evaluate the ensemble of `record_path` (ensemble.json) on the cached splits, like `evaluate_model`.

    Writes `predictions_<split>.csv`, `plots/` (no Grad-CAM), `model_card.md` and `metrics.json` last into
    `out_dir`. The members' probabilities are computed again (with evaluate.tta when set), not read from their
    CSVs, which hold 6 decimals; the outside-region check needs the model anyway.

    Args:
        record_path: models/ensemble/ensemble.json (`medpipe.ensemble.write_ensemble_record`).
        cache_dir: the run's cache.
        cfg: the configuration (as `evaluate_model`).
        out_dir: the evaluation folder.
        member_metrics: member name -> its metrics.json (for the guard on the members' best epochs).

    Returns:
        The metrics.json path.
    """
    record_path, cache_dir, out = Path(record_path), Path(cache_dir), Path(out_dir)
    device = resolve_device(cfg.train.device)
    model, record = load_ensemble(record_path, device)
    data = load_cache(cache_dir)
    _check_compatible(record.to_dict(), data, record_path, cache_dir)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    without_gradcam = dataclasses.replace(cfg, evaluate=dataclasses.replace(cfg.evaluate, explain_per_class=0))
    splits, plot_paths = _evaluate_splits(model, data, without_gradcam, device, out, _baseline_class(data), None)
    members = [m["model"] for m in record.members]
    report = MetricsReport(
        model=ENSEMBLE_NAME, classes=list(data.classes), manifest_hash=data.manifest_hash,
        checkpoint_manifest_hash=record.manifest_hash,
        checkpoint=Path(os.path.relpath(record_path, out)).as_posix(), checkpoint_sha256=sha256_file(record_path),
        preprocess_version=record.preprocess_version, device=device, tta=tta_name(cfg.evaluate.tta),
        training=_member_facts(member_metrics), split_counts=_split_counts(data),
        prior_correction={"factors": None, "source": _PRIOR_NOTE}, splits=splits)
    notes = [f"The ensemble of {', '.join(members)}: {record.combine}. Each member's own card shows its training.",
             _GRADCAM_NOTE]
    if cfg.evaluate.explain_per_class == 0:
        notes = notes[:1]
    write_model_card(out / CARD_NAME, model_name=ENSEMBLE_NAME, metrics=report.to_dict(), config=config_to_dict(cfg),
                     manifest_hash=data.manifest_hash,
                     plots={k: p.relative_to(out).as_posix() for k, p in plot_paths.items()},
                     training=report.training, notes=notes)
    path = report.write(out / METRICS_NAME)
    _logger.info("wrote %s", path)
    return path
