"""Evaluation stage: a checkpoint on the cached val/test arrays -> metrics.json, plots, predictions, model card.

Every number is reported beside the majority-class baseline (the class most frequent in the training split),
and metrics that do not exist on a split are null, not guessed.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from medpipe.config import Config, config_to_dict
from medpipe.contracts import MetricsReport
from medpipe.data.cache import load_cache
from medpipe.evaluate.calibration import calibration_metrics
from medpipe.evaluate.card import write_model_card
from medpipe.evaluate.metrics import compute_metrics, majority_class
from medpipe.evaluate.explain import plot_grad_cam
from medpipe.evaluate.reliance import outside_region_check
from medpipe.evaluate.uncertainty import bootstrap_intervals
from medpipe.evaluate.plots import (plot_confusion_matrix, plot_history, plot_pr_curves, plot_reliability,
                                    plot_roc_curves)
from medpipe.evaluate.predict import predict_probs, resolve_device, tta_name
from medpipe.fileio import atomic_output, atomic_write_text, sha256_file
from medpipe.preprocess import PREPROCESS_VERSION, preprocess_options
from medpipe.priors import checkpoint_prior_correction
from medpipe.run_folder import CARD_NAME, HISTORY_NAME, HISTORY_PLOT_NAME, METRICS_NAME
from medpipe.train import load_checkpoint

__all__ = ["evaluate_model", "read_predictions", "read_prediction_patients", "METRICS_NAME", "CARD_NAME"]

_logger = logging.getLogger(__name__)



def _check_compatible(meta: dict[str, Any], data: Any, checkpoint: Path, cache_dir: Path) -> None:
    """Refuse to score a cache the model cannot read the same way it was trained."""
    if list(meta["classes"]) != list(data.classes):
        raise ValueError(
            f"checkpoint {checkpoint} predicts classes {list(meta['classes'])} but cache {cache_dir} holds "
            f"{list(data.classes)}; evaluate on a cache built with the same data.classes"
        )
    if int(meta["image_size"]) != int(data.image_size):
        raise ValueError(
            f"checkpoint {checkpoint} was trained on {meta['image_size']} px images but cache {cache_dir} holds "
            f"{data.image_size} px; build the cache with data.image_size={meta['image_size']}"
        )
    trained_on = str(meta.get("preprocess_version") or PREPROCESS_VERSION)
    if trained_on != data.preprocessing:
        wanted = preprocess_options(trained_on)["largest_region_only"]  # raises for an id this medpipe lacks
        raise ValueError(
            f"checkpoint {checkpoint} was trained on pixels of preprocessing {trained_on!r} but cache {cache_dir} "
            f"holds {data.preprocessing!r}; build the cache with data.largest_region_only={str(wanted).lower()}"
        )
    if meta.get("manifest_hash") != data.manifest_hash:
        # Legitimate (re-scoring a champion on a newer dataset version), but worth saying.
        _logger.info("checkpoint %s was trained on dataset %s, evaluating on dataset %s",
                     checkpoint, meta.get("manifest_hash"), data.manifest_hash)


def _write_predictions(path: Path, rels: list[str], patients: list[str], labels: np.ndarray, probs: np.ndarray,
                       classes: list[str]) -> Path:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["rel", "patient", "true", "predicted", *(f"prob_{c}" for c in classes)])
    predicted = probs.argmax(axis=1)
    for rel, patient, label, pred, row in zip(rels, patients, labels, predicted, probs):
        writer.writerow([rel, patient, classes[int(label)], classes[int(pred)], *(f"{p:.6f}" for p in row)])
    return atomic_write_text(path, buffer.getvalue())


def read_prediction_patients(metrics_path: str | Path, split: str) -> dict[str, str] | None:
    """rel -> patient id from predictions_<split>.csv (the ids the evaluation's bootstrap grouped by, DICOM
    PatientIDs included); None when there is no such file or it predates the patient column."""
    path = Path(metrics_path).parent / f"predictions_{split}.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {row["rel"]: row["patient"] for row in rows} if rows and "patient" in rows[0] else None


def read_predictions(metrics_path: str | Path, split: str,
                     classes: list[str]) -> dict[str, tuple[str, list[float]]] | None:
    """rel -> (true class, probabilities in `classes` order) from the predictions_<split>.csv that evaluation
    wrote beside `metrics_path`; None when there is none."""
    path = Path(metrics_path).parent / f"predictions_{split}.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as handle:
        return {row["rel"]: (row["true"], [float(row[f"prob_{c}"]) for c in classes]) for row in csv.DictReader(handle)}


def _split_plots(split: str, labels: np.ndarray, probs: np.ndarray, metrics: dict[str, Any],
                 classes: list[str], plots_dir: Path) -> dict[str, Path]:
    cm = metrics["confusion_matrix"]
    return {
        f"{split}_confusion": plot_confusion_matrix(cm, classes, plots_dir / f"{split}_confusion.png", False),
        f"{split}_confusion_normalized": plot_confusion_matrix(
            cm, classes, plots_dir / f"{split}_confusion_normalized.png", True),
        f"{split}_roc": plot_roc_curves(labels, probs, classes, plots_dir / f"{split}_roc.png"),
        f"{split}_pr": plot_pr_curves(labels, probs, classes, plots_dir / f"{split}_pr.png"),
        f"{split}_reliability": plot_reliability(labels, probs, classes, plots_dir / f"{split}_reliability.png"),
    }


def _read_training_summary(run_dir: Path) -> dict[str, Any] | None:
    """The history.json that train_model writes beside the checkpoint: {"epochs_run", ..., "history": [...]}."""
    path = run_dir / HISTORY_NAME
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        # The card can live without training curves; the metrics must not be blocked by them.
        _logger.warning("skipping training history %s: cannot read it (%s)", path, exc)
        return None
    summary = content if isinstance(content, dict) else {"history": content}
    history = summary.get("history")
    if not isinstance(history, list) or not all(isinstance(row, dict) for row in history):
        _logger.warning("skipping training history %s: expected a 'history' list of per-epoch objects", path)
        return None
    return summary


def _history_plot(run_dir: Path, history: list[dict[str, Any]] | None, plots_dir: Path) -> Path | None:
    """Copy the training run's history.png, or draw it from history.json when only that exists."""
    target = plots_dir / HISTORY_PLOT_NAME
    source = run_dir / HISTORY_PLOT_NAME
    if source.is_file():
        with atomic_output(target) as tmp:
            shutil.copyfile(source, tmp)
        return target
    if history:
        return plot_history(history, target)
    return None


def _finite_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and np.isfinite(value) else None


def _training_facts(meta: dict[str, Any], summary: dict[str, Any] | None) -> dict[str, Any]:
    summary = summary or {}
    history = summary.get("history")
    epochs_run = summary.get("epochs_run", len(history) if history is not None else None)
    return {
        "epochs_run": epochs_run,
        "best_epoch": summary.get("best_epoch", meta.get("epoch")),
        "stopped_early": summary.get("stopped_early"),
        "monitor": meta.get("monitor"),
        # NaN when the monitored metric never existed on val (e.g. one class only); JSON has null for that.
        "best_score": _finite_or_none(meta.get("best_score")),
        "train_images": summary.get("train_images"),
        "preprocess_version": meta.get("preprocess_version"),
        # The class balance the model learned under (sampling share x loss weight); None for older checkpoints.
        "training_prior": meta.get("training_prior"),
        "logit_offset": meta.get("logit_offset"),  # added to the logits in evaluation and export (balanced decision)
        # The guard on the best epoch (medpipe.selection): False = no epoch beat chance by the margin, the gate
        # refuses the model; None = not judged or a checkpoint from before the guard.
        "best_epoch_qualified": meta.get("qualified"),
        "qualification": meta.get("qualification"),
    }


def _baseline_class(data: Any) -> int | None:
    """The baseline a deployer could actually have built: always answer the TRAINING majority class."""
    train = data.splits.get("train")
    return majority_class(train.labels, len(data.classes)) if train is not None and len(train.labels) else None


def _split_counts(data: Any) -> dict[str, dict[str, int]]:
    counts = {}
    for name, arrays in data.splits.items():
        per_class = np.bincount(np.asarray(arrays.labels, dtype=np.int64), minlength=len(data.classes))
        counts[name] = {c: int(n) for c, n in zip(data.classes, per_class)}
    return counts


def _evaluate_splits(model: Any, data: Any, cfg: Config, device: str, out: Path, baseline_class: int | None,
                     prior_correction: list[float] | None) -> tuple[dict[str, Any], dict[str, Path]]:
    classes = list(data.classes)
    results: dict[str, Any] = {}
    plots: dict[str, Path] = {}
    for split in cfg.evaluate.splits:
        arrays = data.splits.get(split)
        if arrays is None or len(arrays.labels) == 0:
            _logger.info("split %r is not in the cache (or empty): skipped", split)
            continue
        labels = np.asarray(arrays.labels, dtype=np.int64)
        probs = predict_probs(model, arrays.images, device, cfg.train.eval_batch_size, tta=cfg.evaluate.tta)
        results[split] = compute_metrics(labels, probs, classes, baseline_class)
        results[split]["calibration"] = calibration_metrics(labels, probs, classes, prior_correction=prior_correction)
        results[split]["confidence_intervals"] = bootstrap_intervals(
            labels, probs, list(arrays.patients), resamples=cfg.evaluate.bootstrap_resamples)
        if cfg.evaluate.outside_region_check:
            results[split]["outside_region"] = outside_region_check(
                model, arrays.images, labels, probs, list(arrays.patients), classes, device,
                cfg.train.eval_batch_size, cfg.evaluate.bootstrap_resamples, tta=cfg.evaluate.tta)
        _write_predictions(out / f"predictions_{split}.csv", list(arrays.rels), list(arrays.patients), labels, probs,
                           classes)
        plots.update(_split_plots(split, labels, probs, results[split], classes, out / "plots"))
        if cfg.evaluate.explain_per_class:  # on the image as it is, also with evaluate.tta: one map per image
            gradcam = plot_grad_cam(model, arrays.images, labels, probs, classes,
                                    out / "plots" / f"{split}_gradcam.png", cfg.evaluate.explain_per_class)
            if gradcam is not None:
                plots[f"{split}_gradcam"] = gradcam
        _logger.info("%s: macro AUC %s, balanced accuracy %.3f (baseline %.3f)", split,
                     results[split]["macro_auc"], results[split]["balanced_accuracy"],
                     results[split]["baseline"]["balanced_accuracy"])
    if not results:
        raise ValueError(f"none of the splits {list(cfg.evaluate.splits)} (evaluate.splits) is in the cache; "
                         f"it holds {sorted(data.splits)}")
    return results, plots


def evaluate_model(checkpoint: str | Path, cache_dir: str | Path, cfg: Config, out_dir: str | Path) -> Path:
    """Evaluate a trained checkpoint on the cached splits listed in `cfg.evaluate.splits`.

    Writes into `out_dir`: `plots/<split>_{confusion,confusion_normalized,roc,pr,reliability,gradcam}.png`
    (+ `plots/history.png` when the training run left one), `predictions_<split>.csv`, `model_card.md`, and
    `metrics.json` last, so a metrics.json on disk means the evaluation finished.

    Args:
        checkpoint: a `best.pt` / `last.pt` written by `medpipe.train`.
        cache_dir: a cache folder written by `medpipe.data.cache.build_cache`.
        cfg: the configuration (evaluate.splits, train.device, train.eval_batch_size are used).
        out_dir: the evaluation folder.

    Returns:
        The metrics.json path.

    Raises:
        ValueError: classes or image size of the checkpoint and the cache disagree, or no requested split exists.
    """
    checkpoint, cache_dir, out = Path(checkpoint), Path(cache_dir), Path(out_dir)
    device = resolve_device(cfg.train.device)
    model, meta = load_checkpoint(checkpoint, device)
    data = load_cache(cache_dir)
    _check_compatible(meta, data, checkpoint, cache_dir)
    classes = list(data.classes)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    prior_correction, prior_source = checkpoint_prior_correction(meta, data)
    splits, plot_paths = _evaluate_splits(model, data, cfg, device, out, _baseline_class(data), prior_correction)

    summary = _read_training_summary(checkpoint.parent)
    history_png = _history_plot(checkpoint.parent, summary and summary["history"], out / "plots")
    if history_png is not None:
        plot_paths["history"] = history_png
    report = MetricsReport(
        model=meta.model_name,
        classes=classes,
        manifest_hash=data.manifest_hash,
        checkpoint_manifest_hash=meta.manifest_hash,
        # Relative to out_dir, so the folder can be moved or published as a whole.
        checkpoint=Path(os.path.relpath(checkpoint, out)).as_posix(),
        checkpoint_sha256=sha256_file(checkpoint),
        epoch=meta.epoch,
        preprocess_version=meta.preprocess_version,
        device=device,
        tta=tta_name(cfg.evaluate.tta),
        training=_training_facts(meta, summary),
        split_counts=_split_counts(data),
        # Multiply the outputs by these and renormalise to read them as probabilities at the training
        # prevalence (medpipe.priors); the arg-max decision uses the outputs as they are.
        prior_correction={"factors": prior_correction, "source": prior_source,
                          "training_prior": meta.training_prior, "train_class_counts": meta.train_class_counts},
        splits=splits,
    )
    training_config = meta.get("config") if isinstance(meta.get("config"), dict) else config_to_dict(cfg)
    write_model_card(
        out / CARD_NAME, model_name=meta["model_name"], metrics=report.to_dict(), config=training_config,
        manifest_hash=data.manifest_hash, plots={k: p.relative_to(out).as_posix() for k, p in plot_paths.items()},
        training=report.training,
    )
    path = report.write(out / METRICS_NAME)
    _logger.info("wrote %s", path)
    return path
