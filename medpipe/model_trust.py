"""Whether a scoring run used a model the registry vouches for: its bytes' sha256 checked against a published manifest.

`medpipe score --model path/to/file.onnx` runs any file, and labels its rows with the version written in that
file's metadata, which anyone can write. Such a run is marked unverified (in its summary and in every row) so
that nobody reads its predictions as those of the published version. A model resolved from the store
(`medpipe.registry.resolve_model`, which refuses bytes that do not match the manifest) is verified; so is a local
file that a caller resolved from the store beforehand and passes with its registry record (the inbox DAG), once
its sha256 is re-checked here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medpipe.fileio import sha256_file

__all__ = ["Verification", "local_source", "verification"]

Verification = dict[str, Any]  # {"verified": bool, "reason": str}


def local_source(path: Path, registry_source: dict[str, Any] | None) -> dict[str, Any]:
    """The source record of a local model file; a registry record (resolve_model's info) counts only when the
    file's sha256 is the one the registry recorded."""
    sha = sha256_file(path)
    record = {"source": "local", "path": str(path), "sha256": sha}
    if registry_source is None:
        return record
    expected = registry_source.get("sha256")
    if registry_source.get("source") == "store" and expected == sha:
        return {**registry_source, "path": str(path), "sha256": sha}
    where = registry_source.get("uri") or registry_source.get("key") or "the registry"
    return {**record, "mismatch": f"its sha256 {sha} is not the {expected} recorded for {where}"}


def verification(source: dict[str, Any], version: str) -> Verification:
    """{"verified", "reason"} of a scoring run's model (reason: one sentence naming the file or store key)."""
    if source.get("source") == "store":
        name = source.get("file") or "model.onnx"  # model.int8.onnx when scoring chose INT8
        return {"verified": True, "reason": f"{name} of {source.get('model_name')}/{source.get('version')} "
                                            f"from the registry ({source.get('uri') or source.get('key')}), sha256 "
                                            f"{source.get('sha256')} verified against its manifest"}
    why = source.get("mismatch") or "it is outside the model store, so its sha256 was checked against no manifest"
    return {"verified": False, "reason": f"model file {source.get('path')} is unverified: {why}; the version "
                                         f"{version!r} in its rows comes from the file's own metadata"}
