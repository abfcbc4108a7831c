"""Dataset discovery on real folders: samples, aliases, patient ids, and every layout problem (symlinks included)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from medpipe_testdata import CLASSES, write_dataset

from medpipe.data.layout import discover, patient_id, resolve_inside

PATTERN = r"^(.+?)[._-](?:LEFT|RIGHT)(?:[._-]|$)"
ALIASES = {"malignant": "cancer"}


def _discover(root: Path):
    return discover(root, list(CLASSES), ALIASES, PATTERN)


def _checks(layout) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for p in layout.problems:
        found.setdefault(p.check, []).append(p.path)
    return found


def test_discovers_every_image_sorted_with_labels_and_patients(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "data", per_class=2, size=32)
    layout = _discover(root)
    assert layout.splits == ["train", "val"] and layout.problems == []
    assert len(layout.samples) == 12
    rels = [s.rel for s in layout.samples]
    assert rels == sorted(rels, key=lambda r: (r.split("/")[0] != "train", r))  # split order, then sorted
    first = layout.samples[0]
    assert first.rel.startswith("train/benign/") and first.label == "benign" and first.label_index == 1
    assert first.patient == first.rel.split("/")[-1][:7]  # "P_00003" from "P_00003_LEFT_CC.png"
    assert first.path.is_absolute() and first.path.is_file()


@pytest.mark.parametrize("name,expected", [
    ("A_0003_1.LEFT_CC.jpg", "A_0003_1"),
    ("P_00001_LEFT_CC.jpg", "P_00001"),
    ("p_00001_right_mlo.png", "p_00001"),
    ("scan001.png", None),
])
def test_patient_id_from_ddsm_names(name: str, expected: str | None) -> None:
    assert patient_id(name, PATTERN) == expected


def test_alias_folder_and_layout_problems_are_reported(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "data", per_class=1, size=32)
    (root / "train" / "cancer").rename(root / "train" / "Malignant")  # alias, case-insensitive
    (root / "val" / "cancer" / "P_00006_LEFT_CC.png").unlink()  # now empty
    (root / "val" / "benign" / "notes.txt").write_text("x")
    (root / "val" / "xray").mkdir()
    (root / "extras").mkdir()
    layout = _discover(root)
    assert [s.label for s in layout.samples if s.rel.startswith("train/Malignant/")] == ["cancer"]
    found = _checks(layout)
    assert found == {"unknown_folder": ["extras", "val/xray"], "not_an_image": ["val/benign/notes.txt"],
                     "empty_class": ["val/cancer"]}
    (root / "val").rename(root / "validation")
    assert _checks(_discover(root))["missing_split"] == ["val"]


def test_symlinks_inside_are_followed_outside_reported_loops_survive(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "data", per_class=1, size=32)
    outside = write_dataset(tmp_path / "elsewhere", per_class=1, splits=("train",), size=32)
    normal = root / "train" / "normal"
    (normal / "escape_dir").symlink_to(outside / "train" / "normal", target_is_directory=True)
    (normal / "escape.png").symlink_to(outside / "train" / "benign" / "P_00002_LEFT_CC.png")
    (normal / "inside_dir").symlink_to(root / "val" / "normal", target_is_directory=True)
    (normal / "loop").symlink_to(normal, target_is_directory=True)
    (normal / "self").symlink_to(normal / "self")  # a symlink loop: Path.resolve raises RuntimeError on 3.11
    layout = _discover(root)
    found = _checks(layout)
    assert sorted(found["outside_root"]) == ["train/normal/escape.png", "train/normal/escape_dir"]
    assert found["unknown_folder"] == ["train/normal/loop"]
    assert found["unreadable"] == ["train/normal/self"]
    message = next(p.message for p in layout.problems if p.path == "train/normal/escape_dir")
    assert "train/normal/escape_dir" in message and "outside the data root" in message
    followed = [s for s in layout.samples if s.rel.startswith("train/normal/inside_dir/")]
    assert len(followed) == 1 and followed[0].path.parent == (root / "val" / "normal").resolve()
    assert followed[0].split == "train" and followed[0].label == "normal"


def test_symlinked_class_folder_escaping_root_is_reported_once(tmp_path: Path) -> None:
    root = write_dataset(tmp_path / "data", per_class=1, size=32)
    outside = write_dataset(tmp_path / "elsewhere", per_class=3, splits=("train",), size=32)
    os.rename(root / "val" / "benign", tmp_path / "old_benign")
    (root / "val" / "benign").symlink_to(outside / "train" / "benign", target_is_directory=True)
    found = _checks(_discover(root))
    assert found["outside_root"] == ["val/benign"] and found["empty_class"] == ["val/benign"]


def test_resolve_inside_refuses_escapes(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    assert resolve_inside(tmp_path / "root", tmp_path / "root" / "a") == (tmp_path / "root" / "a").resolve()
    with pytest.raises(ValueError, match="outside the data root"):
        resolve_inside(tmp_path / "root", tmp_path / "root" / ".." / "x")


def test_missing_root_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        _discover(tmp_path / "nope")
