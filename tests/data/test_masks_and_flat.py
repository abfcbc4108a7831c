"""Datasets as public sets ship them: flat class folders, segmentation masks beside the images (BUSI style).

Breast-ultrasound sets such as BUSI ship ROOT/{normal,benign,malignant}/ with "benign (1).png" next to
"benign (1)_mask.png": a mask gives its class away (normal masks are blank), so training on it is a leak.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from medpipe_testdata import synthetic_image
from PIL import Image

from medpipe.cli import main
from medpipe.config import ConfigError, load_config
from medpipe.data.cache import build_cache, load_cache
from medpipe.data.split import make_dev_split
from medpipe.data.validate import format_validation_summary, validate_dataset
from medpipe.score import list_input_files

FOLDERS = ("normal", "benign", "malignant")  # BUSI's names; "malignant" is an alias of cancer


def _mask(size: int, filled: bool) -> np.ndarray:
    mask = np.zeros((size, size), np.uint8)
    if filled:
        mask[size // 4: size // 2, size // 4: size // 2] = 255
    return mask


def busi_like(root: Path, per_class: int = 10, size: int = 40) -> Path:
    """ROOT/{class}/"<class> (n).png" RGB images, each with a "_mask.png" and some with a second "_mask_1.png"."""
    for label_index, folder in enumerate(FOLDERS):
        (root / folder).mkdir(parents=True)
        for n in range(1, per_class + 1):
            gray = synthetic_image(label_index, label_index * 1000 + n, size)
            Image.fromarray(np.dstack([gray] * 3), mode="RGB").save(root / folder / f"{folder} ({n}).png")
            Image.fromarray(_mask(size, label_index > 0)).save(root / folder / f"{folder} ({n})_mask.png")
            if n % 3 == 0:
                Image.fromarray(_mask(size, True)).save(root / folder / f"{folder} ({n})_mask_1.png")
    return root


def _rel_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_validate_flat_dataset_says_how_to_split_it(tmp_path: Path) -> None:
    source = busi_like(tmp_path / "busi", per_class=2)
    report = validate_dataset(source, load_config(None), tmp_path / "report")
    missing = [f for f in report.errors if f.check == "missing_split"]
    assert not report.ok and len(missing) == 2
    assert all("holds class folders directly" in f.message and "medpipe split" in f.message for f in missing)
    # The console says it too, not only the report: the first message of each failed check.
    printed = format_validation_summary(report)
    assert "missing_split: required split folder train/ is missing" in printed and "medpipe split" in printed


def test_flat_dataset_splits_three_ways_by_patient_without_masks(tmp_path: Path, capsys) -> None:
    source = busi_like(tmp_path / "busi")
    before = _rel_files(source)
    assert main(["split", str(source), "--out", str(tmp_path / "split"), "--fraction", "0.2"]) == 0
    out = tmp_path / "split"
    printed = capsys.readouterr().out
    assert "train:" in printed and "val:" in printed and "test:" in printed
    written = _rel_files(out) - {"split.json"}
    assert not any("_mask" in rel for rel in written), "a segmentation mask was copied into the split"
    images = {rel for rel in before if "_mask" not in rel}
    # Every image lands exactly once, under its own class folder, in one of the three splits.
    assert sorted(rel.split("/", 1)[1] for rel in written) == sorted(images)
    report = json.loads((out / "split.json").read_text())
    assert report["source_layout"] == "flat" and len(report["excluded"]) == 39
    assert sum(sum(c.values()) for c in report["counts"].values()) == 30
    for split in ("train", "val", "test"):  # 10 patients per class: every class in every split
        assert all(n > 0 for n in report["counts"][split].values()), (split, report["counts"])
    assert report["counts"]["train"]["cancer"] > report["counts"]["test"]["cancer"]
    assert _rel_files(source) == before  # the source is untouched
    # The result is a normal dataset: it validates, with no patient in two splits and nothing mask-like.
    validated = validate_dataset(out, load_config(None), tmp_path / "report")
    assert validated.ok, [f.message for f in validated.errors]
    assert validated.stats["patients"]["overlap"] == {} and validated.stats["mask_like"] == 0


def test_flat_split_keeps_both_views_of_a_patient_together(tmp_path: Path) -> None:
    source = tmp_path / "flat"
    for label_index, label in enumerate(("normal", "benign", "cancer")):
        (source / label).mkdir(parents=True)
        for patient in range(8):
            for view in ("CC", "MLO"):
                arr = synthetic_image(label_index, label_index * 100 + patient * 2 + len(view), 32)
                Image.fromarray(arr).save(source / label / f"P_{label_index}{patient:03d}_LEFT_{view}.png")
    assert main(["split", str(source), "--out", str(tmp_path / "out")]) == 0
    by_split = {s: {p.name.split("_LEFT")[0] for p in (tmp_path / "out" / s).rglob("*.png")}
                for s in ("train", "val", "test")}
    assert not by_split["train"] & by_split["val"] and not by_split["train"] & by_split["test"]
    assert not by_split["val"] & by_split["test"]
    for s in by_split:  # two views per patient, always together
        assert len(list((tmp_path / "out" / s).rglob("*.png"))) == 2 * len(by_split[s])


def test_flat_split_refuses_a_fraction_that_leaves_no_training_data(tmp_path: Path) -> None:
    source = busi_like(tmp_path / "busi", per_class=3)
    with pytest.raises(ValueError, match=r"--fraction 0.4: expected a number in \(0, 0.33\], the share of "
                                         r"patients in each of val and test"):
        make_dev_split(source, tmp_path / "out", load_config(None), fraction=0.4)
    assert not (tmp_path / "out").exists()


def _split_layout(tmp_path: Path) -> Path:
    """train/val made from a BUSI-like flat set by hand, masks included."""
    root = tmp_path / "data"
    flat = busi_like(tmp_path / "busi", per_class=4)
    for folder in FOLDERS:
        for path in sorted((flat / folder).iterdir()):
            n = int(path.name.split("(")[1].split(")")[0])
            split = "val" if n == 4 else "train"
            (root / split / folder).mkdir(parents=True, exist_ok=True)
            path.rename(root / split / folder / path.name)
    return root


def test_masks_are_skipped_by_default_and_listed(tmp_path: Path) -> None:
    root = _split_layout(tmp_path)
    report = validate_dataset(root, load_config(None), tmp_path / "report")
    assert report.ok and report.stats["n_files"] == 12
    excluded = report.stats["excluded"]
    assert excluded["count"] == 15 and "train/benign/benign (1)_mask.png" in excluded["paths"]
    assert "train/benign/benign (3)_mask_1.png" in excluded["paths"]
    assert "skipped by data.exclude" in report.md_path.read_text()
    # The training cache holds the images only.
    cfg = load_config(None, ["data.image_size=32", f"data.cache_dir={tmp_path / 'cache'}"])
    cache = load_cache(build_cache(root, cfg))
    assert len(cache.splits["train"].labels) == 9 and len(cache.splits["val"].labels) == 3
    assert not any("_mask" in rel for rel in cache.splits["train"].rels)


def test_masks_not_excluded_are_flagged_as_mask_like(tmp_path: Path) -> None:
    root = _split_layout(tmp_path)
    report = validate_dataset(root, load_config(None, ["data.exclude=[]"]), tmp_path / "report")
    assert report.stats["excluded"]["count"] == 0 and report.stats["mask_like"] == 15
    (finding,) = [f for f in report.warnings if f.check == "mask_like"]
    assert len(finding.paths) == 15 and "data.exclude" in finding.message
    assert "normal (1)_mask.png" in finding.message or "more" in finding.message
    strict = load_config(None, ["data.exclude=[]", "validate.severity.mask_like=error"])
    assert not validate_dataset(root, strict, tmp_path / "strict").ok


def test_scoring_skips_excluded_names_and_says_why(tmp_path: Path) -> None:
    folder = busi_like(tmp_path / "incoming", per_class=1)
    images, skipped = list_input_files(folder, load_config(None).data.exclude)
    assert sorted(rel for rel, _ in images) == ["benign/benign (1).png", "malignant/malignant (1).png",
                                                "normal/normal (1).png"]
    assert len(skipped) == 3 and all("data.exclude pattern '*_mask.*'" in reason for _, reason in skipped)


@pytest.mark.parametrize("value", ["['masks/*.png']", "['']"])
def test_exclude_patterns_must_be_file_name_globs(value: str) -> None:
    with pytest.raises(ConfigError, match="data.exclude"):
        load_config(None, [f"data.exclude={value}"])
