"""Evaluation plots: confusion matrices, ROC and precision-recall curves, reliability diagrams, training curves.

Figures are built with matplotlib's object API on an Agg canvas (no pyplot): no global figure registry, no GUI
backend, nothing left open in a long-lived Airflow worker. Every PNG is written atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medpipe.fileio import atomic_output

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["plot_confusion_matrix", "plot_roc_curves", "plot_pr_curves", "plot_reliability", "plot_history"]

_logger = logging.getLogger(__name__)

_DPI = 110
# Loss-like keys go on the left panel, every other numeric history key except these on the right.
_NOT_METRICS = frozenset({"epoch", "lr", "time_s", "seconds", "qualified"})


def _new_figure(width: float, height: float, ncols: int = 1) -> tuple["Figure", Any]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols)
    return fig, axes


def _save(fig: "Figure", path: str | Path) -> Path:
    """Write the figure as PNG atomically (temp file + os.replace), so a reader never sees half a file."""
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")  # format given: the temp name ends in .tmp
    return Path(path)


def plot_confusion_matrix(cm: np.ndarray | list[list[int]], classes: list[str], path: str | Path,
                          normalize: bool = False) -> Path:
    """Confusion matrix heat map (rows = true class, columns = predicted class).

    Args:
        cm: (C, C) counts.
        classes: class names in row/column order.
        path: PNG to write.
        normalize: divide each row by its total, so the diagonal shows per-class recall; rows without samples
            stay empty rather than showing an invented 0.

    Returns:
        The path written.
    """
    cm = np.asarray(cm, dtype=np.float64)
    if cm.shape != (len(classes), len(classes)):
        raise ValueError(f"confusion matrix shape {cm.shape} does not match {len(classes)} classes {classes}")
    if normalize:
        totals = cm.sum(axis=1, keepdims=True)
        values = np.divide(cm, totals, out=np.full_like(cm, np.nan), where=totals > 0)
    else:
        values = cm
    fig, ax = _new_figure(1.6 + 1.1 * len(classes), 1.2 + 1.0 * len(classes))
    image = ax.imshow(values, cmap="Blues", vmin=0, vmax=1 if normalize else max(cm.max(), 1))
    fig.colorbar(image, ax=ax, shrink=0.8)
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=30, ha="right")
    ax.set_yticks(ticks, classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix" + (" (row-normalised)" if normalize else ""))
    threshold = np.nanmax(values) / 2 if np.isfinite(values).any() else 0
    for i in ticks:
        for j in ticks:
            v = values[i, j]
            text = "—" if np.isnan(v) else (f"{v:.2f}" if normalize else f"{int(v)}")
            ax.text(j, i, text, ha="center", va="center", color="white" if v > threshold else "black")
    return _save(fig, path)


def _curve_plot(y_true: np.ndarray, probs: np.ndarray, classes: list[str], path: str | Path, kind: str) -> Path:
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    y_true = np.asarray(y_true)
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape != (y_true.size, len(classes)):
        raise ValueError(f"probs shape {probs.shape} does not match ({y_true.size}, {len(classes)})")
    fig, ax = _new_figure(5.5, 4.5)
    skipped = []
    for c, name in enumerate(classes):
        positives = y_true == c
        # One-vs-rest curves need positives (both) and negatives (ROC); otherwise they do not exist.
        if not positives.any() or (kind == "roc" and positives.all()):
            skipped.append(name)
            continue
        if kind == "roc":
            fpr, tpr, _ = roc_curve(positives, probs[:, c])
            ax.plot(fpr, tpr, label=f"{name} (AUC {auc(fpr, tpr):.3f}, n={int(positives.sum())})")
        else:
            precision, recall, _ = precision_recall_curve(positives, probs[:, c])
            ap = average_precision_score(positives, probs[:, c])
            ax.step(recall, precision, where="post", label=f"{name} (AP {ap:.3f}, n={int(positives.sum())})")
            # The PR curve of a random ranker is the flat line at the class prevalence.
            ax.axhline(positives.mean(), color=ax.lines[-1].get_color(), linestyle=":", linewidth=0.8)
    if kind == "roc":
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label="chance")
        ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC (one-vs-rest)")
    else:
        ax.set(xlabel="recall", ylabel="precision", title="precision-recall (one-vs-rest; dotted = prevalence)")
    ax.set(xlim=(0, 1), ylim=(0, 1.02))
    if skipped:
        # An invisible line: the note sits in the legend, where nobody misses it and it hides no curve.
        ax.plot([], [], " ", label=f"no curve (no positives or negatives): {', '.join(skipped)}")
        _logger.info("%s curves skipped for classes without positives or negatives: %s", kind, skipped)
    ax.legend(loc="lower right" if kind == "roc" else "lower left", fontsize=8)
    return _save(fig, path)


def plot_roc_curves(y_true: np.ndarray, probs: np.ndarray, classes: list[str], path: str | Path) -> Path:
    """One-vs-rest ROC curve per class, AUC in the legend; classes without positives are noted, not drawn.

    Returns:
        The path written.
    """
    return _curve_plot(y_true, probs, classes, path, "roc")


def plot_pr_curves(y_true: np.ndarray, probs: np.ndarray, classes: list[str], path: str | Path) -> Path:
    """One-vs-rest precision-recall curve per class, average precision in the legend; the prevalence of each
    class is drawn as a dotted line (what a random ranker would get). Classes without positives are noted.

    Returns:
        The path written.
    """
    return _curve_plot(y_true, probs, classes, path, "pr")


def plot_reliability(y_true: np.ndarray, probs: np.ndarray, classes: list[str], path: str | Path,
                     n_bins: int = 10) -> Path:
    """Reliability diagram, one-vs-rest per class (scikit-learn `calibration_curve`, equal-width bins): observed
    frequency against mean predicted probability; on the diagonal the probabilities mean what they say.

    Returns:
        The path written.
    """
    from sklearn.calibration import calibration_curve

    y_true, probs = np.asarray(y_true), np.asarray(probs)
    if probs.ndim != 2 or probs.shape != (y_true.size, len(classes)):
        raise ValueError(f"probs shape {probs.shape} does not match ({y_true.size}, {len(classes)})")
    fig, ax = _new_figure(5.5, 4.5)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=0.8, label="perfectly calibrated")
    for c, name in enumerate(classes):
        positives = y_true == c
        if positives.all() or not positives.any():  # a constant target has no curve worth drawing
            ax.plot([], [], " ", label=f"{name}: no curve (no positives or negatives)")
            continue
        observed, predicted = calibration_curve(positives, probs[:, c], n_bins=n_bins, strategy="uniform")
        ax.plot(predicted, observed, marker="o", markersize=3,
                label=f"{name} (mean p {probs[:, c].mean():.2f}, prevalence {positives.mean():.2f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="mean predicted probability", ylabel="observed frequency",
           title=f"reliability (one-vs-rest, {n_bins} bins)")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, path)


def _series(history: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for i, row in enumerate(history):
        value = row.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value):
            xs.append(row.get("epoch", i + 1))
            ys.append(float(value))
    return xs, ys


def plot_history(history: list[dict[str, Any]], path: str | Path) -> Path:
    """Training curves: losses on the left, validation metrics on the right (whichever the history holds).

    Args:
        history: one dict per epoch, e.g. {"epoch", "train_loss", "val_loss", "val_macro_auc",
            "val_balanced_accuracy", "lr"}; missing or null values are left out of the lines.
        path: PNG to write.

    Returns:
        The path written.

    Raises:
        ValueError: an empty history.
    """
    from matplotlib.ticker import MaxNLocator

    if not history:
        raise ValueError("training history is empty: there are no epochs to plot")
    keys = list(dict.fromkeys(k for row in history for k in row))
    loss_keys = [k for k in keys if k.endswith("loss")]
    metric_keys = [k for k in keys if k not in loss_keys and k not in _NOT_METRICS and _series(history, k)[0]]
    fig, (ax_loss, ax_metric) = _new_figure(10, 4, ncols=2)
    for key in loss_keys:
        ax_loss.plot(*_series(history, key), marker=".", label=key)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    for key in metric_keys:
        ax_metric.plot(*_series(history, key), marker=".", label=key)
    ax_metric.set(xlabel="epoch", ylabel="score", title="validation metrics")
    for ax in (ax_loss, ax_metric):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax, present in ((ax_loss, loss_keys), (ax_metric, metric_keys)):
        if present:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
    return _save(fig, path)
