"""Model registry on a Store: immutable versions plus one mutable champion pointer.

The layout (``models/<model_name>/<version>/{model.onnx, metrics.json, gate.json, model_card.md, config.yaml,
plots/*.png, manifest.json}`` and ``champion.json``) is documented in the README ("Registry layout").

Rules:
- Every object carries its sha256 in metadata. A version without ``manifest.json`` is incomplete: the manifest
  is written only after every file is uploaded and verified (sha256 metadata and size re-read from the store).
- A version is never overwritten. Publishing the same content again uploads nothing (status "unchanged");
  different content under an existing version name is an error naming the differing file.
- ``champion.json`` is the only object ever replaced, and it is written last, after the manifest.
- A publish that died half-way is completed by running it again: files already stored with the same sha256
  are skipped, the rest uploaded, then manifest and champion written.
- Model and version names match ``^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`` and never contain ``..``.
- ``resolve_model`` verifies the downloaded model.onnx against the manifest (and champion) sha256 and refuses
  a mismatch with :class:`IntegrityError`.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medpipe.fileio import atomic_output
from medpipe.store import InvalidKeyError, ObjectNotFoundError, Store, sha256_file, validate_key

__all__ = [
    "RegistryError", "IntegrityError", "publish_version", "list_versions", "show_version", "read_champion",
    "resolve_model", "new_version_name", "validate_name", "CHAMPION_KEY", "MODELS_PREFIX", "MANIFEST_NAME",
    "REQUIRED_FILES",
]

_logger = logging.getLogger(__name__)

CHAMPION_KEY = "champion.json"
MODELS_PREFIX = "models/"
MANIFEST_NAME = "manifest.json"
MODEL_FILE = "model.onnx"
REQUIRED_FILES = (MODEL_FILE, "metrics.json")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SUMMARY_METRICS = ("n", "accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "macro_auc")

ProgressHook = Callable[[str, str], None]  # (key, "uploaded" | "skipped"), called after each file


class RegistryError(RuntimeError):
    """A registry operation cannot proceed; the message names the model/version/file and what is expected."""


class IntegrityError(RegistryError):
    """Stored or downloaded bytes do not match the recorded sha256."""


@dataclass(frozen=True)
class _LocalFile:
    rel: str  # POSIX path inside the version folder = key suffix
    path: Path
    sha256: str
    size: int


def validate_name(name: str, what: str = "name") -> str:
    """Check a model or version name; returns it unchanged or raises RegistryError naming it."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise RegistryError(
            f"invalid {what} {name!r}: use 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter or digit, "
            "without '..'"
        )
    return name


def new_version_name(now: dt.datetime | None = None) -> str:
    """A version name from a UTC timestamp, e.g. ``20261126T153000Z`` (naive datetimes are taken as UTC)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.timezone.utc)
    return now.astimezone(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def _version_prefix(model_name: str, version: str) -> str:
    return f"{MODELS_PREFIX}{model_name}/{version}/"


def _dumps(data: dict[str, Any]) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def _read_json(store: Store, key: str) -> dict[str, Any]:
    try:
        data = json.loads(store.get_bytes(key))
    except ValueError as exc:
        raise RegistryError(f"{store.uri(key)} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise RegistryError(f"{store.uri(key)} must hold a JSON object, got {type(data).__name__}")
    return data


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
        metrics = json.loads(path.read_text())
    except ValueError as exc:
        raise RegistryError(f"{path} is not valid JSON: {exc}") from exc
    if not isinstance(metrics, dict):
        raise RegistryError(f"{path} must hold a JSON object with a 'splits' section")
    splits = metrics.get("splits") if isinstance(metrics.get("splits"), dict) else {}
    return {
        split: {k: values[k] for k in _SUMMARY_METRICS if k in values}
        for split, values in splits.items()
        if isinstance(values, dict)
    }


def _short(sha: str | None) -> str:
    return f"{sha[:12]}…" if sha else "none"


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


def _write_champion(store: Store, manifest: dict[str, Any], manifest_key: str) -> dict[str, Any]:
    """Verify every object of the version, then move the pointer: the last write of a publish."""
    _verify_objects(store, manifest["files"])
    model = next(entry for entry in manifest["files"] if entry["path"] == MODEL_FILE)
    champion = {"model_name": manifest["model_name"], "version": manifest["version"], "key": model["key"],
                "sha256": model["sha256"], "published_at": manifest["published_at"],
                "metrics": manifest.get("metrics", {}), "manifest_key": manifest_key}
    store.put_bytes(CHAMPION_KEY, _dumps(champion))
    _logger.info("champion is now %s/%s", manifest["model_name"], manifest["version"])
    return champion


def _is_champion(champion: dict[str, Any] | None, model_name: str, version: str) -> bool:
    return champion is not None and (champion["model_name"], champion["version"]) == (model_name, version)


def publish_version(
    store: Store,
    version_dir: Path,
    model_name: str,
    version: str,
    make_champion: bool = True,
    *,
    progress: ProgressHook | None = None,
) -> dict[str, Any]:
    """Publish a local version folder as ``models/<model_name>/<version>/`` and (optionally) make it champion.

    Args:
        store: the target store.
        version_dir: folder holding model.onnx, metrics.json and any other files (sub-folders included).
        model_name: e.g. "resnet18".
        version: e.g. ``new_version_name()``.
        make_champion: write champion.json (last) to point at this version.
        progress: called with (key, "uploaded" | "skipped") after each file.

    Returns:
        ``{"status": "published" | "unchanged", "model_name", "version", "uri", "uploaded", "skipped",
        "champion_updated", "manifest_key"}``.
    """
    validate_name(model_name, "model name")
    validate_name(version, "version")
    version_dir = Path(version_dir)
    files = _collect_files(version_dir)
    prefix, where = _version_prefix(model_name, version), f"{model_name}/{version}"
    manifest_key = prefix + MANIFEST_NAME
    result = {"model_name": model_name, "version": version, "uri": store.uri(prefix), "manifest_key": manifest_key}
    if store.exists(manifest_key):
        manifest = _read_json(store, manifest_key)
        _check_same_content(manifest, files, where)
        promote = make_champion and not _is_champion(read_champion(store), model_name, version)
        if promote:  # an earlier run stopped between manifest and pointer
            _write_champion(store, manifest, manifest_key)
        return {**result, "status": "unchanged", "uploaded": [], "skipped": sorted(files), "champion_updated": promote}

    uploaded, skipped = _upload_files(store, prefix, files, where, progress)
    entries = [{"path": f.rel, "key": prefix + f.rel, "sha256": f.sha256, "size": f.size} for f in files.values()]
    _verify_objects(store, entries)
    published_at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    manifest = {"model_name": model_name, "version": version, "published_at": published_at, "files": entries,
                "metrics": _metrics_summary(files["metrics.json"].path)}
    manifest_bytes = _dumps(manifest)
    manifest_sha = store.put_bytes(manifest_key, manifest_bytes)
    _verify_objects(store, [{"key": manifest_key, "sha256": manifest_sha, "size": len(manifest_bytes)}])
    if make_champion:
        _write_champion(store, manifest, manifest_key)
    _logger.info("published %s to %s: %d uploaded, %d skipped", where, result["uri"], len(uploaded), len(skipped))
    return {**result, "status": "published", "uploaded": uploaded, "skipped": skipped,
            "champion_updated": make_champion}


def read_champion(store: Store) -> dict[str, Any] | None:
    """The champion pointer, or None when nothing was made champion yet."""
    if not store.exists(CHAMPION_KEY):
        return None
    champion = _read_json(store, CHAMPION_KEY)
    missing = [k for k in ("model_name", "version", "key", "sha256") if not isinstance(champion.get(k), str)]
    if missing:
        raise RegistryError(f"{store.uri(CHAMPION_KEY)} lacks {missing}; it is not a champion pointer")
    return champion


def _scan(store: Store) -> dict[tuple[str, str], bool]:
    """(model_name, version) -> complete (has a manifest), from one listing of models/."""
    versions: dict[tuple[str, str], bool] = {}
    for key in store.list(MODELS_PREFIX):
        parts = key.split("/")
        if len(parts) < 4:
            continue
        ident = (parts[1], parts[2])
        versions[ident] = versions.get(ident, False) or (len(parts) == 4 and parts[3] == MANIFEST_NAME)
    return versions


def list_versions(store: Store) -> list[dict[str, Any]]:
    """Every version in the store, oldest first, incomplete ones (no manifest) last.

    Returns:
        Dicts ``{"model_name", "version", "published_at", "is_champion", "complete", "metrics", "uri"}``;
        metrics is the per-split summary stored in the manifest.
    """
    champion = read_champion(store)
    rows = []
    for (model_name, version), complete in _scan(store).items():
        prefix = _version_prefix(model_name, version)
        manifest = _read_json(store, prefix + MANIFEST_NAME) if complete else {}
        rows.append({"model_name": model_name, "version": version, "published_at": manifest.get("published_at"),
                     "is_champion": _is_champion(champion, model_name, version), "complete": complete,
                     "metrics": manifest.get("metrics", {}), "uri": store.uri(prefix)})
    rows.sort(key=lambda r: (r["published_at"] is None, r["published_at"] or "", r["model_name"], r["version"]))
    return rows


def _resolve_ref(store: Store, ref: str) -> tuple[str, str]:
    """ref = "champion" | "VERSION" | "MODEL/VERSION" -> (model_name, version) of an existing version."""
    if ref == "champion":
        champion = read_champion(store)
        if champion is None:
            raise RegistryError(f"no champion in {store.uri()} yet: publish a model first")
        return champion["model_name"], champion["version"]
    known = _scan(store)
    if "/" in ref:
        model_name, _, version = ref.partition("/")
        ident = (validate_name(model_name, "model name"), validate_name(version, "version"))
        if ident not in known:
            raise RegistryError(f"no version {ref} in {store.uri()}; known: {_known(known)}")
        return ident
    validate_name(ref, "version")
    matches = sorted(ident for ident in known if ident[1] == ref)
    if not matches:
        raise RegistryError(f"no version {ref} in {store.uri()}; known: {_known(known)}")
    if len(matches) > 1:
        listed = ", ".join(f"{m}/{v}" for m, v in matches)
        raise RegistryError(f"version {ref} exists for several models ({listed}); say MODEL/VERSION")
    return matches[0]


def _known(known: dict[tuple[str, str], bool]) -> str:
    names = [f"{m}/{v}" for m, v in sorted(known)]
    if not names:
        return "none"
    more = f" and {len(names) - 20} more" if len(names) > 20 else ""
    return ", ".join(names[:20]) + more


def show_version(store: Store, ref: str) -> dict[str, Any]:
    """The manifest of a complete version plus ``uri``, ``is_champion`` and ``manifest_key``.

    Args:
        store: the store.
        ref: "champion", "VERSION" (must be unique across models) or "MODEL/VERSION".
    """
    model_name, version = _resolve_ref(store, ref)
    prefix = _version_prefix(model_name, version)
    manifest_key = prefix + MANIFEST_NAME
    if not store.exists(manifest_key):
        raise RegistryError(
            f"version {model_name}/{version} at {store.uri(prefix)} is incomplete (no {MANIFEST_NAME}): "
            "re-run publish with the same folder to complete it"
        )
    manifest = _read_json(store, manifest_key)
    return {**manifest, "uri": store.uri(prefix), "manifest_key": manifest_key,
            "is_champion": _is_champion(read_champion(store), model_name, version)}


def resolve_model(store: Store, ref: str, dest_dir: Path) -> tuple[Path, dict[str, Any]]:
    """Download and verify the model.onnx that ``ref`` names; a ref ending in ``.onnx`` is a local file.

    Args:
        store: the store.
        ref: "champion", "VERSION", "MODEL/VERSION", or a path to a local .onnx file (used as is).
        dest_dir: downloads land in ``dest_dir/<model_name>/<version>/model.onnx`` (reused when its sha256 fits).

    Returns:
        (path of model.onnx, info) with info ``{"source": "store" | "local", "sha256", ...}``.

    Raises:
        IntegrityError: the downloaded bytes do not match the manifest's sha256 (or the champion's).
    """
    if ref.endswith(".onnx"):
        if not Path(ref).is_file():
            raise RegistryError(f"local model file {ref} does not exist")
        return Path(ref), {"source": "local", "ref": ref, "path": ref, "sha256": sha256_file(ref)}
    info = show_version(store, ref)
    model_name, version = info["model_name"], info["version"]
    entry = next((e for e in info["files"] if e["path"] == MODEL_FILE), None)
    if entry is None:
        raise RegistryError(f"{store.uri(info['manifest_key'])} lists no {MODEL_FILE}")
    key, expected = _version_prefix(model_name, version) + MODEL_FILE, entry["sha256"]
    if ref == "champion":
        champion = read_champion(store) or {}
        if champion.get("sha256") != expected:
            raise IntegrityError(
                f"{store.uri(key)}: champion.json says sha256 {champion.get('sha256')} but the manifest says {expected}"
            )
    dest = Path(dest_dir) / model_name / version / MODEL_FILE
    downloaded = not (dest.is_file() and sha256_file(dest) == expected)
    if downloaded:
        # Verified inside the block: only bytes that match the manifest are ever moved to the final name; a
        # mismatch removes the (uniquely named) temp, so two tasks never hash each other's partial download.
        with atomic_output(dest) as tmp:
            actual = sha256_file(store.get_file(key, tmp))
            if actual != expected:
                raise IntegrityError(
                    f"{store.uri(key)}: downloaded sha256 {actual} does not match the recorded sha256 {expected}; "
                    "refusing to use it"
                )
    _logger.info("resolved %s to %s (%s)", ref, dest, "downloaded" if downloaded else "already present")
    return dest, {"source": "store", "ref": ref, "model_name": model_name, "version": version, "key": key,
                  "uri": store.uri(key), "sha256": expected, "published_at": info.get("published_at"),
                  "metrics": info.get("metrics", {}), "is_champion": info["is_champion"], "path": str(dest),
                  "downloaded": downloaded}
