"""`medpipe run`: validate -> cache -> train each model -> evaluate each -> a comparison summary."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from medpipe.config import Config, save_config
from medpipe.data.cache import build_cache
from medpipe.data.layout import patient_id
from medpipe.data.validate import format_validation_summary, validate_dataset
from medpipe.evaluate.stage import evaluate_model, read_prediction_patients, read_predictions
from medpipe.evaluate.uncertainty import paired_difference_intervals
from medpipe.fileio import atomic_write_text
from medpipe.train import train_model

__all__ = ["run_pipeline", "summarize_models", "PipelineError"]

_logger = logging.getLogger(__name__)
_SUMMARY_METRICS = ("accuracy", "balanced_accuracy", "f1_weighted", "f1_macro", "macro_auc")


class PipelineError(RuntimeError):
    """A stage refused to go on (e.g. validation found hard errors)."""


def summarize_models(metrics_paths: dict[str, Path], split: str, out_dir: Path,
                     patient_pattern: str | None = None, resamples: int = 1000,
                     data_root: str | Path | None = None) -> Path:
    """Write summary.json / summary.md: each model's metrics on `split` beside the majority-class baseline.

    With two or more models, the best (by macro AUC) is compared with the runner-up on the same images by a
    paired patient bootstrap (`patient_pattern` = data.patient_id_pattern; file stems when None), which is
    what says whether the split separates them; the separate intervals overlap far more often than that.
    `data_root` is recorded, so that `medpipe gate` / `export` on this run need no --data.
    """
    rows, baseline = {}, None
    for name, path in metrics_paths.items():
        metrics = json.loads(Path(path).read_text())
        split_metrics = metrics["splits"].get(split)
        if split_metrics is None:
            continue
        rows[name] = {k: split_metrics.get(k) for k in _SUMMARY_METRICS}
        rows[name]["recall"] = {c: v.get("recall") for c, v in split_metrics["per_class"].items()}
        ci = split_metrics.get("confidence_intervals") or {}
        rows[name]["intervals"] = {k: ci.get(k) for k in _SUMMARY_METRICS if ci.get(k)}
        baseline = split_metrics["baseline"]
    ranked = sorted(rows, key=lambda n: -(rows[n]["macro_auc"] or 0.0))
    paired = (_paired_best_vs_runner_up(metrics_paths, split, ranked[0], ranked[1], patient_pattern, resamples)
              if len(ranked) >= 2 and resamples > 0 else None)
    summary = {"split": split, "models": rows, "baseline": baseline, "best_by_macro_auc": ranked[0] if ranked else None,
               "best_vs_runner_up": paired, "metrics_files": {n: str(p) for n, p in metrics_paths.items()},
               "data_root": str(Path(data_root).resolve()) if data_root is not None else None}
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1))
    atomic_write_text(out_dir / "summary.md", render_summary_markdown(summary))
    return out_dir / "summary.json"


def _paired_best_vs_runner_up(metrics_paths: dict[str, Path], split: str, best: str, runner_up: str,
                              patient_pattern: str | None, resamples: int) -> dict | None:
    """best minus runner-up on the same images (paired patient bootstrap); None without both predictions."""
    import numpy as np

    classes = json.loads(Path(metrics_paths[best]).read_text())["classes"]
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
             "| model | " + " | ".join(_SUMMARY_METRICS) + " | recall per class |",
             "|---|" + "---|" * (len(_SUMMARY_METRICS) + 1)]
    for name, row in rows.items():
        recall = ", ".join(f"{c} {_fmt(v)}" for c, v in row["recall"].items())
        intervals = row.get("intervals", {})
        lines.append(f"| {name} | " + " | ".join(_fmt(row[k], intervals.get(k)) for k in _SUMMARY_METRICS)
                     + f" | {recall} |")
    lines.append(f"| majority baseline (always {baseline.get('majority_class', '?')}) | "
                 + " | ".join(_fmt(baseline.get(k)) for k in _SUMMARY_METRICS) + " | |")
    best = summary["best_by_macro_auc"]
    lines += ["", f"Best by macro AUC: **{best}**.{_separation_note(rows, best, summary.get('best_vs_runner_up'))} "
              "In parentheses: 95 % intervals "
              "(percentile bootstrap over patients). Accuracy alone proves nothing on imbalanced data: compare "
              "balanced accuracy and per-class recall with the baseline.", ""]
    return "\n".join(lines)


def run_pipeline(data_root: str | Path, cfg: Config, out_dir: str | Path, resume: bool = False) -> Path:
    """Run every core stage on one dataset; everything is written under out_dir.

    Returns:
        out_dir/summary.json.
    """
    from medpipe.models import check_pretrained_weights  # torch stays off the CLI's start-up path

    check_pretrained_weights(cfg)  # fail before validation and hours of training, not between the two models
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    report = validate_dataset(data_root, cfg, out_dir / "validation")
    _logger.info("validation:\n%s", format_validation_summary(report))
    if not report.ok:
        raise PipelineError(f"validation found errors; see {report.md_path}\n{format_validation_summary(report)}")
    cache_dir = build_cache(data_root, cfg)
    metrics_paths = {}
    for name in cfg.models.names:
        model_dir = out_dir / "models" / name
        done = (model_dir / "history.json").is_file()
        if not done:
            train_model(cache_dir, name, cfg, model_dir, resume=resume and (model_dir / "last.pt").exists())
        metrics_paths[name] = evaluate_model(model_dir / "best.pt", cache_dir, cfg, model_dir / "eval")
    return summarize_models(metrics_paths, cfg.evaluate.select_split, out_dir, cfg.data.patient_id_pattern,
                            cfg.evaluate.bootstrap_resamples, data_root=data_root)
