"""Patient-grouped splits: carve a validation split out of a training split, or split a flat dataset in three.

Choosing an image size, an augmentation strength or a number of epochs by looking at `val` and then reporting
`val` overstates what the model will do on new patients. `make_dev_split` builds a new dataset folder:

    OUT/train  the source's train images of ~(1 - fraction) of its patients
    OUT/val    the source's train images of the other patients (no patient on both sides)
    OUT/test   the source's val split, untouched, held out: report it once, after the choices are made

A source not split yet (ROOT/{class}/*, as many public datasets ship) is split three ways instead: ~fraction
of its patients to test, ~fraction to val, the rest to train, no patient in two splits.

Patients are assigned with scikit-learn's StratifiedGroupKFold (groups = patient ids from
`data.patient_id_pattern`, so every view of a breast lands on the same side; class proportions kept as far as
the groups allow). Files are hard-linked when OUT is on the same file system as the source (no extra disk),
copied otherwise. A source `test` split is not copied: it stays aside, as the source intended.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from medpipe.config import Config
from medpipe.data.layout import DatasetLayout, Sample, discover, discover_flat, is_flat
from medpipe.fileio import atomic_write_text

__all__ = ["DevSplit", "make_dev_split"]

_logger = logging.getLogger(__name__)
_REPORT = "split.json"


@dataclass
class DevSplit:
    out: Path
    counts: dict[str, dict[str, int]]  # split -> class -> images
    patients: dict[str, int]  # split -> patients
    report_path: Path


def _assign_dev_patients(train: list[Sample], fraction: float, seed: int) -> set[str]:
    """Patients of `train` that go to the new val split: one fold of round(1/fraction) grouped, stratified folds."""
    n_splits = max(2, round(1 / fraction))
    groups = np.array([s.patient for s in train])
    n_patients = len(set(groups))
    if n_patients < n_splits:
        raise ValueError(f"{n_patients} patient(s) to split; a {fraction:.0%} patient-level split needs at least "
                         f"{n_splits} (check data.patient_id_pattern)")
    folds = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    labels = np.array([s.label_index for s in train])
    _, dev_rows = next(folds.split(np.zeros(len(train)), labels, groups))
    return set(groups[dev_rows].tolist())


def _assign_split(layout: DatasetLayout, fraction: float, seed: int) -> list[tuple[Sample, str]]:
    """Source train -> train/val by patient; source val -> test (a source test split stays aside)."""
    train = layout.by_split("train")
    dev_patients = _assign_dev_patients(train, fraction, seed)
    train_patients = {s.patient for s in train} - dev_patients
    held_out = layout.by_split("val")
    leaked = sorted({s.patient for s in held_out} & train_patients)
    if leaked:
        _logger.warning("%d patient(s) of the source val split also appear in its train split (e.g. %s): the held-"
                        "out test is not patient-independent; `medpipe validate` lists them", len(leaked), leaked[0])
    return ([(s, "val" if s.patient in dev_patients else "train") for s in train]
            + [(s, "test") for s in held_out])


def _assign_flat(samples: list[Sample], fraction: float, seed: int) -> list[tuple[Sample, str]]:
    """A flat dataset -> test (~fraction of patients), val (~fraction), train (the rest), grouped by patient."""
    if not samples:
        raise ValueError("the class folders of the dataset hold no images; nothing to split")
    test_patients = _assign_dev_patients(samples, fraction, seed)
    rest = [s for s in samples if s.patient not in test_patients]
    # val takes the same share of all patients: fraction / (1 - fraction) of those left.
    val_patients = _assign_dev_patients(rest, fraction / (1 - fraction), seed)
    return [(s, "test" if s.patient in test_patients else "val" if s.patient in val_patients else "train")
            for s in samples]


def _place(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:  # another file system, or links not allowed: copy instead
        shutil.copy2(src, dst)


def make_dev_split(source: str | Path, out: str | Path, cfg: Config, fraction: float = 0.2, seed: int = 0) -> DevSplit:
    """Write OUT/{train,val,test} from SOURCE as described in the module docstring.

    Raises:
        ValueError: fraction outside (0, 0.5] ((0, 1/3] for a flat source), OUT already holds files, OUT inside
            SOURCE, too few patients, or a source layout problem that makes the split meaningless (missing
            train/val, files outside root).
    """
    source = Path(source).expanduser().resolve()
    dc = cfg.data
    flat = is_flat(source, dc.classes, dc.label_aliases)
    limit = 1 / 3 if flat else 0.5  # a flat source gives val and test `fraction` each and keeps the rest to train
    if not 0 < fraction <= limit:
        what = ("the share of patients in each of val and test" if flat else
                "the share of train patients moved to the new val split")
        raise ValueError(f"--fraction {fraction}: expected a number in (0, {limit:.2g}], {what}")
    out = Path(out).expanduser().resolve()
    if out == source or source in out.parents:
        raise ValueError(f"output folder {out} is inside the source dataset {source}; choose a folder outside it")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"output folder {out} already exists and is not empty; nothing was written "
                         f"(choose a new folder: a split is never merged into an existing one)")
    if flat:
        layout = discover_flat(source, dc.classes, dc.label_aliases, dc.patient_id_pattern, exclude=dc.exclude,
                               patient_source=dc.patient_id_source)
    else:
        layout = discover(source, dc.classes, dc.label_aliases, dc.patient_id_pattern, exclude=dc.exclude,
                          patient_source=dc.patient_id_source)
    fatal = [p for p in layout.problems if p.check in ("missing_split", "outside_root")]
    if fatal:
        raise ValueError("; ".join(p.message for p in fatal))
    assigned = _assign_flat(layout.samples, fraction, seed) if flat else _assign_split(layout, fraction, seed)
    placed: list[dict] = []
    for sample, split in assigned:
        rel = sample.rel if flat else Path(sample.rel).relative_to(sample.rel.split("/")[0])  # class/.../file.jpg
        _place(sample.path, out / split / rel)
        placed.append({"split": split, "label": sample.label, "patient": sample.patient, "source": sample.rel})
    counts: dict[str, dict[str, int]] = {}
    for split in ("train", "val", "test"):
        c = Counter(p["label"] for p in placed if p["split"] == split)
        counts[split] = {name: c.get(name, 0) for name in dc.classes}
    patients = {split: len({p["patient"] for p in placed if p["split"] == split}) for split in ("train", "val", "test")}
    report = {"source": str(source), "source_layout": "flat" if flat else "train/val", "fraction": fraction,
              "excluded": layout.excluded, "seed": seed, "patient_id_pattern": dc.patient_id_pattern,
              "counts": counts, "patients": patients, "files": placed}
    report_path = out / _REPORT
    atomic_write_text(report_path, json.dumps(report, indent=1))
    return DevSplit(out=out, counts=counts, patients=patients, report_path=report_path)
