"""Find the images of a dataset laid out as ROOT/{train,val,test}/{class}/* and check where they live."""

from __future__ import annotations

import fnmatch
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from medpipe.dicom import dicom_patient_id, is_dicom_path
from medpipe.preprocess import IMAGE_EXTENSIONS, is_supported_image

__all__ = ["SPLITS", "REQUIRED_SPLITS", "FLAT_SPLIT", "Sample", "LayoutProblem", "DatasetLayout", "discover",
           "discover_flat", "excluded_by", "is_flat", "patient_id", "resolve_inside"]

_logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
REQUIRED_SPLITS = ("train", "val")
FLAT_SPLIT = "all"  # the split name given to the samples of a flat dataset (ROOT/{class}/*)


@dataclass(frozen=True)
class Sample:
    path: Path  # absolute, resolved
    rel: str  # POSIX path relative to the data root, e.g. "train/normal/x.jpg"
    split: str
    label: str  # canonical class name
    label_index: int
    patient: str
    patient_source: str = "file_name"  # "dicom" (PatientID), "file_name" (the pattern) or "file_stem" (fallback)


@dataclass(frozen=True)
class LayoutProblem:
    check: str  # a name from medpipe.config.VALIDATION_CHECKS
    path: str  # relative to the data root ("" for the root itself)
    message: str


@dataclass
class DatasetLayout:
    root: Path
    classes: list[str]
    samples: list[Sample] = field(default_factory=list)
    problems: list[LayoutProblem] = field(default_factory=list)
    splits: list[str] = field(default_factory=list)  # splits present
    excluded: list[str] = field(default_factory=list)  # relative paths skipped by data.exclude
    exclude: tuple[str, ...] = ()  # the data.exclude patterns, lower-cased

    def by_split(self, split: str) -> list[Sample]:
        return [s for s in self.samples if s.split == split]


def resolve_inside(root: Path, candidate: Path) -> Path:
    """Resolve `candidate` (following symlinks) and make sure it stays under `root`.

    Raises:
        ValueError: naming the path, when it escapes the root.
    """
    root = root.resolve()
    resolved = candidate.resolve()
    if resolved != root and root not in resolved.parents:
        raise ValueError(f"{candidate} resolves to {resolved}, outside the data root {root}")
    return resolved


def patient_id(file_name: str, pattern: str) -> str | None:
    """Patient id from a file name: the first group of `pattern` (case-insensitive), or None if it does not match."""
    match = re.search(pattern, file_name, flags=re.IGNORECASE)
    if not match:
        return None
    return match.group(1) if match.groups() else match.group(0)


def _class_for_folder(name: str, classes: list[str], aliases: dict[str, str]) -> str | None:
    lowered = name.lower()
    if lowered in classes:
        return lowered
    return aliases.get(lowered)


def discover(root: str | Path, classes: list[str], aliases: dict[str, str], patient_pattern: str,
             exclude: Sequence[str] = (), patient_source: str = "auto") -> DatasetLayout:
    """List every image under ROOT/{split}/{class}/ (recursively), in a stable sorted order.

    Files whose name matches one of the `exclude` globs (case-insensitive) are not samples; their relative
    paths are listed in `layout.excluded`.

    Files are not opened here. Problems with the layout itself (missing split, empty class, unknown folder,
    non-image file, symlink escaping the root) are collected, not raised, so validation can report all of them.
    Symlinked files and folders are followed when they stay inside the root and reported as `outside_root`
    when they do not.

    Raises:
        FileNotFoundError: the root does not exist or is not a folder.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist or is not a folder")
    root = root.resolve()
    layout = DatasetLayout(root=root, classes=list(classes), exclude=tuple(p.lower() for p in exclude))
    split_dirs = {p.name.lower(): p for p in sorted(root.iterdir()) if p.is_dir()}
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and entry.name.lower() not in SPLITS:
            layout.problems.append(LayoutProblem("unknown_folder", entry.name, f"folder {entry.name!r} is not a split "
                                                 f"({', '.join(SPLITS)}); ignored"))
    for split in SPLITS:
        split_dir = split_dirs.get(split)
        if split_dir is None:
            if split in REQUIRED_SPLITS:
                layout.problems.append(LayoutProblem("missing_split", split, f"required split folder {split}/ is "
                                                     f"missing{_flat_hint(root, classes, aliases)}"))
            continue
        if _resolve_or_report(layout, split_dir, split_dir.name) is None:
            continue
        layout.splits.append(split)
        _discover_split(layout, split, split_dir, aliases, patient_pattern, patient_source)
    return layout


def is_flat(root: str | Path, classes: list[str], aliases: dict[str, str]) -> bool:
    """True when ROOT has no train/ or val/ folder but holds class folders directly (ROOT/{class}/*)."""
    root = Path(root).expanduser()
    if not root.is_dir() or _folder_names(root) & set(REQUIRED_SPLITS):
        return False
    return _has_class_folders(root, classes, aliases)


def _folder_names(root: Path) -> set[str]:
    return {p.name.lower() for p in root.iterdir() if p.is_dir()}


def _has_class_folders(root: Path, classes: list[str], aliases: dict[str, str]) -> bool:
    return any(_class_for_folder(name, classes, aliases) for name in _folder_names(root))


def discover_flat(root: str | Path, classes: list[str], aliases: dict[str, str], patient_pattern: str,
                  exclude: Sequence[str] = (), patient_source: str = "auto") -> DatasetLayout:
    """Like `discover`, for a dataset not yet split: ROOT/{class}/*; every sample gets split FLAT_SPLIT."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data root {root} does not exist or is not a folder")
    root = root.resolve()
    layout = DatasetLayout(root=root, classes=list(classes), exclude=tuple(p.lower() for p in exclude),
                           splits=[FLAT_SPLIT])
    _discover_split(layout, FLAT_SPLIT, root, aliases, patient_pattern, patient_source)
    return layout


def _flat_hint(root: Path, classes: list[str], aliases: dict[str, str]) -> str:
    """When ROOT holds class folders directly (a flat dataset), say how to make the splits."""
    if not _has_class_folders(root, classes, aliases):
        return ""
    return (f"; {root} holds class folders directly: run `medpipe split {root} --out NEW_FOLDER` to write "
            "patient-grouped train/val/test splits")


def _resolve_or_report(layout: DatasetLayout, path: Path, rel: str) -> Path | None:
    """Resolve `path` inside the root; record an `outside_root` (escape) or `unreadable` (loop) problem otherwise."""
    try:
        return resolve_inside(layout.root, path)
    except ValueError:
        target = os.path.realpath(path)
        layout.problems.append(LayoutProblem("outside_root", rel, f"{rel} is a symlink to {target}, outside the data "
                                             f"root {layout.root}; expected files inside the root; ignored"))
    except (OSError, RuntimeError) as exc:  # Python 3.11 raises RuntimeError for a symlink loop
        layout.problems.append(LayoutProblem("unreadable", rel, f"{rel}: cannot resolve path: {exc}"))
    return None


def _discover_split(layout: DatasetLayout, split: str, split_dir: Path, aliases: dict[str, str],
                    patient_pattern: str, patient_source: str) -> None:
    counts = {c: 0 for c in layout.classes}
    prefix = "" if split == FLAT_SPLIT else f"{split}/"  # a flat dataset's class folders sit in the root
    for class_dir in sorted(split_dir.iterdir()):
        rel_dir = f"{prefix}{class_dir.name}"
        label = _class_for_folder(class_dir.name, layout.classes, aliases) if class_dir.is_dir() else None
        if label is None:
            kind = "unknown_folder" if class_dir.is_dir() else "not_an_image"
            layout.problems.append(LayoutProblem(kind, rel_dir, f"{rel_dir} is not a class folder "
                                                 f"(classes: {', '.join(layout.classes)}); ignored"))
            continue
        resolved_dir = _resolve_or_report(layout, class_dir, rel_dir)
        if resolved_dir is None:
            continue
        for file_path in _walk_files(layout, class_dir, resolved_dir):
            sample = _make_sample(layout, file_path, split, label, patient_pattern, patient_source)
            if sample is not None:
                layout.samples.append(sample)
                counts[label] += 1
    for label, count in counts.items():
        if count == 0:
            where = "the dataset" if split == FLAT_SPLIT else f"split {split}"
            layout.problems.append(LayoutProblem("empty_class", f"{prefix}{label}",
                                                 f"{where} has no images of class {label!r}"))


def _walk_files(layout: DatasetLayout, top: Path, resolved_top: Path) -> list[Path]:
    """Every file under `top`, sorted, following symlinked folders that stay inside the root.

    os.walk(followlinks=False) would skip a symlinked folder without a word, so symlinked folders are checked
    here: escaping ones are reported, ones already visited (loops) are reported and skipped, others are followed.
    """
    visited = {resolved_top}
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(top, followlinks=True):
        kept = []
        for name in sorted(dirnames):
            sub = Path(dirpath) / name
            rel = sub.relative_to(layout.root).as_posix()
            target = _resolve_or_report(layout, sub, rel)
            if target is None:
                continue
            if target in visited:
                layout.problems.append(LayoutProblem("unknown_folder", rel, f"{rel} is a symlink to a folder that is "
                                                     "already scanned (a loop or a repeat); ignored"))
                continue
            visited.add(target)
            kept.append(name)
        dirnames[:] = kept  # os.walk descends only into the folders left here
        files.extend(Path(dirpath) / name for name in sorted(filenames))
    return files


def excluded_by(file_name: str, patterns: Sequence[str]) -> str | None:
    """The first data.exclude glob that `file_name` matches (case-insensitive), or None."""
    return next((p for p in patterns if fnmatch.fnmatchcase(file_name.lower(), p.lower())), None)


def _patient_of(file_path: Path, pattern: str, source: str) -> tuple[str, str]:
    """(patient id, where it came from): a DICOM file's PatientID (source "auto"), else the file-name pattern,
    else the file stem (one image = one patient: the only safe assumption without an id)."""
    if source == "auto" and is_dicom_path(file_path):
        from_header = dicom_patient_id(file_path)
        if from_header:
            return from_header, "dicom"
    from_name = patient_id(file_path.name, pattern)
    return (from_name, "file_name") if from_name else (Path(file_path.name).stem, "file_stem")


def _make_sample(layout: DatasetLayout, file_path: Path, split: str, label: str, patient_pattern: str,
                 patient_source: str = "auto") -> Sample | None:
    rel = file_path.relative_to(layout.root).as_posix()
    if excluded_by(file_path.name, layout.exclude):
        layout.excluded.append(rel)
        return None
    resolved = _resolve_or_report(layout, file_path, rel)
    if resolved is None:
        return None
    if not is_supported_image(file_path):
        layout.problems.append(LayoutProblem("not_an_image", rel, f"{rel}: extension {file_path.suffix!r} "
                                             f"is not one of {sorted(IMAGE_EXTENSIONS)} (nor a DICOM file without "
                                             "extension); ignored"))
        return None
    patient, source = _patient_of(file_path, patient_pattern, patient_source)
    return Sample(path=resolved, rel=rel, split=split, label=label, label_index=layout.classes.index(label),
                  patient=patient, patient_source=source)
