"""The model card: a Markdown page saying what the model is for, what it was trained on, and how well it does
beside the majority-class baseline."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medpipe.contracts import HEADLINE_METRICS
from medpipe.fileio import atomic_write_text
from medpipe.priors import decision_is_balanced

__all__ = ["write_model_card"]

_logger = logging.getLogger(__name__)

_LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "f1_weighted": "weighted F1",
           "f1_macro": "macro F1", "macro_auc": "macro AUC (one-vs-rest)"}
_AGGREGATES = tuple((name, _LABELS[name]) for name in HEADLINE_METRICS)  # a new headline metric needs a label
_PER_CLASS = (("recall", "recall"), ("precision", "precision"), ("f1", "F1"), ("roc_auc", "AUC"),
              ("average_precision", "AP"), ("sensitivity_at_90_specificity", "sens. @ 90 % spec."),
              ("sensitivity_at_95_specificity", "sens. @ 95 % spec."))
_PLOT_TITLES = {
    "confusion": "Confusion matrix",
    "confusion_normalized": "Confusion matrix (row-normalised)",
    "roc": "ROC curves",
    "pr": "Precision-recall curves",
    "reliability": "Reliability diagram",
    "gradcam": "Grad-CAM: where the evidence was (right calls, then misses)",
}

_INTENDED_USE = """\
## Intended use and limits

- **Research use only. This is not a medical device** and must not be used for diagnosis, screening or any
  clinical decision. It has not been validated prospectively or on any population beyond its test split.
- Input: single images (mammography views in the bundled data), read as one grey channel and resized to
  {size} x {size} pixels by `medpipe.preprocess.load_image` (the same function for training, evaluation and
  scoring).
- Output: scores for {classes} under the class balance training used; the arg-max is a research label, not a
  finding. Read as probabilities only after the prior correction (Calibration below).
- **Known dataset caveat** (DDSM-derived data, such as the bundled sample): normal images and lesion
  (benign/cancer) images come from different scanning programmes (scanners, digitisers, years). A model can
  separate "normal" from the rest by acquisition artefacts rather than anatomy, so the normal-vs-lesion
  metrics below are likely optimistic. The benign-vs-cancer numbers are the more meaningful ones.
- Metrics come from a single split each; the 95 % patient-bootstrap intervals below show how little a
  small split can resolve. "sens. @ 90 % spec." is the share of a class caught by the threshold that flags at
  most 10 % of the other images: recall at the arg-max depends on the training priors, this does not.
"""


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        # Three decimals for scores; small settings (weight decay 2e-4) would read as 0.000, keep their digits.
        return f"{value:.3f}" if value == 0 or abs(value) >= 0.01 else f"{value:.3g}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return lines


def _data_section(metrics: dict[str, Any]) -> list[str]:
    classes = metrics["classes"]
    lines = ["## Data", "", f"- dataset manifest hash: `{metrics.get('manifest_hash', 'unknown')}`"]
    trained_on = metrics.get("checkpoint_manifest_hash")
    if trained_on and trained_on != metrics.get("manifest_hash"):
        lines.append(f"- **the model was trained on a different dataset version**: `{trained_on}`")
    lines += ["", "Images per class in each split:", ""]
    # Splits that were not evaluated (train) come from split_counts and go first, in pipeline order.
    counts = metrics.get("split_counts") or {}
    rows = [[split, sum(c.values()), *(c.get(name, 0) for name in classes)]
            for split, c in counts.items() if split not in metrics["splits"]]
    rows += [[split, m["n"], *(m["per_class"][c]["support"] for c in classes)]
             for split, m in metrics["splits"].items()]
    return lines + _table(["split", "n", *classes], rows) + [""]


def _calibration_lines(cal: dict[str, Any] | None, classes: list[str]) -> list[str]:
    """Brier/ECE and the mean predicted probability beside the prevalence of each class."""
    if not cal:
        return []
    mean_vs_prevalence = ", ".join(f"{c} {cal['per_class'][c]['mean_probability']:.2f} vs "
                                   f"{cal['per_class'][c]['prevalence']:.2f}" for c in classes)
    return ["", f"Calibration: Brier score {cal['brier']:.3f} (predicting the prevalence: "
            f"{cal['brier_prevalence']:.3f}; lower is better), expected calibration error {cal['ece']:.3f} "
            f"({cal['ece_bins']} bins). Mean predicted "
            f"probability vs prevalence: {mean_vs_prevalence}. Balanced sampling or class weights raise the rare "
            "classes' probabilities on purpose: read them as scores, not as risks, unless these agree."
            + _corrected_sentence(cal.get("prior_corrected"), classes)]


def _pairwise_lines(pairs: dict[str, float | None] | None) -> list[str]:
    if not pairs or len(pairs) < 2:  # two classes: the one pair is the per-class AUC already shown
        return []
    shown = "; ".join(f"{key.replace('_vs_', ' vs ')} {_fmt(value)}" for key, value in pairs.items())
    return ["", f"Pairwise ROC AUC (one class against one other, on their images only): {shown}. A pair near "
                "0.5 is told apart at chance, however high the one-vs-rest figures above."]


def _outside_region_lines(check: dict[str, Any] | None, m: dict[str, Any]) -> list[str]:
    """As is vs. with everything outside the largest bright region blacked out (medpipe.evaluate.reliance)."""
    if not check or check.get("macro_auc") is None or m.get("macro_auc") is None:
        return []
    paired = (check.get("difference") or {}).get("macro_auc") or {}
    interval = paired.get("interval")
    spread = (f" (paired 95 % interval {interval[0]:+.3f} to {interval[1]:+.3f})" if interval else "")
    return ["", f"Outside the anatomy: with everything outside each image's largest bright region (the breast, "
            f"on a mammogram) blacked out — film labels, markers, borders; {check['area_outside']:.0%} of the "
            f"image — macro AUC "
            f"{m['macro_auc']:.3f} → {check['macro_auc']:.3f}, balanced accuracy {m['balanced_accuracy']:.3f} → "
            f"{check['balanced_accuracy']:.3f}; difference {m['macro_auc'] - check['macro_auc']:+.3f}{spread}. "
            "A clear drop means part of the figures above comes from outside the anatomy, which other sites' "
            "images will not share (part of it can also be that a model trained on plain images never saw black "
            "surroundings); see the Grad-CAM grid below, and `data.largest_region_only`."]


def _corrected_sentence(corrected: dict[str, Any] | None, classes: list[str]) -> str:
    if not corrected:
        return ""
    means = ", ".join(f"{c} {corrected['mean_probability'][c]:.2f}" for c in classes)
    factors = ", ".join(f"{c} {f:.4f}" for c, f in zip(classes, corrected["factors"]))
    return (f" Moved back to the training prevalence (outputs x ({factors}), renormalised; Saerens et al. 2002, "
            f"nothing fitted on this split): Brier score {corrected['brier']:.3f}, expected calibration error "
            f"{corrected['ece']:.3f}, mean probabilities {means}. Scoring writes these as the risk_<class> columns; "
            "the predicted class stays the arg-max of the outputs.")


def _split_section(split: str, m: dict[str, Any], classes: list[str], plots: dict[str, str]) -> list[str]:
    base = m["baseline"]
    source = {"given": "training split", "split": f"{split} split"}.get(base.get("majority_source"), "unknown")
    lines = [f"## Split `{split}` (n = {m['n']})", "",
             f"Baseline: always predict **{base['majority_class']}** (the majority class of the {source}).", ""]
    if split == "val":  # training validates on val every epoch and keeps the best epoch by it
        lines += ["This split chose the checkpoint (the best epoch by the monitored metric), so its figures lean "
                  "optimistic; a `test` split reports without that choice.", ""]
    lines += _table(["metric", "model", "majority baseline"],
                    [[label, m.get(key), base.get(key)] for key, label in _AGGREGATES])
    ci = m.get("confidence_intervals") or {}
    shown = [(label, ci.get(key)) for key, label in _AGGREGATES if ci.get(key)]
    if shown:
        lines += ["", f"{ci['level']:.0%} intervals ({ci['method']}: {ci['groups']} patients, {ci['kept']} "
                  f"resamples): " + "; ".join(f"{label} {lo:.3f}–{hi:.3f}" for label, (lo, hi) in shown)
                  + ". Two models whose figures differ by less than this are not shown to differ."]
    lines += ["", "Per class (n/a = undefined on this split, e.g. a class without positives):", ""]
    rows = [[c, m["per_class"][c]["support"], *(m["per_class"][c][k] for k, _ in _PER_CLASS)] for c in classes]
    lines += _table(["class", "support", *(label for _, label in _PER_CLASS)], rows)
    lines += _pairwise_lines(m.get("pairwise_auc"))
    lines += _calibration_lines(m.get("calibration"), classes)
    lines += _outside_region_lines(m.get("outside_region"), m)
    lines += ["", "Confusion matrix (rows = true, columns = predicted):", ""]
    cm_rows = [[f"**{c}**", *row] for c, row in zip(classes, m["confusion_matrix"])]
    lines += _table(["true \\ predicted", *classes], cm_rows) + [""]
    for kind, title in _PLOT_TITLES.items():
        rel = plots.get(f"{split}_{kind}")
        if rel:
            lines += [f"![{title} ({split})]({rel})", ""]
    return lines


def _prior_text(prior: list[float] | None, classes: list[str]) -> str | None:
    if not prior or len(prior) != len(classes):
        return None
    return ", ".join(f"{c} {p:.3f}" for c, p in zip(classes, prior))


def _decision_text(offset: list[float] | None, classes: list[str]) -> str:
    if not decision_is_balanced(offset):
        return "arg-max of the outputs"
    shown = ", ".join(f"{c} {o:+.2f}" for c, o in zip(classes, offset))
    return f"under equal class priors: logit offsets {shown} (train.balanced_decision)"


def _guard_text(training: dict[str, Any]) -> str:
    qualified, facts = training.get("best_epoch_qualified"), training.get("qualification") or {}
    verdict = {True: "yes", False: "NO (collapsed)", None: "unknown"}[qualified]
    return f"{verdict}: {facts['reason']}" if facts.get("reason") else verdict


def _collapse_warning(training: dict[str, Any] | None) -> list[str]:
    """A warning at the top of the card when no training epoch beat chance (medpipe.selection)."""
    if not training or training.get("best_epoch_qualified") is not False:
        return []
    reason = (training.get("qualification") or {}).get("reason", "")
    return [f"> **Warning: collapsed model.** No training epoch beat chance balanced accuracy by "
            f"train.min_balanced_accuracy_margin; these are the weights of epoch {training.get('best_epoch')}, the "
            f"best by {training.get('monitor')}, and {reason}. The gate refuses this model.", ""]


def _config_section(config: dict[str, Any], training: dict[str, Any] | None, model_name: str,
                    tta: str | None = None) -> list[str]:
    data, train = config.get("data", {}), config.get("train", {})
    model_cfg = config.get("models", {}).get(model_name, {})
    training = training or {}
    rows = [
        ["model", model_name],
        ["model settings", ", ".join(f"{k}={v}" for k, v in model_cfg.items()) or None],
        ["classes", ", ".join(data.get("classes", [])) or None],
        ["image size", data.get("image_size")],
        ["epochs run / max", f"{_fmt(training.get('epochs_run'))} / {_fmt(train.get('epochs'))}"],
        ["best epoch", training.get("best_epoch")],
        ["best epoch beats chance (guard)", _guard_text(training)],
        ["stopped early", training.get("stopped_early")],
        ["train images used", training.get("train_images")],
        ["monitor (best score)", f"{_fmt(training.get('monitor') or train.get('monitor'))} "
                                 f"({_fmt(training.get('best_score'))})"],
        ["batch size", train.get("batch_size")],
        ["learning rate / weight decay", f"{_fmt(train.get('lr'))} / {_fmt(train.get('weight_decay'))}"],
        ["class weights", train.get("class_weights")],
        ["weighted sampling", train.get("weighted_sampling")],
        ["class balance learned (sampling x loss weight)", _prior_text(training.get("training_prior"),
                                                                        data.get("classes", []))],
        ["decision", _decision_text(training.get("logit_offset"), data.get("classes", []))],
        ["label smoothing", train.get("label_smoothing")],
        ["augmentation", {True: "on", False: "off"}.get(config.get("augment", {}).get("enabled"))],
        ["leakage handling", data.get("leakage")],
        ["seed", train.get("seed")],
        ["preprocess version", training.get("preprocess_version")],
    ]
    if tta is not None:
        rows.append(["test-time augmentation", {"hflip": "mean over the image and its mirror (hflip)"}.get(tta, tta)])
    return ["## Key configuration", ""] + _table(["setting", "value"], rows) + [""]


def write_model_card(path: str | Path, *, model_name: str, metrics: dict[str, Any], config: dict[str, Any],
                     manifest_hash: str, plots: dict[str, str], training: dict[str, Any] | None,
                     notes: list[str] | None = None) -> Path:
    """Write the Markdown model card.

    Args:
        path: the .md file to write (atomically).
        model_name: e.g. "resnet18".
        metrics: the metrics.json content (`classes`, `splits.<name>` as `compute_metrics` returns).
        config: the training configuration as a plain dict (config_to_dict).
        manifest_hash: hash of the dataset manifest the metrics were computed on.
        plots: plot name -> path relative to the card, names `<split>_confusion`, `<split>_confusion_normalized`,
            `<split>_roc`, `<split>_pr` and optionally `history`.
        training: facts about the training run (epochs_run, best_epoch, stopped_early, monitor, best_score,
            train_images, preprocess_version, best_epoch_qualified, qualification) or None when unknown; a
            collapsed best epoch puts a warning at the top.
        notes: paragraphs under the title (what an ensemble is made of, a plot left out and why).

    Returns:
        The path written.
    """
    classes = list(metrics["classes"])
    metrics = {**metrics, "manifest_hash": manifest_hash}
    size = config.get("data", {}).get("image_size", "?")
    lines = [f"# Model card: {model_name}", ""] + _collapse_warning(training)
    for note in notes or []:
        lines += [note, ""]
    if metrics.get("version"):
        lines += [f"Version: `{metrics['version']}`", ""]
    lines += _INTENDED_USE.format(size=size, classes=", ".join(classes)).splitlines() + [""]
    lines += _data_section(metrics)
    for split, split_metrics in metrics["splits"].items():
        lines += _split_section(split, split_metrics, classes, plots)
    if not metrics["splits"]:
        lines += ["## Metrics", "", "No split was evaluated.", ""]
    if plots.get("history"):
        lines += ["## Training curves", "", f"![training curves]({plots['history']})", ""]
    lines += _config_section(config, training, model_name, metrics.get("tta"))
    written = atomic_write_text(path, "\n".join(lines).rstrip("\n") + "\n")
    _logger.info("wrote model card %s", written)
    return written
