"""The run's summary: every model's metrics beside the majority baseline, and the best against the runner-up."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from medpipe.contracts import HEADLINE_METRICS, read_metrics
from medpipe.data.layout import patient_id
from medpipe.evaluate.stage import read_prediction_patients, read_predictions
from medpipe.evaluate.uncertainty import paired_difference_intervals
from medpipe.fileio import atomic_write_text

__all__ = ["summarize_models", "render_summary_markdown"]

_logger = logging.getLogger(__name__)


def summarize_models(metrics_paths: dict[str, Path], split: str, out_paths: tuple[Path, Path],
                     patient_pattern: str | None = None, resamples: int = 1000,
                     data_root: str | Path | None = None, relative_to: str | Path | None = None) -> Path:
    """Write `out_paths` (summary.json, summary.md): each model's metrics on `split` beside the majority baseline.

    With two or more models, the best (by macro AUC) is compared with the runner-up on the same images by a
    paired patient bootstrap (`patient_pattern` = data.patient_id_pattern; file stems when None), which is
    what says whether the split separates them; the separate intervals overlap far more often than that.
    `data_root` is recorded, so that `medpipe gate` / `export` on this run need no --data. The metrics files are
    recorded relative to `relative_to` (the run folder) when given, so a summary does not depend on where the run
    folder lies.
    """
    rows, baseline = {}, None
    for name, path in metrics_paths.items():
        report = read_metrics(path)
        if split not in report.splits:
            continue
        split_metrics = report.split(split)
        rows[name] = {**report.headline(split), "recall": report.recall(split)}
        ci = split_metrics.get("confidence_intervals") or {}
        rows[name]["intervals"] = {k: ci.get(k) for k in HEADLINE_METRICS if ci.get(k)}
        baseline = split_metrics["baseline"]
    ranked = sorted(rows, key=lambda n: -(rows[n]["macro_auc"] or 0.0))
    paired = (_paired_best_vs_runner_up(metrics_paths, split, ranked[0], ranked[1], patient_pattern, resamples)
              if len(ranked) >= 2 and resamples > 0 else None)
    summary = {"split": split, "models": rows, "baseline": baseline, "best_by_macro_auc": ranked[0] if ranked else None,
               "best_vs_runner_up": paired, "metrics_files": {n: _relative(p, relative_to) for n, p in metrics_paths.items()},
               "data_root": str(Path(data_root).resolve()) if data_root is not None else None}
    json_path, md_path = out_paths
    atomic_write_text(md_path, render_summary_markdown(summary))
    atomic_write_text(json_path, json.dumps(summary, indent=1))  # last: a summary.json marks a finished run
    return json_path


def _relative(path: str | Path, root: str | Path | None) -> str:
    return str(path) if root is None else Path(path).resolve().relative_to(Path(root).resolve()).as_posix()


def _paired_best_vs_runner_up(metrics_paths: dict[str, Path], split: str, best: str, runner_up: str,
                              patient_pattern: str | None, resamples: int) -> dict | None:
    """best minus runner-up on the same images (paired patient bootstrap); None without both predictions."""
    classes = read_metrics(metrics_paths[best]).classes
    a, b = (read_predictions(metrics_paths[name], split, classes) for name in (best, runner_up))
    if not a or not b or set(a) != set(b):
        return None
    rels = sorted(a)
    labels = np.array([classes.index(a[rel][0]) for rel in rels])
    recorded = read_prediction_patients(metrics_paths[best], split) or {}
    patients = [recorded.get(rel) or (patient_pattern and patient_id(Path(rel).name, patient_pattern))
                or Path(rel).stem for rel in rels]
    result = paired_difference_intervals(labels, np.array([a[rel][1] for rel in rels]),
                                         np.array([b[rel][1] for rel in rels]), patients, resamples=resamples)
    return {"best": best, "runner_up": runner_up, **result}


def _fmt(value, interval=None) -> str:
    text = "n/a" if value is None else f"{value:.3f}"
    return text if not interval else f"{text} ({interval[0]:.2f}–{interval[1]:.2f})"


def _paired_sentence(paired: dict, metric: str) -> str:
    entry = paired.get(metric) or {}
    if not entry.get("interval"):
        return ""
    low, high = entry["interval"]
    verdict = ("this split does not separate them" if low <= 0 <= high else
               f"{paired['best'] if low > 0 else paired['runner_up']} is ahead beyond the split's noise")
    return (f" {metric}: {entry['difference']:+.3f} (paired 95 % interval {low:+.3f} to {high:+.3f}): "
            f"{verdict}.")


def _separation_note(rows: dict, best: str | None, paired: dict | None = None) -> str:
    """Whether the split separates the best model from the runner-up: by the paired intervals of their
    differences when there are some, else by whether the runner-up lies inside the best model's own interval."""
    if paired and paired.get("macro_auc") and paired["macro_auc"].get("interval"):
        return (f" {paired['best']} minus {paired['runner_up']} on the same images ({paired['groups']} patients):"
                + _paired_sentence(paired, "macro_auc") + _paired_sentence(paired, "balanced_accuracy"))
    others = [row["macro_auc"] for name, row in rows.items() if name != best and row["macro_auc"] is not None]
    interval = rows[best].get("intervals", {}).get("macro_auc") if best else None
    if not others or not interval:
        return ""
    if max(others) >= interval[0]:
        return (" The runner-up's macro AUC lies inside the best model's 95 % interval: this split does not "
                "separate them.")
    return " The runner-up's macro AUC lies below the best model's 95 % interval."


def render_summary_markdown(summary: dict) -> str:
    split, rows, baseline = summary["split"], summary["models"], summary["baseline"] or {}
    lines = [f"# medpipe run summary ({split} split)", "",
             "| model | " + " | ".join(HEADLINE_METRICS) + " | recall per class |",
             "|---|" + "---|" * (len(HEADLINE_METRICS) + 1)]
    for name, row in rows.items():
        recall = ", ".join(f"{c} {_fmt(v)}" for c, v in row["recall"].items())
        intervals = row.get("intervals", {})
        lines.append(f"| {name} | " + " | ".join(_fmt(row[k], intervals.get(k)) for k in HEADLINE_METRICS)
                     + f" | {recall} |")
    lines.append(f"| majority baseline (always {baseline.get('majority_class', '?')}) | "
                 + " | ".join(_fmt(baseline.get(k)) for k in HEADLINE_METRICS) + " | |")
    best = summary["best_by_macro_auc"]
    lines += ["", f"Best by macro AUC: **{best}**.{_separation_note(rows, best, summary.get('best_vs_runner_up'))} "
              "In parentheses: 95 % intervals "
              "(percentile bootstrap over patients). Accuracy alone proves nothing on imbalanced data: compare "
              "balanced accuracy and per-class recall with the baseline.", ""]
    return "\n".join(lines)
