"""medpipe split: a patient-grouped dev split on real files, and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from medpipe.cli import main
from medpipe.config import load_config
from medpipe.data.split import make_dev_split
from medpipe_testdata import CLASSES, synthetic_image


def _two_view_dataset(root: Path, train_patients: int = 10, val_patients: int = 3) -> Path:
    """Every patient has a CC and an MLO view of one breast (the leakage a per-file split would cause)."""
    patient = 0
    for split, n in (("train", train_patients), ("val", val_patients)):
        for label_index, label in enumerate(CLASSES):
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for _ in range(n):
                patient += 1
                for view in ("CC", "MLO"):
                    arr = synthetic_image(label_index, patient * 10 + len(view), 32)
                    Image.fromarray(arr, mode="L").save(folder / f"P_{patient:05d}_LEFT_{view}.png")
    return root


def _files(root: Path, split: str) -> dict[str, bytes]:
    return {p.relative_to(root / split).as_posix(): p.read_bytes()
            for p in sorted((root / split).rglob("*")) if p.is_file()}


def _patients(root: Path, split: str) -> set[str]:
    return {p.name.split("_LEFT")[0] for p in (root / split).rglob("*.png")}


def test_split_groups_patients_and_keeps_val_as_held_out_test(tmp_path):
    source = _two_view_dataset(tmp_path / "src")
    result = make_dev_split(source, tmp_path / "dev", load_config(None), fraction=0.2, seed=3)
    out = result.out
    assert not _patients(out, "train") & _patients(out, "val"), "a patient on both sides of the dev split"
    # Every source train image lands exactly once in train or val, unchanged; source val becomes test as is.
    merged = {**_files(out, "train"), **_files(out, "val")}
    assert len(merged) == len(_files(out, "train")) + len(_files(out, "val"))
    assert merged == _files(source, "train")
    assert _files(out, "test") == _files(source, "val")
    # Both views of each moved patient move together, and every class is represented in the new val.
    assert all(n % 2 == 0 for n in result.counts["val"].values())
    assert all(n > 0 for n in result.counts["val"].values())
    assert result.patients == {"train": 24, "val": 6, "test": 9}
    report = json.loads(result.report_path.read_text())
    assert report["seed"] == 3 and len(report["files"]) == 78
    # Same seed, same assignment.
    again = make_dev_split(source, tmp_path / "dev2", load_config(None), fraction=0.2, seed=3)
    assert _files(again.out, "val").keys() == _files(out, "val").keys()


def test_split_cli_output_validates_without_leakage(tmp_path, capsys):
    source = _two_view_dataset(tmp_path / "src")
    assert main(["split", str(source), "--out", str(tmp_path / "dev")]) == 0
    printed = capsys.readouterr().out
    assert "val: 12 images, 6 patients" in printed and "test: 18 images" in printed
    assert main(["validate", str(tmp_path / "dev"), "--out", str(tmp_path / "report")]) == 0
    report = json.loads((tmp_path / "report" / "validation.json").read_text())
    assert report["checks"]["patient_leakage"]["count"] == 0 and report["patients"]["overlap"] == {}
    assert report["patients"]["per_split"] == {"train": 24, "val": 6, "test": 9}


def test_split_refuses_non_empty_output_and_writes_nothing(tmp_path, capsys):
    source = _two_view_dataset(tmp_path / "src")
    out = tmp_path / "dev"
    out.mkdir()
    keep = out / "notes.txt"
    keep.write_text("mine")
    assert main(["split", str(source), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert str(out) in err and "not empty" in err
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and keep.read_text() == "mine"


@pytest.mark.parametrize("fraction, message", [(0.0, "expected a number in (0, 0.5]"), (0.7, "(0, 0.5]")])
def test_split_rejects_bad_fraction(tmp_path, fraction, message):
    source = _two_view_dataset(tmp_path / "src")
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        make_dev_split(source, tmp_path / "dev", load_config(None), fraction=fraction)
    assert not (tmp_path / "dev").exists()


def test_split_refuses_output_inside_source_and_too_few_patients(tmp_path):
    source = _two_view_dataset(tmp_path / "src", train_patients=1)
    with pytest.raises(ValueError, match="inside the source dataset"):
        make_dev_split(source, source / "dev", load_config(None))
    with pytest.raises(ValueError, match="3 patient"):
        make_dev_split(source, tmp_path / "dev", load_config(None), fraction=0.2)
