"""Can the label be told from how an image was stored, without looking at it?

When the classes of a dataset come from different sources (a normal-screening archive and a lesion archive,
two hospitals, two scanners), they often differ in file format, stored mode (8- vs 16-bit, grey vs RGB) or
native size. A model then learns the source instead of the disease and fails on other sites' images, while
every split of the same dataset shares the shortcut and hides it. This check measures, for each stored
attribute, how well the attribute alone tells each class from the others.

The predictor is the leave-one-out rule "the class in which this value is most common, relative to the class's
size": each image is predicted from the other images' counts, so a value seen only once (a size no other image
has) carries no evidence, and the rule cannot memorise. Its balanced accuracy, one class against the rest
(chance 0.5), is reported per attribute and class; at or above `validate.source_confound_threshold` the check
fires.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

__all__ = ["ConfoundFinding", "stored_attributes", "attribute_balanced_accuracy", "check_source_confounds",
           "confounds_of_records"]

_FORMAT_ALIASES = {".jpeg": ".jpg", ".tif": ".tiff", ".dicom": ".dcm", "": "(no extension)"}


@dataclass(frozen=True)
class ConfoundFinding:
    """An attribute that gives the class away: its balanced accuracy and the values per class."""

    attribute: str
    balanced_accuracy: float
    message: str
    paths: list[str]


def stored_attributes(rel: str, mode: str | None, size: tuple[int, int] | None) -> dict[str, str]:
    """The attributes compared across classes, for one image (its path relative to the root, mode and size)."""
    suffix = PurePosixPath(rel).suffix.lower()
    return {"file format": _FORMAT_ALIASES.get(suffix, suffix), "stored mode": mode or "?",
            "native size": f"{size[0]}x{size[1]}" if size else "?"}


def attribute_balanced_accuracy(values: list[str], labels: list[str]) -> float:
    """Balanced accuracy of the leave-one-out rule described in the module doc (ties share the credit)."""
    classes = sorted(set(labels))
    class_size = Counter(labels)
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for value, label in zip(values, labels):
        counts[value][label] += 1
    credit: Counter[str] = Counter()  # expected correct predictions per true class
    for value, per_class in counts.items():
        for label, n in per_class.items():
            # What the rule says for any one of these n images: its own image left out of the counts.
            scores = {c: (per_class[c] - (c == label)) / max(class_size[c] - (c == label), 1) for c in classes}
            best = max(scores.values())
            if best == 0:  # no other image has this value: no evidence, a guess
                credit[label] += n / len(classes)
                continue
            winners = [c for c, s in scores.items() if s == best]
            if label in winners:
                credit[label] += n / len(winners)
    return sum(credit[c] / class_size[c] for c in classes) / len(classes)


def check_source_confounds(items: list[tuple[str, str, dict[str, str]]], classes: list[str],
                           threshold: float) -> tuple[dict[str, Any], list[ConfoundFinding]]:
    """Score every attribute, one class against the rest, over all usable images of all splits.

    One against the rest, because the usual confound is one class from another archive (the normals, say): the
    attribute then tells that class apart perfectly while saying nothing about the others.

    Args:
        items: (relative path, class label, `stored_attributes(...)`) per image.
        classes: the classes in report order (those without images are left out).
        threshold: one-vs-rest balanced accuracy (chance 0.5) at or above which an attribute is reported.

    Returns:
        ({attribute: {"balanced_accuracy": {class: value}, "values": {class: {value: count, top 3}}}}, findings).
    """
    labels = [label for _, label, _ in items]
    present = set(labels)
    classes = [c for c in classes if c in present]
    stats: dict[str, Any] = {}
    findings: list[ConfoundFinding] = []
    if len(classes) < 2:
        return stats, findings
    folders = sorted({rel.rsplit("/", 1)[0] for rel, _, _ in items})  # the class folders, not every file
    for attribute in items[0][2]:
        values = [attrs[attribute] for _, _, attrs in items]
        scores = {c: round(attribute_balanced_accuracy(values, [lab if lab == c else "" for lab in labels]), 3)
                  for c in classes}
        per_class = {c: dict(Counter(v for v, lab in zip(values, labels) if lab == c).most_common(3))
                     for c in classes}
        stats[attribute] = {"balanced_accuracy": scores, "values": per_class}
        told = [c for c in classes if scores[c] >= threshold]
        if not told or len(set(values)) == 1:
            continue
        shown = "; ".join(f"{c}: " + ", ".join(f"{v} {n}" for v, n in top.items()) for c, top in per_class.items())
        named = ", ".join(f"{c} ({scores[c]:.2f})" for c in told)
        findings.append(ConfoundFinding(attribute, max(scores[c] for c in told), (
            f"the {attribute} alone tells {named} apart from the other classes (balanced accuracy, chance 0.50; "
            f"most common per class: {shown}); a model can learn where an image came from instead of what it "
            "shows. Expected the classes to share formats, modes and sizes: convert them alike, or check the "
            "model on images from another source"), folders))
    return stats, findings


def confounds_of_records(records: list[Any], classes: list[str], threshold: float,
                         add: Callable[[str, list[str], str], None]) -> dict[str, Any]:
    """`check_source_confounds` over validation records (`.sample.rel`, `.sample.label`, `.mode`, `.size`);
    each finding goes to `add(check, paths, message)` under the check "source_confound"."""
    items = [(r.sample.rel, r.sample.label, stored_attributes(r.sample.rel, r.mode, r.size)) for r in records]
    stats, findings = check_source_confounds(items, classes, threshold) if items else ({}, [])
    for finding in findings:
        add("source_confound", finding.paths, finding.message)
    return stats
