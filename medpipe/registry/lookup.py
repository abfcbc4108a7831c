"""Reading the registry: list versions, show one, download and verify a model (``resolve_model``)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from medpipe.fileio import atomic_output
from medpipe.registry.common import (
    MANIFEST_NAME, MODEL_FILE, MODELS_PREFIX, IntegrityError, MissingFileError, RegistryError, _is_champion,
    _read_json, _version_prefix, read_champion, validate_name,
)
from medpipe.store import Store, sha256_file

_logger = logging.getLogger(__name__)


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


def locate_model(store: Store, ref: str, file: str = MODEL_FILE) -> dict[str, Any]:
    """Which version ``ref`` names and the key and recorded sha256 of its ``file``, checked without downloading
    (what the scoring DAG needs to pin a version before the scoring task fetches the file).

    Raises:
        RegistryError / MissingFileError / IntegrityError: as ``resolve_model``, before any byte is fetched.
    """
    info = show_version(store, ref)
    model_name, version = info["model_name"], info["version"]
    entries = {e["path"]: e for e in info["files"]}
    if MODEL_FILE not in entries:
        raise RegistryError(f"{store.uri(info['manifest_key'])} lists no {MODEL_FILE}")
    if file not in entries:
        raise MissingFileError(f"version {model_name}/{version} has no {file} ({store.uri(info['manifest_key'])} "
                               f"lists {sorted(entries)})")
    if ref == "champion":  # the pointer records model.onnx's sha256: it proves the manifest is the champion's
        champion = read_champion(store) or {}
        if champion.get("sha256") != entries[MODEL_FILE]["sha256"]:
            raise IntegrityError(
                f"{store.uri(_version_prefix(model_name, version) + MODEL_FILE)}: champion.json says sha256 "
                f"{champion.get('sha256')} but the manifest says {entries[MODEL_FILE]['sha256']}"
            )
    key = _version_prefix(model_name, version) + file
    return {"source": "store", "ref": ref, "model_name": model_name, "version": version, "key": key,
            "uri": store.uri(key), "sha256": entries[file]["sha256"], "published_at": info.get("published_at"),
            "metrics": info.get("metrics", {}), "is_champion": info["is_champion"], "file": file,
            "files": sorted(entries), "model_onnx_sha256": entries[MODEL_FILE]["sha256"]}


def resolve_model(store: Store, ref: str, dest_dir: Path, file: str = MODEL_FILE) -> tuple[Path, dict[str, Any]]:
    """Download and verify the model.onnx (or another model file of the version, e.g. ``INT8_MODEL_FILE``) that
    ``ref`` names; a ref ending in ``.onnx`` is a local file.

    Args:
        store: the store.
        ref: "champion", "VERSION", "MODEL/VERSION", or a path to a local .onnx file (used as is).
        dest_dir: downloads land in ``dest_dir/<model_name>/<version>/<file>`` (reused when its sha256 fits).
        file: the file of the version to fetch; the manifest must list it.

    Returns:
        (path of the file, info) with info ``{"source": "store" | "local", "sha256", "file", ...}``.

    Raises:
        RegistryError: the version's manifest does not list ``file`` (for the INT8 model: exported without one).
        IntegrityError: the downloaded bytes do not match the manifest's sha256 (or, for the champion, the
            manifest's model.onnx does not match champion.json).
    """
    if ref.endswith(".onnx"):
        if not Path(ref).is_file():
            raise RegistryError(f"local model file {ref} does not exist")
        return Path(ref), {"source": "local", "ref": ref, "path": ref, "sha256": sha256_file(ref), "file": None}
    located = locate_model(store, ref, file)
    key, expected = located["key"], located["sha256"]
    dest = Path(dest_dir) / located["model_name"] / located["version"] / file
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
    return dest, {**located, "path": str(dest), "downloaded": downloaded}
