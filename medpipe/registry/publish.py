"""Publishing a local version folder: upload, verify, write the manifest, then (optionally) move the champion.

The champion pointer moves only for a version with a passed gate verdict, or when promoted by hand
(`promote=True`, recorded in champion.json): medpipe.registry.promotion."""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpipe.contracts import ContractError, read_metrics
from medpipe.registry.common import (
    CHAMPION_KEY, MANIFEST_NAME, MODEL_FILE, REQUIRED_FILES, IntegrityError, ProgressHook, RegistryError,
    _dumps, _is_champion, _read_json, _short, _version_prefix, read_champion, validate_name,
)
from medpipe.registry.promotion import PROMOTE_HINT, GateVerdict, gate_verdict, promotion_record
from medpipe.store import InvalidKeyError, ObjectNotFoundError, Store, sha256_file, validate_key

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _LocalFile:
    rel: str  # POSIX path inside the version folder = key suffix
    path: Path
    sha256: str
    size: int


def _collect_files(version_dir: Path) -> dict[str, _LocalFile]:
    """Every publishable file under version_dir, keyed by its POSIX relative path."""
    if not version_dir.is_dir():
        raise RegistryError(f"version folder {version_dir} does not exist or is not a folder")
    root = version_dir.resolve()
    files: dict[str, _LocalFile] = {}
    for path in sorted(version_dir.rglob("*")):
        rel = path.relative_to(version_dir).as_posix()
        if any(part.startswith(".") for part in rel.split("/")):
            _logger.info("skipping hidden file %s", path)
            continue
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            raise RegistryError(f"{path} is a symlink leading outside {version_dir}; copy the file in instead")
        if path.is_dir():
            continue
        if rel == MANIFEST_NAME:
            raise RegistryError(f"{path}: {MANIFEST_NAME} is written by publish; remove it from the version folder")
        try:
            validate_key(rel)
        except InvalidKeyError as exc:
            raise RegistryError(f"{path} cannot be published under its name: {exc}") from None
        files[rel] = _LocalFile(rel, path, sha256_file(path), path.stat().st_size)
    missing = [name for name in REQUIRED_FILES if name not in files]
    if missing:
        raise RegistryError(f"version folder {version_dir} lacks {', '.join(missing)}; required: {REQUIRED_FILES}")
    return files


def _metrics_summary(path: Path) -> dict[str, dict[str, Any]]:
    """Headline metrics per split from metrics.json, for listings and the champion pointer."""
    try:
        report = read_metrics(path)
    except ContractError as exc:
        raise RegistryError(str(exc)) from exc
    return {split: {"n": values.get("n"), **report.headline(split)}
            for split, values in report.splits.items() if isinstance(values, dict)}


def _check_same_content(manifest: dict[str, Any], files: dict[str, _LocalFile], where: str) -> None:
    stored = {entry["path"]: entry["sha256"] for entry in manifest.get("files", [])}
    differences = [f"{rel} is only in the stored version" for rel in sorted(set(stored) - set(files))]
    differences += [f"{rel} is only in the local folder" for rel in sorted(set(files) - set(stored))]
    differences += [
        f"{rel} differs (stored sha256 {_short(stored[rel])}, local {_short(files[rel].sha256)})"
        for rel in sorted(set(files) & set(stored)) if stored[rel] != files[rel].sha256
    ]
    if differences:
        raise RegistryError(
            f"version {where} already exists with different content: {'; '.join(differences)}. "
            "A version is never overwritten: publish under a new version name"
        )


def _upload_files(
    store: Store, prefix: str, files: dict[str, _LocalFile], where: str, progress: ProgressHook | None
) -> tuple[list[str], list[str]]:
    """Upload what is missing; skip files an earlier, interrupted publish already stored identically."""
    uploaded, skipped = [], []
    for rel, local in files.items():
        key = prefix + rel
        try:
            stored = store.head(key)["sha256"] or ""  # "": no sha256 metadata, an interrupted write -> redo
        except ObjectNotFoundError:
            stored = None
        if stored and stored != local.sha256:
            raise RegistryError(
                f"version {where} is incomplete (no {MANIFEST_NAME}) but already holds a different {rel} "
                f"(stored sha256 {_short(stored)}, local {_short(local.sha256)}). "
                "A version is never overwritten: publish under a new version name"
            )
        if stored == local.sha256:
            skipped.append(rel)
        else:
            store.put_file(key, local.path)
            uploaded.append(rel)
        if progress:
            progress(key, "skipped" if stored == local.sha256 else "uploaded")
    return uploaded, skipped


def _verify_objects(store: Store, entries: list[dict[str, Any]]) -> None:
    """Re-read sha256 metadata and size of each object; IntegrityError on the first mismatch."""
    for entry in entries:
        head = store.head(entry["key"])
        if head["sha256"] != entry["sha256"] or head["size"] != entry["size"]:
            raise IntegrityError(
                f"{store.uri(entry['key'])}: the store reports sha256 {head['sha256']} and size {head['size']}, "
                f"expected sha256 {entry['sha256']} and size {entry['size']}"
            )


def _write_champion(store: Store, manifest: dict[str, Any], manifest_key: str,
                    promotion: dict[str, Any]) -> dict[str, Any]:
    """Verify every object of the version, then move the pointer: the last write of a publish."""
    _verify_objects(store, manifest["files"])
    model = next(entry for entry in manifest["files"] if entry["path"] == MODEL_FILE)
    champion = {"model_name": manifest["model_name"], "version": manifest["version"], "key": model["key"],
                "sha256": model["sha256"], "published_at": manifest["published_at"],
                "metrics": manifest.get("metrics", {}), "manifest_key": manifest_key, **promotion}
    store.put_bytes(CHAMPION_KEY, _dumps(champion))
    if promotion["promoted_without_gate"]:
        _logger.warning("champion is now %s/%s by manual promotion: %s", manifest["model_name"], manifest["version"],
                        promotion["promotion_reason"])
    else:
        _logger.info("champion is now %s/%s", manifest["model_name"], manifest["version"])
    return champion


def _champion_decision(verdict: GateVerdict, make_champion: bool, promote: bool, where: str) -> str | None:
    """None when the pointer may move; else why it does not (logged, and returned to the caller to print)."""
    if not make_champion:
        return "not asked to move the champion"
    if verdict.passed or promote:
        return None
    reason = (f"{where} was published but is NOT the champion: {verdict.reason}. To make it champion anyway, "
              f"publish it again with {PROMOTE_HINT} (recorded as a manual promotion)")
    _logger.warning("%s", reason)
    return reason


def publish_version(
    store: Store,
    version_dir: Path,
    model_name: str,
    version: str,
    make_champion: bool = True,
    *,
    promote: bool = False,
    progress: ProgressHook | None = None,
) -> dict[str, Any]:
    """Publish a local version folder as ``models/<model_name>/<version>/`` and (optionally) make it champion.

    Args:
        store: the target store.
        version_dir: folder holding model.onnx, metrics.json and any other files (sub-folders included).
        model_name: e.g. "resnet18".
        version: e.g. ``new_version_name()``.
        make_champion: write champion.json (last) to point at this version, if the folder's gate.json is a passed
            verdict for `model_name` (medpipe.registry.promotion); otherwise the pointer stays and
            ``champion_reason`` says why.
        promote: move the pointer even without a passed gate verdict; champion.json records it
            (``promotion: "manual"``, ``promoted_without_gate: true``).
        progress: called with (key, "uploaded" | "skipped") after each file.

    Returns:
        ``{"status": "published" | "unchanged", "model_name", "version", "uri", "uploaded", "skipped",
        "champion_updated", "manifest_key", "sha256", "gate_passed", "gate_reason", "champion_reason",
        "promotion"}`` (sha256 of model.onnx; champion_reason: why the pointer did not move, else None;
        promotion: "gate" | "manual" when it moved, else None).
    """
    validate_name(model_name, "model name")
    validate_name(version, "version")
    version_dir = Path(version_dir)
    files = _collect_files(version_dir)
    prefix, where = _version_prefix(model_name, version), f"{model_name}/{version}"
    manifest_key = prefix + MANIFEST_NAME
    verdict = gate_verdict(version_dir, model_name)
    blocked = _champion_decision(verdict, make_champion, promote, where)
    promotion = promotion_record(verdict, promote) if blocked is None else None
    result = {"model_name": model_name, "version": version, "uri": store.uri(prefix), "manifest_key": manifest_key,
              "sha256": files[MODEL_FILE].sha256, "gate_passed": verdict.passed, "gate_reason": verdict.reason,
              "champion_reason": blocked, "promotion": None}
    if store.exists(manifest_key):
        manifest = _read_json(store, manifest_key)
        _check_same_content(manifest, files, where)
        # An earlier run stopped between manifest and pointer, or a version published earlier is promoted now.
        moved = promotion is not None and not _is_champion(read_champion(store), model_name, version)
        if moved:
            _write_champion(store, manifest, manifest_key, promotion)
        return {**result, "status": "unchanged", "uploaded": [], "skipped": sorted(files), "champion_updated": moved,
                "promotion": promotion["promotion"] if moved else None}

    uploaded, skipped = _upload_files(store, prefix, files, where, progress)
    entries = [{"path": f.rel, "key": prefix + f.rel, "sha256": f.sha256, "size": f.size} for f in files.values()]
    _verify_objects(store, entries)
    published_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    manifest = {"model_name": model_name, "version": version, "published_at": published_at, "files": entries,
                "metrics": _metrics_summary(files["metrics.json"].path),
                # Whether this version may become champion on its own (the page says so beside the version).
                "gate_verdict": {"passed": verdict.passed, "reason": verdict.reason}}
    manifest_bytes = _dumps(manifest)
    manifest_sha = store.put_bytes(manifest_key, manifest_bytes)
    _verify_objects(store, [{"key": manifest_key, "sha256": manifest_sha, "size": len(manifest_bytes)}])
    if promotion is not None:
        _write_champion(store, manifest, manifest_key, promotion)
    _logger.info("published %s to %s: %d uploaded, %d skipped", where, result["uri"], len(uploaded), len(skipped))
    return {**result, "status": "published", "uploaded": uploaded, "skipped": skipped,
            "champion_updated": promotion is not None,
            "promotion": promotion["promotion"] if promotion is not None else None}
