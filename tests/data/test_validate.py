"""validate_dataset on real image folders: every bad input, duplicates, leakage, severities, the report files."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from medpipe_testdata import SAMPLE_DATA, synthetic_image, write_dataset
from PIL import Image
from test_preprocess import write_png_header_only

from medpipe.config import VALIDATION_CHECKS, Config, load_config
from medpipe.data.validate import _hamming_pairs, format_validation_summary, validate_dataset
from medpipe.preprocess import decode_image


@pytest.fixture
def cfg() -> Config:
    return load_config(None, [])


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """train/val, 2 images per class, 32 px PNGs, patient ids P_00001..P_00012 (no leakage)."""
    return write_dataset(tmp_path / "data", per_class=2, size=32)


def _snapshot(root: Path) -> dict[str, tuple]:
    """Every path under root with its type, size, mtime and content hash: any change to the data shows."""
    snap = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            snap[p.relative_to(root).as_posix()] = ("link", str(p.readlink()))
        elif p.is_file():
            stat = p.stat()
            snap[p.relative_to(root).as_posix()] = ("file", stat.st_size, stat.st_mtime_ns,
                                                    hashlib.sha256(p.read_bytes()).hexdigest())
        else:
            snap[p.relative_to(root).as_posix()] = ("dir",)
    return snap


def _findings(report, check: str) -> list:
    return [f for f in report.errors + report.warnings if f.check == check]


def _only(report, check: str, severity: str, path: str):
    """The one finding of `check` for `path`, with the expected severity and a message naming the file."""
    matches = [f for f in _findings(report, check) if path in f.paths]
    assert len(matches) == 1, (check, path, [f.to_dict() for f in report.errors + report.warnings])
    finding = matches[0]
    assert finding.severity == severity
    assert Path(path).name in finding.message
    return finding


def test_clean_dataset_is_ok_and_report_files_are_written(data: Path, tmp_path: Path, cfg: Config) -> None:
    before = _snapshot(tmp_path)
    report = validate_dataset(data, cfg, tmp_path / "out")
    assert report.ok and report.errors == []
    assert {f.check for f in report.warnings} <= {"near_duplicate"}  # same-class synthetic images look alike
    assert report.json_path == tmp_path / "out" / "validation.json" and report.md_path.is_file()
    saved = json.loads(report.json_path.read_text())
    assert saved["ok"] is True and saved["n_files"] == 12 and saved["n_usable"] == 12
    assert saved["counts"] == {"train": {"normal": 2, "benign": 2, "cancer": 2},
                               "val": {"normal": 2, "benign": 2, "cancer": 2}}
    assert saved["imbalance_ratio"] == {"train": 1.0, "val": 1.0}
    assert saved["patients"]["per_split"] == {"train": 6, "val": 6} and saved["patients"]["overlap"] == {}
    assert saved["images"]["train"]["most_common_size"] == [32, 32] and saved["images"]["train"]["modes"] == {"L": 6}
    assert set(saved["checks"]) == set(VALIDATION_CHECKS) and len(saved["content_hash"]) == 64
    assert set(saved["timing"]) >= {"total_s", "decode_s", "images_per_s"}
    md = report.md_path.read_text()
    assert "# Dataset validation: OK" in md and "| train | 2 | 2 | 2 | 6 | 1.0 |" in md
    after = _snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("out")} == before  # the data is untouched
    assert sorted(k for k in after if k.startswith("out")) == ["out", "out/validation.json", "out/validation.md"]


def test_bundled_sample_validates_ok(tmp_path: Path, cfg: Config) -> None:
    before = _snapshot(SAMPLE_DATA)
    report = validate_dataset(SAMPLE_DATA, cfg, tmp_path / "out")
    assert report.ok, [f.message for f in report.errors]
    assert report.stats["n_usable"] == report.stats["n_files"] > 100
    assert report.stats["patients"]["overlap"] == {}
    assert _snapshot(SAMPLE_DATA) == before


def test_unreadable_files_are_errors_naming_the_file(data: Path, tmp_path: Path, cfg: Config) -> None:
    folder = data / "train" / "normal"
    (folder / "zero.png").write_bytes(b"")
    (folder / "text.png").write_text("this is not a PNG")
    Image.fromarray(synthetic_image(0, 99, 32), mode="L").save(tmp_path / "full.jpg")
    (folder / "cut.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:200])
    (folder / "notes.txt").write_text("reading list")
    report = validate_dataset(data, cfg, tmp_path / "out")
    assert not report.ok
    assert "0 bytes" in _only(report, "unreadable", "error", "train/normal/zero.png").message
    assert "not a recognised image" in _only(report, "unreadable", "error", "train/normal/text.png").message
    assert "truncated" in _only(report, "unreadable", "error", "train/normal/cut.jpg").message
    assert ".txt" in _only(report, "not_an_image", "warning", "train/normal/notes.txt").message
    assert report.stats["n_files"] == 15 and report.stats["n_usable"] == 12
    assert "FAILED" in format_validation_summary(report) and "unreadable 3" in format_validation_summary(report)


def test_too_large_is_refused_without_decoding(data: Path, tmp_path: Path, cfg: Config) -> None:
    # A header claiming 9000x9000 and no pixel data: decoding it would say "truncated", not "too large".
    write_png_header_only(data / "train" / "benign" / "bomb.png", 9000, 9000)
    report = validate_dataset(data, cfg, tmp_path / "out")
    finding = _only(report, "too_large", "error", "train/benign/bomb.png")
    assert "9000x9000" in finding.message and "64000000" in finding.message
    assert _findings(report, "unreadable") == []


def test_max_pixels_comes_from_the_config(data: Path, tmp_path: Path) -> None:
    report = validate_dataset(data, load_config(None, ["data.max_pixels=1000"]), tmp_path / "out")
    assert len(_findings(report, "too_large")) == 12 and not report.ok
    assert {f.paths[0] for f in _findings(report, "empty_class")} == {
        f"{s}/{c}" for s in ("train", "val") for c in ("normal", "benign", "cancer")}


def test_symlinks_leaving_the_root_are_errors(data: Path, tmp_path: Path, cfg: Config) -> None:
    outside = write_dataset(tmp_path / "elsewhere", per_class=1, splits=("train",), size=32, seed=7)
    (data / "train" / "normal" / "linked.png").symlink_to(outside / "train" / "normal" / "P_00001_LEFT_CC.png")
    (data / "val" / "cancer" / "linked_dir").symlink_to(outside / "train" / "cancer", target_is_directory=True)
    report = validate_dataset(data, cfg, tmp_path / "out")
    assert not report.ok
    _only(report, "outside_root", "error", "train/normal/linked.png")
    _only(report, "outside_root", "error", "val/cancer/linked_dir")
    assert report.stats["n_files"] == 12  # nothing outside the root was read


def test_missing_split_empty_class_and_unknown_folders(data: Path, tmp_path: Path, cfg: Config) -> None:
    shutil.rmtree(data / "val")
    for f in (data / "train" / "cancer").iterdir():
        f.unlink()
    (data / "train" / "benign" / "P_99999_LEFT_CC.png").write_bytes(b"")  # benign: one bad file, two good
    (data / "misc").mkdir()
    (data / "train" / "xrays").mkdir()
    report = validate_dataset(data, cfg, tmp_path / "out")
    assert not report.ok
    assert "val/" in _only(report, "missing_split", "error", "val").message
    assert "cancer" in _only(report, "empty_class", "error", "train/cancer").message
    _only(report, "unknown_folder", "warning", "misc")
    _only(report, "unknown_folder", "warning", "train/xrays")
    assert report.stats["imbalance_ratio"] == {"train": None}  # undefined with an empty class


def test_class_whose_files_all_fail_to_decode_is_empty(data: Path, tmp_path: Path, cfg: Config) -> None:
    for f in (data / "val" / "benign").iterdir():
        f.write_bytes(b"")
    report = validate_dataset(data, cfg, tmp_path / "out")
    assert "no readable images" in _only(report, "empty_class", "error", "val/benign").message
    assert report.stats["counts"]["val"]["benign"] == 0


def test_png_copy_of_a_jpeg_in_another_split_is_caught(data: Path, tmp_path: Path, cfg: Config) -> None:
    jpeg = data / "train" / "normal" / "P_00100_LEFT_CC.jpg"
    Image.fromarray(synthetic_image(0, 1234, 32), mode="L").save(jpeg, quality=90)
    # The PNG holds the JPEG's decoded pixels: a lossless copy under another name, patient, folder and format.
    copy = data / "val" / "normal" / "P_00200_RIGHT_MLO.png"
    Image.fromarray(decode_image(jpeg, 10_000), mode="L").save(copy)
    assert jpeg.read_bytes() != copy.read_bytes()
    report = validate_dataset(data, cfg, tmp_path / "out")
    finding = _only(report, "duplicate_cross_split", "error", "train/normal/P_00100_LEFT_CC.jpg")
    assert finding.paths == ["train/normal/P_00100_LEFT_CC.jpg", "val/normal/P_00200_RIGHT_MLO.png"]
    assert "P_00200_RIGHT_MLO.png" in finding.message and not report.ok
    assert report.stats["duplicates"]["cross_split"] == 1


def test_same_pixels_twice_in_a_split_and_under_two_labels(data: Path, tmp_path: Path, cfg: Config) -> None:
    original = data / "train" / "normal" / "P_00001_LEFT_CC.png"
    shutil.copy(original, data / "train" / "normal" / "again.png")
    shutil.copy(original, data / "train" / "cancer" / "relabelled.png")
    report = validate_dataset(data, cfg, tmp_path / "out")
    within = _only(report, "duplicate_within_split", "warning", "train/normal/again.png")
    assert len(within.paths) == 3 and "train/cancer/relabelled.png" in within.paths
    conflict = _only(report, "label_conflict", "error", "train/cancer/relabelled.png")
    assert "cancer and normal" in conflict.message
    assert _findings(report, "duplicate_cross_split") == [] and not report.ok


def test_near_duplicates_are_warnings(data: Path, tmp_path: Path, cfg: Config) -> None:
    arr = synthetic_image(2, 4321, 32)
    Image.fromarray(arr, mode="L").save(data / "train" / "cancer" / "P_00300_LEFT_CC.png")
    # The same picture a little brighter and re-encoded as JPEG: almost every pixel differs, phash barely does.
    brighter = np.clip(arr.astype(int) + 3, 0, 255).astype(np.uint8)
    Image.fromarray(brighter, mode="L").save(data / "val" / "cancer" / "P_00400_LEFT_CC.jpg", quality=85)
    report = validate_dataset(data, cfg, tmp_path / "out")
    pair = ["train/cancer/P_00300_LEFT_CC.png", "val/cancer/P_00400_LEFT_CC.jpg"]
    (finding,) = [f for f in _findings(report, "near_duplicate") if f.paths == pair]
    assert finding.severity == "warning" and "across splits train/val" in finding.message
    assert "P_00300_LEFT_CC.png" in finding.message and "P_00400_LEFT_CC.jpg" in finding.message
    assert report.ok and _findings(report, "duplicate_cross_split") == []
    strict = validate_dataset(data, load_config(None, ["validate.near_duplicate_distance=-1"]), tmp_path / "out2")
    assert _findings(strict, "near_duplicate") == []


def test_hamming_pairs_match_a_brute_force_count() -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 40, dtype=np.uint64)
    flips = np.uint64(1) << rng.integers(0, 64, (40, 3)).astype(np.uint64)
    hashes = np.concatenate([base, base ^ flips[:, 0], base ^ flips[:, 0] ^ flips[:, 1] ^ flips[:, 2]])
    expected = sorted((i, j, bin(int(hashes[i]) ^ int(hashes[j])).count("1"))
                      for i in range(len(hashes)) for j in range(i + 1, len(hashes))
                      if bin(int(hashes[i]) ^ int(hashes[j])).count("1") <= 3)
    assert len(expected) >= 80
    assert sorted(_hamming_pairs(hashes, 3)) == expected


def test_patient_leakage_warns_and_severity_override_makes_it_an_error(data: Path, tmp_path: Path) -> None:
    # Patient P_00001 (train) also has an image in val; a file name without a patient id is counted.
    Image.fromarray(synthetic_image(1, 555, 32), mode="L").save(data / "val" / "benign" / "P_00001_RIGHT_MLO.png")
    Image.fromarray(synthetic_image(1, 556, 32), mode="L").save(data / "val" / "benign" / "scan001.png")
    report = validate_dataset(data, load_config(None, []), tmp_path / "out")
    finding = _only(report, "patient_leakage", "warning", "val/benign/P_00001_RIGHT_MLO.png")
    assert "1 patient has images in both train and val: P_00001 (train 1, val 1)" in finding.message and report.ok
    assert finding.paths == ["train/normal/P_00001_LEFT_CC.png", "val/benign/P_00001_RIGHT_MLO.png"]
    overlap = report.stats["patients"]["overlap"]["train/val"]
    assert overlap == {"patients": 1, "images": {"train": 1, "val": 1}, "ids": {"P_00001": {"train": 1, "val": 1}}}
    assert report.stats["patients"]["unmatched_pattern"] == {"train": 0, "val": 1}
    strict = validate_dataset(data, load_config(None, ["validate.severity.patient_leakage=error"]), tmp_path / "o2")
    assert not strict.ok and [f.check for f in strict.errors] == ["patient_leakage"]
    assert json.loads(strict.json_path.read_text())["ok"] is False


def test_ignored_checks_are_dropped_but_counted(data: Path, tmp_path: Path) -> None:
    (data / "train" / "normal" / "notes.txt").write_text("x")
    cfg = load_config(None, ["validate.severity.not_an_image=ignore", "validate.severity.near_duplicate=ignore"])
    report = validate_dataset(data, cfg, tmp_path / "out")
    assert report.errors == [] and report.warnings == []
    assert report.stats["checks"]["not_an_image"] == {"severity": "ignore", "count": 1}


def test_content_hash_follows_file_contents(data: Path, tmp_path: Path, cfg: Config) -> None:
    first = validate_dataset(data, cfg, tmp_path / "a").stats["content_hash"]
    assert validate_dataset(data, cfg, tmp_path / "b").stats["content_hash"] == first
    Image.fromarray(synthetic_image(0, 777, 32), mode="L").save(data / "val" / "normal" / "P_00011_LEFT_CC.png")
    assert validate_dataset(data, cfg, tmp_path / "c").stats["content_hash"] != first


def test_rerun_replaces_the_report_atomically(data: Path, tmp_path: Path, cfg: Config) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "validation.json").write_text("old")
    (out / "keep.txt").write_text("unrelated")
    validate_dataset(data, cfg, out)
    assert json.loads((out / "validation.json").read_text())["ok"] is True
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "validation.json", "validation.md"]


def test_output_inside_the_data_root_is_refused(data: Path, cfg: Config) -> None:
    with pytest.raises(ValueError, match="inside the data root"):
        validate_dataset(data, cfg, data / "reports")
    assert not (data / "reports").exists()


def test_markdown_caps_long_lists(data: Path, tmp_path: Path, cfg: Config) -> None:
    for i in range(55):
        (data / "train" / "normal" / f"junk{i:02d}.txt").write_text("x")
    report = validate_dataset(data, cfg, tmp_path / "out")
    md = report.md_path.read_text()
    assert "... and" in md and "more (see validation.json)" in md
    assert len(json.loads(report.json_path.read_text())["warnings"]) == len(report.warnings) >= 55
