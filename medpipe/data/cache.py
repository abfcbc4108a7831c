"""Decode every image once into uint8 arrays at training size, on disk, keyed by the dataset's manifest hash.

Both models and every later run reuse the cache: decoding JPEGs with PIL every epoch tops out around 250 img/s
per core and would starve a GPU (architecture.md). The key covers file contents (sha256 per file), labels,
splits, patient ids, image size and the preprocessing version, so any change to the data or the pixels that
`load_image` produces gives a new cache folder; an existing one is never rewritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from medpipe.config import Config
from medpipe.data.layout import Sample, discover
from medpipe.fileio import sha256_file
from medpipe.preprocess import PREPROCESS_VERSION, ImageError, load_image, preprocess_id

__all__ = ["SplitArrays", "CachedDataset", "build_cache", "load_cache", "dataset_manifest", "cache_root",
           "cache_dir_for", "is_complete"]

_logger = logging.getLogger(__name__)
_MANIFEST = "manifest.json"


@dataclass
class SplitArrays:
    images: np.ndarray  # (N, H, W) uint8
    labels: np.ndarray  # (N,) int64
    rels: list[str]  # path relative to the data root, per image
    patients: list[str]


@dataclass
class CachedDataset:
    path: Path
    classes: list[str]
    image_size: int
    manifest_hash: str
    splits: dict[str, SplitArrays]
    skipped: list[dict]  # files that could not be decoded: {"rel", "reason"}
    preprocessing: str = PREPROCESS_VERSION  # medpipe.preprocess.preprocess_id of the pixels


def cache_root(cfg: Config) -> Path:
    return Path(os.path.expandvars(cfg.data.cache_dir)).expanduser()


def cache_dir_for(manifest_hash: str, cfg: Config, cache_dir: str | Path | None = None) -> Path:
    """The cache folder of a dataset (by its manifest hash) at cfg's image size and preprocessing; it exists only
    once build_cache made it (check `is_complete`)."""
    size = cfg.data.image_size
    preprocessing = preprocess_id(cfg.data.largest_region_only)
    key = hashlib.sha256(f"{manifest_hash}|{size}|{preprocessing}".encode()).hexdigest()[:20]
    parent = Path(cache_dir).expanduser() if cache_dir is not None else cache_root(cfg)
    return parent / f"{key}-{size}px"


def is_complete(cache_dir: str | Path) -> bool:
    return (Path(cache_dir) / _MANIFEST).is_file()


def dataset_manifest(root: str | Path, cfg: Config) -> tuple[dict, list[Sample]]:
    """Manifest of the dataset (one entry per image with its sha256) and its hash.

    Returns:
        (manifest dict with "manifest_hash", the samples in manifest order)
    """
    layout = discover(root, cfg.data.classes, cfg.data.label_aliases, cfg.data.patient_id_pattern,
                      exclude=cfg.data.exclude, patient_source=cfg.data.patient_id_source)
    with ThreadPoolExecutor(max_workers=4) as pool:
        hashes = list(pool.map(lambda s: sha256_file(s.path), layout.samples))
    files = [{"rel": s.rel, "split": s.split, "label": s.label, "patient": s.patient, "sha256": h}
             for s, h in zip(layout.samples, hashes)]
    body = {"classes": layout.classes, "files": files}
    manifest_hash = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    return {"manifest_hash": manifest_hash, "root": str(layout.root), **body}, layout.samples


def _decode_all(samples: list[Sample], size: int, max_pixels: int,
                largest_region_only: bool) -> tuple[np.ndarray, list[bool], list[dict]]:
    images = np.zeros((len(samples), size, size), dtype=np.uint8)
    ok = [False] * len(samples)
    skipped: list[dict] = []

    def _one(index: int) -> None:
        try:
            images[index] = load_image(samples[index].path, size, max_pixels, largest_region_only)
            ok[index] = True
        except ImageError as exc:
            skipped.append({"rel": samples[index].rel, "reason": exc.reason})

    # PIL releases the GIL while decoding, so threads scale with cores.
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        list(tqdm(pool.map(_one, range(len(samples))), total=len(samples), desc="decode", unit="img", disable=None))
    return images, ok, skipped


def build_cache(root: str | Path, cfg: Config, cache_dir: str | Path | None = None) -> Path:
    """Decode the dataset once at cfg.data.image_size into `<cache_root>/<hash>-<size>px/`.

    Args:
        root: dataset root (ROOT/{train,val,test}/{class}/*).
        cfg: the config (data section).
        cache_dir: parent folder of caches; default cfg.data.cache_dir.

    Returns:
        The cache folder (reused if it already exists and is complete).
    """
    manifest, samples = dataset_manifest(root, cfg)
    size = cfg.data.image_size
    preprocessing = preprocess_id(cfg.data.largest_region_only)
    target = cache_dir_for(manifest["manifest_hash"], cfg, cache_dir)
    key, parent = target.name.split("-", 1)[0], target.parent
    if (target / _MANIFEST).is_file():
        _logger.info("reusing cache %s", target)
        return target
    if not samples:
        raise ValueError(f"no images found under {root}: "
                         f"expected ROOT/{{train,val,test}}/{{{','.join(cfg.data.classes)}}}/*")
    parent.mkdir(parents=True, exist_ok=True)
    images, ok, skipped = _decode_all(samples, size, cfg.data.max_pixels, cfg.data.largest_region_only)
    for item in skipped:
        _logger.warning("skipped %s: %s", item["rel"], item["reason"])
    # Build in a temp folder and rename: a crash never leaves a half-written cache that looks complete.
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=parent))
    try:
        splits_written = {}
        for split in sorted({s.split for s in samples}):
            index = [i for i, s in enumerate(samples) if s.split == split and ok[i]]
            np.save(tmp / f"{split}_images.npy", images[index])
            np.save(tmp / f"{split}_labels.npy", np.array([samples[i].label_index for i in index], dtype=np.int64))
            (tmp / f"{split}_index.json").write_text(json.dumps(
                {"rels": [samples[i].rel for i in index], "patients": [samples[i].patient for i in index]}))
            splits_written[split] = len(index)
        manifest.update({"image_size": size, "preprocess_version": preprocessing, "splits": splits_written,
                         "skipped": skipped, "cache_key": key})
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=1))
        try:
            os.replace(tmp, target)
        except OSError:
            if not (target / _MANIFEST).is_file():  # another process finished first: theirs is identical
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    _logger.info("cache written to %s (%s)", target, splits_written)
    return target


def load_cache(cache_dir: str | Path) -> CachedDataset:
    """Load a cache folder written by build_cache.

    Raises:
        FileNotFoundError: naming the folder when it is not a complete cache.
    """
    path = Path(cache_dir)
    manifest_path = path / _MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(f"{path} is not a medpipe cache (no {_MANIFEST}); build it with build_cache")
    manifest = json.loads(manifest_path.read_text())
    splits = {}
    for split in manifest["splits"]:
        index = json.loads((path / f"{split}_index.json").read_text())
        splits[split] = SplitArrays(images=np.load(path / f"{split}_images.npy"),
                                    labels=np.load(path / f"{split}_labels.npy"),
                                    rels=index["rels"], patients=index["patients"])
    return CachedDataset(path=path, classes=manifest["classes"], image_size=manifest["image_size"],
                         manifest_hash=manifest["manifest_hash"], splits=splits, skipped=manifest["skipped"],
                         preprocessing=str(manifest.get("preprocess_version", PREPROCESS_VERSION)))
