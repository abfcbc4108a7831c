"""Ensemble vs the best single model, with and without flip TTA, on one split of a finished run (issue #15 item 5).

Loads the run's best checkpoints, scores the chosen split from the run's cache four ways per candidate (each
model and the ensemble, TTA off and on: `medpipe.evaluate.predict.predict_probs`, the function evaluation uses),
and prints each candidate's macro AUC and balanced accuracy with 95 % patient-bootstrap intervals, then the paired
differences over the same resampled patients (`paired_difference_intervals`, what the gate uses):
  - ensemble minus the best single model (best = higher macro AUC on the *selection* split, `--select-on`,
    so the held-out split never picks the model it is then scored on);
  - each candidate with TTA minus the same candidate without.

Protocol (README "Results"): choose on the dev split's val (`--split val`), then report the held-out split once
(`--split test --select-on val`) with the settings chosen before looking at it.

Usage:
  python bench/compare_candidates.py --run runs/dev-scratch --split val [--resamples 2000] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from medpipe.data.cache import cache_dir_for, load_cache  # noqa: E402
from medpipe.ensemble import ensemble_module  # noqa: E402
from medpipe.evaluate.metrics import compute_metrics  # noqa: E402
from medpipe.evaluate.predict import predict_probs  # noqa: E402
from medpipe.evaluate.uncertainty import bootstrap_intervals, paired_difference_intervals  # noqa: E402
from medpipe.run_folder import RunFolder  # noqa: E402
from medpipe.train import load_checkpoint  # noqa: E402


def _score(models: dict[str, Any], images: np.ndarray, device: str) -> dict[tuple[str, bool], np.ndarray]:
    members = list(models.values())
    candidates = {**models, "ensemble": ensemble_module(members)}
    return {(name, tta): predict_probs(model, images, device=device, tta=tta)
            for name, model in candidates.items() for tta in (False, True)}


def _fmt(value: float | None, interval: list[float] | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    text = f"{value:+.3f}" if signed else f"{value:.3f}"
    if interval:
        text += f" ({interval[0]:+.3f}..{interval[1]:+.3f})" if signed else f" ({interval[0]:.3f}-{interval[1]:.3f})"
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="a finished `medpipe run` folder with two or more models")
    parser.add_argument("--split", default="val", help="split scored (default val)")
    parser.add_argument("--select-on", default="val", help="split on which the best single model is chosen")
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write every figure to this JSON file")
    args = parser.parse_args(argv)

    run = RunFolder.open(args.run)
    cfg = run.config()
    identity = run.identity()
    if identity is None:
        raise SystemExit(f"{run.record_path} has no identity: rerun the run with this medpipe")
    data = load_cache(cache_dir_for(identity.data_manifest_hash, cfg))
    names = [n for n in cfg.models.names if run.checkpoint(n).is_file()]
    if len(names) < 2:
        raise SystemExit(f"{args.run}: an ensemble needs two trained models, found {names}")
    models = {n: load_checkpoint(run.checkpoint(n), args.device)[0] for n in names}

    split = data.splits[args.split]
    probs = _score(models, split.images, args.device)
    select = data.splits[args.select_on]
    selection_auc = {n: compute_metrics(select.labels, probs[(n, False)] if args.select_on == args.split
                                        else predict_probs(m, select.images, args.device), data.classes)["macro_auc"]
                     for n, m in models.items()}
    best = max(selection_auc, key=lambda n: selection_auc[n])
    labels, patients = np.asarray(split.labels), np.asarray(split.patients)
    report: dict[str, Any] = {"run": str(args.run), "split": args.split, "images": int(labels.size),
                              "patients": int(np.unique(patients).size), "best_single": best,
                              "selected_on": args.select_on, "selection_macro_auc": selection_auc,
                              "candidates": {}, "paired": {}}
    print(f"{args.run} split={args.split}: {labels.size} images, {report['patients']} patients; best single model "
          f"(macro AUC on {args.select_on}): {best}")
    print(f"{'candidate':<22} {'macro AUC (95% CI)':<26} balanced accuracy (95% CI)")
    for (name, tta), p in probs.items():
        point = compute_metrics(labels, p, data.classes)
        ci = bootstrap_intervals(labels, p, patients, resamples=args.resamples)
        label = f"{name}{' +TTA' if tta else ''}"
        report["candidates"][label] = {"macro_auc": point["macro_auc"], "macro_auc_ci": ci["macro_auc"],
                                       "balanced_accuracy": point["balanced_accuracy"],
                                       "balanced_accuracy_ci": ci["balanced_accuracy"]}
        print(f"{label:<22} {_fmt(point['macro_auc'], ci['macro_auc']):<26} "
              f"{_fmt(point['balanced_accuracy'], ci['balanced_accuracy'])}")
    pairs = [(f"ensemble - {best}", ("ensemble", False), (best, False)),
             (f"ensemble+TTA - {best}", ("ensemble", True), (best, False)),
             *[(f"{n} TTA - no TTA", (n, True), (n, False)) for n in [*names, "ensemble"]]]
    print("paired differences (bootstrap over patients)")
    for label, a, b in pairs:
        diff = paired_difference_intervals(labels, probs[a], probs[b], patients, resamples=args.resamples)
        report["paired"][label] = {k: diff[k] for k in ("macro_auc", "balanced_accuracy")}
        auc, bal = diff["macro_auc"] or {}, diff["balanced_accuracy"] or {}
        print(f"  {label:<28} macro AUC {_fmt(auc.get('difference'), auc.get('interval'), True):<26} "
              f"balanced acc {_fmt(bal.get('difference'), bal.get('interval'), True)}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
