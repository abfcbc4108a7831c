"""Validate a dataset folder before anything trains on it: layout, decodability, duplicates, leakage, statistics.

Every image is decoded once at native size (in threads: PIL and hashlib release the GIL). Findings carry the
severity the config gives their check; any "error" makes the report not ok, which fails `medpipe validate`
and the pipeline. The report is written as `validation.json` (for machines) and `validation.md` (for people).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from medpipe.config import VALIDATION_CHECKS, Config
from medpipe.data.layout import DatasetLayout, Sample, discover
from medpipe.data.source_check import confounds_of_records
from medpipe.data.validate_report import Finding, ValidationReport, format_validation_summary, write_report
from medpipe.fileio import sha256_file
from medpipe.preprocess import ImageError, decode_image, stored_mode

# Finding, ValidationReport and format_validation_summary are re-exported: importable from here as before.
__all__ = ["Finding", "ValidationReport", "validate_dataset", "format_validation_summary"]

_logger = logging.getLogger(__name__)

# Hash words x rows of the pairwise Hamming-distance matrix computed at once: 2**22 uint64 = 32 MiB of XORs,
# so memory stays flat however many images there are (the old fixed 512 rows took 400 MB at 100k images).
_NEAR_DUP_BLOCK_WORDS = 2**22


@dataclass
class _Record:
    """What validation keeps of one image (never the pixels)."""

    sample: Sample
    file_sha256: str | None = None
    pixel_key: str | None = None  # sha256 of decoded pixels + shape: equal for a PNG copy of a JPEG
    phash64: bytes | None = None  # 8 bytes: candidate stage of the near-duplicate check
    phash256: bytes | None = None  # 32 bytes: confirmation stage (finer, sees texture as well as outline)
    size: tuple[int, int] | None = None  # (width, height)
    mode: str | None = None
    distinct_values: int | None = None  # 1, 2, or 3 meaning "three or more"
    error: ImageError | None = None


class _Findings:
    """Applies the configured severity to each finding; "ignore" drops it but keeps a count."""

    def __init__(self, severity: dict[str, str]) -> None:
        self.severity = severity
        self.errors: list[Finding] = []
        self.warnings: list[Finding] = []
        self.counts: Counter[str] = Counter()

    def add(self, check: str, paths: list[str], message: str) -> None:
        self.counts[check] += 1
        severity = self.severity[check]
        if severity == "error":
            self.errors.append(Finding(check, severity, sorted(paths), message))
        elif severity == "warning":
            self.warnings.append(Finding(check, severity, sorted(paths), message))

    def summary(self) -> dict[str, dict[str, Any]]:
        return {c: {"severity": self.severity[c], "count": self.counts[c]} for c in VALIDATION_CHECKS}


def validate_dataset(root: str | Path, cfg: Config, out_dir: str | Path, *,
                     workers: int | None = None) -> ValidationReport:
    """Check a ROOT/{train,val,test}/{class}/ image folder and write validation.json + validation.md.

    Args:
        root: the data root.
        cfg: the config (data.* for layout and limits, validate.* for severities and the near-duplicate distance).
        out_dir: where the two report files go; must not be inside `root` (validation never writes into data).
        workers: decoding threads; None uses one per CPU core (at least 2).

    Returns:
        The report; `ok` is False when any check with severity "error" fired.

    Raises:
        FileNotFoundError: `root` is not a folder.
        ValueError: `out_dir` is inside `root`.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir).expanduser()
    layout = discover(root, cfg.data.classes, cfg.data.label_aliases, cfg.data.patient_id_pattern,
                      exclude=cfg.data.exclude, patient_source=cfg.data.patient_id_source)
    if out_dir.resolve() == layout.root or layout.root in out_dir.resolve().parents:
        raise ValueError(f"output folder {out_dir} is inside the data root {layout.root}; expected a folder outside "
                         "it, so that validation never adds files to the dataset")
    findings = _Findings(cfg.validate.severity)
    for problem in layout.problems:
        findings.add(problem.check, [problem.path], problem.message)
    discovered = time.perf_counter()
    records = _inspect_all(layout.samples, cfg.data.max_pixels, workers)
    decoded = time.perf_counter()
    for rec in records:
        if rec.error is not None:
            findings.add(rec.error.kind, [rec.sample.rel], f"{rec.sample.rel}: {rec.error.reason}")
    good = [r for r in records if r.error is None]
    counts = _count_classes(layout, good, findings)
    duplicates = _check_exact_duplicates(good, findings)
    near = _check_near_duplicates(good, cfg.validate.near_duplicate_distance,
                                  cfg.validate.near_duplicate_confirm_distance, findings)
    patients = _check_patients(layout, findings)
    n_mask_like = _check_mask_like(good, findings)
    confounds = confounds_of_records(good, list(layout.classes), cfg.validate.source_confound_threshold,
                                     findings.add)
    finished = time.perf_counter()
    stats = {
        "root": str(layout.root), "classes": list(layout.classes), "splits": list(layout.splits),
        "n_files": len(records), "n_usable": len(good), "counts": counts,
        "imbalance_ratio": {s: _imbalance(c) for s, c in counts.items()},
        "patients": patients, "images": _image_stats(layout.splits, good),
        "duplicates": {**duplicates, **near}, "mask_like": n_mask_like, "source_confounds": confounds,
        "excluded": {"count": len(layout.excluded), "patterns": list(cfg.data.exclude), "paths": layout.excluded},
        "checks": findings.summary(), "content_hash": _content_hash(records),
        "settings": {"max_pixels": cfg.data.max_pixels, "exclude": list(cfg.data.exclude),
                     "patient_id_pattern": cfg.data.patient_id_pattern,
                     "near_duplicate_distance": cfg.validate.near_duplicate_distance,
                     "near_duplicate_confirm_distance": cfg.validate.near_duplicate_confirm_distance,
                     "source_confound_threshold": cfg.validate.source_confound_threshold,
                     "severity": dict(cfg.validate.severity)},
        "timing": {"discover_s": round(discovered - started, 3), "decode_s": round(decoded - discovered, 3),
                   "checks_s": round(finished - decoded, 3), "total_s": round(finished - started, 3),
                   "images_per_s": round(len(records) / max(decoded - discovered, 1e-9), 1)},
    }
    report = ValidationReport(ok=not findings.errors, errors=findings.errors, warnings=findings.warnings,
                              json_path=out_dir / "validation.json", md_path=out_dir / "validation.md", stats=stats)
    write_report(report.to_dict(), report.json_path, report.md_path)
    _logger.info("validated %s: %d images, %d errors, %d warnings in %.1f s", layout.root, len(records),
                 len(findings.errors), len(findings.warnings), finished - started)
    return report


def _inspect(sample: Sample, max_pixels: int) -> _Record:
    """Hash the file, decode it once at native size, and keep only hashes, size and mode."""
    import imagehash  # imports scipy: only paid when validating

    rec = _Record(sample)
    try:
        rec.file_sha256 = sha256_file(sample.path)
        pixels = decode_image(sample.path, max_pixels)
        rec.mode = stored_mode(sample.path)  # as stored, before our grayscale conversion
    except ImageError as exc:
        rec.error = exc
        return rec
    except OSError as exc:  # the file vanished or is unreadable between discovery and here
        rec.error = ImageError(sample.path, f"cannot read file: {exc.strerror or exc}")
        return rec
    height, width = pixels.shape
    rec.size = (width, height)
    digest = hashlib.sha256(f"{height}x{width}:".encode())
    digest.update(pixels.tobytes())
    rec.pixel_key = digest.hexdigest()
    rec.distinct_values = _distinct_values_up_to_3(pixels)
    img = Image.fromarray(pixels)
    rec.phash64 = np.packbits(imagehash.phash(img).hash).tobytes()
    rec.phash256 = np.packbits(imagehash.phash(img, hash_size=16).hash).tobytes()
    return rec


def _distinct_values_up_to_3(pixels: np.ndarray) -> int:
    """1, 2 or 3 (= three or more) distinct values, in two passes: np.unique would sort every pixel."""
    low, high = pixels.min(), pixels.max()
    if low == high:
        return 1
    return 3 if np.any((pixels != low) & (pixels != high)) else 2


def _check_mask_like(good: list[_Record], findings: _Findings) -> int:
    """Images with at most two pixel values: segmentation masks or blanks mixed into the classes."""
    flagged = [r.sample.rel for r in good if (r.distinct_values or 3) <= 2]
    if flagged:
        shown = ", ".join(flagged[:5]) + (f" ... and {len(flagged) - 5} more" if len(flagged) > 5 else "")
        findings.add("mask_like", flagged, f"{len(flagged)} image(s) have at most two pixel values, like a "
                     f"segmentation mask or a blank: {shown}; expected grey-level images. Move them out or add their "
                     "name pattern to data.exclude")
    return len(flagged)


def _inspect_all(samples: list[Sample], max_pixels: int, workers: int | None) -> list[_Record]:
    """Inspect every sample in a thread pool; results come back in the samples' (sorted) order."""
    workers = workers or max(2, os.cpu_count() or 1)
    records: list[_Record | None] = [None] * len(samples)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(_inspect, s, max_pixels): i for i, s in enumerate(samples)}
        with tqdm(total=len(samples), desc="validate", unit="img", disable=None) as bar:
            for future in as_completed(futures):
                records[futures[future]] = future.result()
                bar.update()
    return [r for r in records if r is not None]


def _count_classes(layout: DatasetLayout, good: list[_Record], findings: _Findings) -> dict[str, dict[str, int]]:
    """Usable images per split and class; a class whose files all failed to decode is empty too."""
    counts = {s: {c: 0 for c in layout.classes} for s in layout.splits}
    for rec in good:
        counts[rec.sample.split][rec.sample.label] += 1
    already = {p.path for p in layout.problems if p.check == "empty_class"}
    for split, per_class in counts.items():
        for label, n in per_class.items():
            if n == 0 and f"{split}/{label}" not in already:
                findings.add("empty_class", [f"{split}/{label}"], f"split {split} has no readable images of class "
                             f"{label!r} (every file failed to decode); expected at least one")
    return counts


def _imbalance(per_class: dict[str, int]) -> float | None:
    """max/min class count; None when a class is empty (the ratio is undefined, empty_class reports it)."""
    low = min(per_class.values(), default=0)
    return round(max(per_class.values()) / low, 3) if low else None


def _check_exact_duplicates(good: list[_Record], findings: _Findings) -> dict[str, int]:
    """Group identical decoded pixels; report repeats within a split, across splits and under two labels."""
    groups: dict[str, list[_Record]] = defaultdict(list)
    for rec in good:
        groups[rec.pixel_key].append(rec)
    summary = {"groups": 0, "within_split": 0, "cross_split": 0, "label_conflict": 0}
    for members in groups.values():
        if len(members) < 2:
            continue
        summary["groups"] += 1
        rels = [m.sample.rel for m in members]
        listed = ", ".join(sorted(rels))
        by_split: dict[str, list[str]] = defaultdict(list)
        for m in members:
            by_split[m.sample.split].append(m.sample.rel)
        for split, paths in sorted(by_split.items()):
            if len(paths) > 1:
                summary["within_split"] += 1
                findings.add("duplicate_within_split", paths, f"identical pixels {len(paths)} times in split {split}: "
                             f"{', '.join(sorted(paths))}; expected each image once")
        if len(by_split) > 1:
            summary["cross_split"] += 1
            findings.add("duplicate_cross_split", rels, f"identical pixels in splits {', '.join(sorted(by_split))}: "
                         f"{listed}; expected splits to share no image (training leaves train copies of val/test "
                         "images out under data.leakage=exclude_from_train, so "
                         "validate.severity.duplicate_cross_split=warning lets a run go on)")
        labels = sorted({m.sample.label for m in members})
        if len(labels) > 1:
            summary["label_conflict"] += 1
            findings.add("label_conflict", rels, f"identical pixels labelled {' and '.join(labels)}: {listed}; "
                         "expected one label per image")
    return summary


def _hash_words(hashes: list[bytes]) -> np.ndarray:
    """Equal-length hashes (at least one) as an (N, words) uint64 array; byte order does not change Hamming
    distances."""
    words = len(hashes[0]) // 8
    return np.frombuffer(b"".join(hashes), dtype=np.uint64).reshape(len(hashes), words).copy()  # aligned, writable


def _hamming_pairs(hashes: np.ndarray, max_distance: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Yield arrays (i, j, distance) of all pairs i < j whose hashes differ in <= max_distance bits.

    Vectorised in row blocks, each compared with its own and later rows only; pairs come in (i, j) order.

    Args:
        hashes: (N, words) uint64, one hash per row.
        max_distance: the largest Hamming distance kept.
    """
    n, words = hashes.shape
    rows = max(1, _NEAR_DUP_BLOCK_WORDS // max(1, n * words))
    for start in range(0, n, rows):
        block = hashes[start:start + rows]
        dist = np.bitwise_count(block[:, None, :] ^ hashes[None, start:, :]).sum(axis=2, dtype=np.int32)
        # Row r of the block is hash start + r; only columns after it (c > r, offset by start) are new pairs.
        keep = (dist <= max_distance) & (np.arange(dist.shape[1])[None, :] > np.arange(len(block))[:, None])
        r, c = np.nonzero(keep)
        yield r + start, c + start, dist[r, c]


def _check_near_duplicates(good: list[_Record], candidate_distance: int, confirm_distance: int,
                           findings: _Findings) -> dict[str, int]:
    """Perceptual-hash neighbours that are not exact duplicates (those are reported already).

    The 64-bit hash mostly sees the breast outline: different patients with alike silhouettes fall within a few
    bits. So its neighbours are only candidates, and each must also be close on the 256-bit hash, which sees the
    tissue texture (see ValidateConfig for the measured distances behind both thresholds).

    Returns:
        {"near_duplicate_candidates": pairs screened, "near_duplicate_pairs": pairs confirmed and reported}.
    """
    if len(good) < 2:
        return {"near_duplicate_candidates": 0, "near_duplicate_pairs": 0}
    h64 = _hash_words([r.phash64 for r in good])
    h256 = _hash_words([r.phash256 for r in good])
    pixel_group = np.unique([r.pixel_key for r in good], return_inverse=True)[1]
    n_candidates = 0
    confirmed: list[tuple[int, int, int, int]] = []
    for i, j, d64 in _hamming_pairs(h64, candidate_distance):
        distinct = pixel_group[i] != pixel_group[j]
        i, j, d64 = i[distinct], j[distinct], d64[distinct]
        n_candidates += len(i)
        d256 = np.bitwise_count(h256[i] ^ h256[j]).sum(axis=1)
        close = d256 <= confirm_distance
        confirmed += zip(i[close].tolist(), j[close].tolist(), d64[close].tolist(), d256[close].tolist())
    for i, j, d64, d256 in confirmed:
        a, b = good[i].sample, good[j].sample
        where = f"both in {a.split}" if a.split == b.split else f"across splits {a.split}/{b.split}"
        findings.add("near_duplicate", [a.rel, b.rel],
                     f"{a.rel} and {b.rel} look alike ({where}; perceptual hash distance {d256} <= {confirm_distance} "
                     f"of 256 bits, {d64} <= {candidate_distance} of 64); expected distinct images")
    _logger.info("near-duplicates: %d candidate pairs screened, %d confirmed", n_candidates, len(confirmed))
    return {"near_duplicate_candidates": n_candidates, "near_duplicate_pairs": len(confirmed)}


def _check_patients(layout: DatasetLayout, findings: _Findings) -> dict[str, Any]:
    """Patients per split, where their ids came from (DICOM PatientID, the file-name pattern, or neither), and
    patients shared by two splits."""
    images: dict[str, Counter[str]] = {s: Counter() for s in layout.splits}
    unmatched: Counter[str] = Counter()
    for s in layout.samples:
        images[s.split][s.patient] += 1
        if s.patient_source == "file_stem":  # neither a DICOM PatientID nor a match of the pattern
            unmatched[s.split] += 1
    overlap: dict[str, Any] = {}
    for a, b in itertools.combinations(layout.splits, 2):
        shared = sorted(set(images[a]) & set(images[b]))
        if not shared:
            continue
        ids = {p: {a: images[a][p], b: images[b][p]} for p in shared}
        overlap[f"{a}/{b}"] = {"patients": len(shared), "images": {a: sum(images[a][p] for p in shared),
                                                                   b: sum(images[b][p] for p in shared)},
                               "ids": ids}
        shown = ", ".join(f"{p} ({a} {n[a]}, {b} {n[b]})" for p, n in list(ids.items())[:10])
        more = f" ... and {len(shared) - 10} more" if len(shared) > 10 else ""
        paths = [s.rel for s in layout.samples if s.split in (a, b) and s.patient in ids]
        example = [next(s.rel for s in layout.samples if s.split == sp and s.patient == shared[0]) for sp in (a, b)]
        who = "1 patient has" if len(shared) == 1 else f"{len(shared)} patients have"
        findings.add("patient_leakage", paths, f"{who} images in both {a} and {b}: {shown}{more} (e.g. "
                     f"{example[0]} and {example[1]}); expected each patient in one split only")
    return {"per_split": {s: len(images[s]) for s in layout.splits},
            "unmatched_pattern": {s: unmatched[s] for s in layout.splits}, "overlap": overlap,
            "id_sources": dict(Counter(s.patient_source for s in layout.samples))}


def _image_stats(splits: list[str], good: list[_Record]) -> dict[str, Any]:
    """Native sizes (min/max by area, most common) and stored PIL modes per split."""
    stats: dict[str, Any] = {}
    for split in splits:
        recs = [r for r in good if r.sample.split == split]
        if not recs:
            continue
        sizes = Counter(r.size for r in recs)
        by_area = sorted(sizes, key=lambda wh: (wh[0] * wh[1], wh))
        (common, n_common), = sizes.most_common(1)
        stats[split] = {"min_size": list(by_area[0]), "max_size": list(by_area[-1]), "most_common_size": list(common),
                        "most_common_count": n_common, "distinct_sizes": len(sizes),
                        "modes": dict(sorted(Counter(r.mode for r in recs).items()))}
    return stats


def _content_hash(records: list[_Record]) -> str:
    """sha256 over sorted (relative path, file sha256): changes whenever any image file is added, removed or edited."""
    digest = hashlib.sha256()
    for rel, sha in sorted((r.sample.rel, r.file_sha256 or "unreadable") for r in records):
        digest.update(f"{rel}\t{sha}\n".encode())
    return digest.hexdigest()
