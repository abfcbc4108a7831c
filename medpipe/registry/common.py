"""Registry names, errors and the champion pointer, shared by publishing and lookup (layout: the package doc)."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable
from typing import Any

from medpipe.store import Store

CHAMPION_KEY = "champion.json"
MODELS_PREFIX = "models/"
MANIFEST_NAME = "manifest.json"
MODEL_FILE = "model.onnx"
INT8_MODEL_FILE = "model.int8.onnx"  # optional: the INT8 copy for CPU scoring (medpipe.quantize)
REQUIRED_FILES = (MODEL_FILE, "metrics.json")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

ProgressHook = Callable[[str, str], None]  # (key, "uploaded" | "skipped"), called after each file


class RegistryError(RuntimeError):
    """A registry operation cannot proceed; the message names the model/version/file and what is expected."""


class MissingFileError(RegistryError):
    """The version exists but does not hold the file asked for (e.g. one exported without an INT8 model)."""


class IntegrityError(RegistryError):
    """Stored or downloaded bytes do not match the recorded sha256."""


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


def _short(sha: str | None) -> str:
    return f"{sha[:12]}…" if sha else "none"


def _is_champion(champion: dict[str, Any] | None, model_name: str, version: str) -> bool:
    return champion is not None and (champion["model_name"], champion["version"]) == (model_name, version)


def read_champion(store: Store) -> dict[str, Any] | None:
    """The champion pointer, or None when nothing was made champion yet."""
    if not store.exists(CHAMPION_KEY):
        return None
    champion = _read_json(store, CHAMPION_KEY)
    missing = [k for k in ("model_name", "version", "key", "sha256") if not isinstance(champion.get(k), str)]
    if missing:
        raise RegistryError(f"{store.uri(CHAMPION_KEY)} lacks {missing}; it is not a champion pointer")
    return champion
