"""validate_dataset on real image folders: every bad input, duplicates, leakage, severities, the report files."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from medpipe_testdata import SAMPLE_DATA, synthetic_image, write_dataset
from PIL import Image, ImageEnhance, ImageFilter
from test_preprocess import write_png_header_only

from medpipe.config import VALIDATION_CHECKS, Config, ConfigError, load_config
from medpipe.data import validate as validate_module
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
    assert report.ok and report.errors == [] and report.warnings == []
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
    # Real mammograms of different patients: their breast outlines put many pairs within the 64-bit candidate
    # distance, and a 64-bit check alone (the old one: distance 4, nothing confirmed) flagged 4 of them here.
    near = report.stats["duplicates"]
    assert near["near_duplicate_candidates"] > 0 and near["near_duplicate_pairs"] == 0
    assert _findings(report, "near_duplicate") == []
    unconfirmed = load_config(None, ["validate.near_duplicate_distance=4",
                                     "validate.near_duplicate_confirm_distance=256"])
    assert len(_findings(validate_dataset(SAMPLE_DATA, unconfirmed, tmp_path / "old"), "near_duplicate")) >= 1


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


def _mammogram_like(seed: int, size: int = 64) -> np.ndarray:
    """A breast-shaped half-ellipse of smooth random tissue on black: every seed has the same silhouette."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    inside = (xx / 0.7) ** 2 + ((yy - 0.5) / 0.42) ** 2 < 1
    noise = Image.fromarray(rng.normal(128, 50, (size, size)).clip(0, 255).astype(np.uint8))
    tissue = np.asarray(noise.filter(ImageFilter.GaussianBlur(1.5)), dtype=float)
    return np.where(inside, 60 + tissue, 0).clip(0, 255).astype(np.uint8)


def _jpeg(img: Image.Image, path: Path, quality: int) -> None:
    """Save as JPEG through memory, like a copy re-encoded by some other tool."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    path.write_bytes(buf.getvalue())


_COPIES = {  # the edits that a copy of a scan picks up on its way through other hands
    "jpeg_q60": lambda im: im,
    "resized_90pct": lambda im: im.resize((round(im.width * 0.9), round(im.height * 0.9)), Image.BICUBIC),
    "brighter_10pct_resized_110pct": lambda im: ImageEnhance.Brightness(
        im.resize((round(im.width * 1.1), round(im.height * 1.1)), Image.BICUBIC)).enhance(1.1),
}


@pytest.mark.parametrize("edit", sorted(_COPIES))
def test_edited_copy_of_a_real_mammogram_in_another_split_is_a_near_duplicate(
        edit: str, data: Path, tmp_path: Path, cfg: Config) -> None:
    source = SAMPLE_DATA / "train" / "cancer" / "P_00198_LEFT_CC.jpg"
    shutil.copy(source, data / "train" / "cancer" / "P_00300_LEFT_CC.jpg")
    with Image.open(source) as img:
        _jpeg(_COPIES[edit](img.convert("L")), data / "val" / "cancer" / "P_00400_RIGHT_MLO.jpg", quality=60)
    report = validate_dataset(data, cfg, tmp_path / "out")
    pair = ["train/cancer/P_00300_LEFT_CC.jpg", "val/cancer/P_00400_RIGHT_MLO.jpg"]
    (finding,) = _findings(report, "near_duplicate")
    assert finding.paths == pair and finding.severity == "warning" and report.ok
    assert "across splits train/val" in finding.message and "P_00400_RIGHT_MLO.jpg" in finding.message
    assert "<= 20 of 256 bits" in finding.message and "<= 10 of 64" in finding.message
    assert _findings(report, "duplicate_cross_split") == []  # pixels differ: not an exact duplicate
    assert report.stats["duplicates"]["near_duplicate_pairs"] == 1
    assert "near-duplicate pairs: 1 confirmed (256-bit" in report.md_path.read_text()


def test_near_duplicate_thresholds_come_from_the_config(data: Path, tmp_path: Path, cfg: Config) -> None:
    source = SAMPLE_DATA / "train" / "cancer" / "P_00189_LEFT_MLO.jpg"  # its copy moves both hashes a little
    shutil.copy(source, data / "train" / "cancer" / "P_00900_LEFT_MLO.jpg")
    with Image.open(source) as img:
        _jpeg(_COPIES["brighter_10pct_resized_110pct"](img.convert("L")), data / "val" / "cancer" / "copy.jpg", 75)
    default = validate_dataset(data, cfg, tmp_path / "out")
    (finding,) = _findings(default, "near_duplicate")
    screened = default.stats["duplicates"]["near_duplicate_candidates"]
    d256, d64 = map(int, re.search(r"distance (\d+) <= 20 of 256 bits, (\d+) <= 10 of 64", finding.message).groups())
    assert d256 > 0 and d64 > 0  # so that one bit less than each distance is a stricter setting
    tighter = {"validate.near_duplicate_confirm_distance": d256 - 1, "validate.near_duplicate_distance": d64 - 1}
    for key, value in tighter.items():
        report = validate_dataset(data, load_config(None, [f"{key}={value}"]), tmp_path / key)
        assert _findings(report, "near_duplicate") == [], key
        candidates = report.stats["duplicates"]["near_duplicate_candidates"]
        assert candidates == screened if key.endswith("confirm_distance") else candidates < screened
        assert report.stats["settings"][key.split(".")[1]] == value


def test_alike_silhouettes_of_different_images_are_screened_but_not_reported(
        data: Path, tmp_path: Path, cfg: Config) -> None:
    Image.fromarray(_mammogram_like(0), mode="L").save(data / "train" / "benign" / "P_00500_LEFT_CC.png")
    Image.fromarray(_mammogram_like(4), mode="L").save(data / "val" / "benign" / "P_00600_LEFT_CC.png")
    report = validate_dataset(data, cfg, tmp_path / "out")
    assert _findings(report, "near_duplicate") == [] and report.warnings == []
    assert report.stats["duplicates"]["near_duplicate_candidates"] >= 1  # the outline matched: it was screened
    md = report.md_path.read_text()
    assert "near-duplicate pairs: 0 confirmed (256-bit perceptual hash distance <= 20) of" in md
    # The 64-bit hash alone calls them near-duplicates: this is the false alarm the confirmation removes.
    alone = validate_dataset(data, load_config(None, ["validate.near_duplicate_confirm_distance=256"]), tmp_path / "a")
    pair = ["train/benign/P_00500_LEFT_CC.png", "val/benign/P_00600_LEFT_CC.png"]
    assert pair in [f.paths for f in _findings(alone, "near_duplicate")]


@pytest.mark.parametrize("override, expected", [
    ("validate.near_duplicate_distance=-1", "validate.near_duplicate_distance must be in 0..64"),
    ("validate.near_duplicate_confirm_distance=257", "validate.near_duplicate_confirm_distance must be in 0..256"),
])
def test_near_duplicate_distances_out_of_range_are_refused(override: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(None, [override])


def _brute_force_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    distance = [[sum(bin(int(w)).count("1") for w in a ^ b) for b in hashes] for a in hashes]
    return [(i, j, distance[i][j]) for i in range(len(hashes)) for j in range(i + 1, len(hashes))
            if distance[i][j] <= max_distance]


@pytest.mark.parametrize("words, block_words", [(1, 2**22), (1, 7), (4, 50)])
def test_hamming_pairs_match_a_brute_force_count(words: int, block_words: int,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # Small blocks force many block boundaries; 4 words is the 256-bit confirmation hash.
    monkeypatch.setattr(validate_module, "_NEAR_DUP_BLOCK_WORDS", block_words)
    rng = np.random.default_rng(words)
    base = rng.integers(0, 2**63, (40, words), dtype=np.uint64)
    flips = np.uint64(1) << rng.integers(0, 64, (40, 3, words)).astype(np.uint64)
    hashes = np.concatenate([base, base ^ flips[:, 0], base ^ flips[:, 0] ^ flips[:, 1] ^ flips[:, 2]])
    max_distance = 3 * words
    expected = _brute_force_pairs(hashes, max_distance)
    assert len(expected) >= 80
    found = [(i, j, d) for block in _hamming_pairs(hashes, max_distance) for i, j, d in zip(*map(list, block))]
    assert found == expected  # in (i, j) order, each pair once


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
