"""Read the model registry that medpipe.registry writes into the store; nothing here computes or writes.

Layout (below the store's prefix)::

    champion.json                                  {"model_name", "version", "key", "sha256", "published_at", "metrics",
                                                    "promotion": "gate" | "manual", "promoted_without_gate", ...}
    models/<model_name>/<version>/model.onnx
                                 /metrics.json     schema in docs/stages.md
                                 /gate.json        {"passed", "challenger", "reasons", ...}
                                 /model_card.md, config.yaml, manifest.json, plots/*.png

A version whose JSON cannot be parsed is still listed, with the problem, so one broken upload never hides the
rest of the registry.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from medpipe.contracts import ContractError, GateDecision, MetricsReport
from medpipe.registry.common import MANIFEST_NAME
from medpipe.run_folder import RELEASE_FILES

if TYPE_CHECKING:
    from medpipe.store import Store

__all__ = [
    "ARTIFACT_FILES",
    "Catalog",
    "VersionView",
    "artifact_key",
    "check_segment",
    "load_catalog",
    "open_registry_store",
]

_logger = logging.getLogger(__name__)

MODELS_PREFIX = "models/"
CHAMPION_KEY = "champion.json"
# Files of a version the page may hand out, besides plots/<name>.png: what a run's release folder holds
# (medpipe.run_folder owns that list) and the manifest publishing adds.
ARTIFACT_FILES = (*RELEASE_FILES, MANIFEST_NAME)
# One path segment of a model name or version: the store's key alphabet, never starting with '.'.
_SEGMENT = re.compile(r"[A-Za-z0-9_+=-][A-Za-z0-9._+=-]{0,127}")
_PLOT = re.compile(r"plots/[A-Za-z0-9_+=-][A-Za-z0-9._+=-]{0,127}\.png")


@dataclass(frozen=True)
class VersionView:
    """One published version as the page shows it."""

    model_name: str
    version: str
    files: tuple[str, ...]  # names relative to the version folder, e.g. "model.onnx", "plots/val_roc.png"
    metrics: MetricsReport | None = None
    gate: GateDecision | None = None
    manifest: dict[str, Any] | None = None
    is_champion: bool = False
    problems: tuple[str, ...] = ()

    @property
    def plots(self) -> list[str]:
        return [f for f in self.files if _PLOT.fullmatch(f)]

    @property
    def published_at(self) -> str | None:
        value = (self.manifest or {}).get("published_at")
        return str(value) if value is not None else None

    def split_metrics(self, split: str) -> dict[str, Any]:
        """Metrics of one split ({} when absent)."""
        value = self.metrics.splits.get(split) if self.metrics else None
        return value if isinstance(value, dict) else {}

    @property
    def splits(self) -> list[str]:
        return sorted(self.metrics.splits if self.metrics else (), key=lambda s: (s != "val", s))


@dataclass
class Catalog:
    """Everything the Models page lists."""

    store_uri: str
    champion: dict[str, Any] | None
    versions: list[VersionView] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def find(self, model_name: str, version: str) -> VersionView | None:
        return next((v for v in self.versions if (v.model_name, v.version) == (model_name, version)), None)


def open_registry_store(uri: str, endpoint_url: str | None = None) -> Store:
    """Open the store the page reads: an S3 store's credentials and endpoint come from the Airflow connection
    MEDPIPE_AWS_CONN_ID (as in the DAGs' tasks), else from the environment / AWS chain."""
    from medpipe.config import StoreConfig
    from medpipe.store import open_store
    from medpipe_plugin.aws import store_connection

    with store_connection():  # the S3Store keeps the session it was given: it outlives the block
        return open_store(StoreConfig(uri=uri, endpoint_url=endpoint_url))


def check_segment(value: str, what: str) -> str:
    """A model name or version taken from a URL: one safe path segment, or ValueError naming it."""
    if not _SEGMENT.fullmatch(value):
        raise ValueError(f"invalid {what} {value!r}: expected letters, digits and . _ + = - (not starting with '.')")
    return value


def artifact_key(model_name: str, version: str, name: str) -> str:
    """The store key of one downloadable file of a version; ValueError for anything not on the allow-list."""
    check_segment(model_name, "model name")
    check_segment(version, "version")
    if name not in ARTIFACT_FILES and not _PLOT.fullmatch(name):
        raise ValueError(f"invalid file {name!r}: expected one of {list(ARTIFACT_FILES)} or plots/<name>.png")
    return f"{MODELS_PREFIX}{model_name}/{version}/{name}"


def _read_json(store: Store, key: str, problems: list[str]) -> dict[str, Any] | None:
    from medpipe.store import ObjectNotFoundError

    try:
        value = json.loads(store.get_bytes(key))
    except ObjectNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        problems.append(f"{key} is not valid JSON: {exc}")
        return None
    if not isinstance(value, dict):
        problems.append(f"{key} holds a {type(value).__name__}, expected a JSON object")
        return None
    return value


def _read_contract(store: Store, key: str, parse: Callable[[dict[str, Any], str], Any], problems: list[str]) -> Any:
    """A metrics.json / gate.json of the store through its contract's reader (`MetricsReport.parse`,
    `GateDecision.parse`); one it refuses (a newer schema, keys missing) is listed among the problems instead."""
    raw = _read_json(store, key, problems)
    if raw is None:
        return None
    try:
        return parse(raw, key)
    except ContractError as exc:
        problems.append(str(exc))
        return None


def _group_version_files(keys: list[str], problems: list[str]) -> dict[tuple[str, str], list[str]]:
    groups: dict[tuple[str, str], list[str]] = {}
    for key in keys:
        parts = key[len(MODELS_PREFIX):].split("/", 2)
        if len(parts) != 3:
            problems.append(f"{key} is not inside models/<model>/<version>/")
            continue
        model_name, version, rest = parts
        groups.setdefault((model_name, version), []).append(rest)
    return groups


def _load_version(store: Store, model_name: str, version: str, files: list[str],
                  champion: dict[str, Any] | None) -> VersionView:
    problems: list[str] = []
    base = f"{MODELS_PREFIX}{model_name}/{version}/"
    if "model.onnx" not in files:
        problems.append("model.onnx is missing (an unfinished or damaged upload)")
    champ = champion or {}
    return VersionView(
        model_name=model_name,
        version=version,
        files=tuple(sorted(files)),
        metrics=(_read_contract(store, base + "metrics.json", MetricsReport.parse, problems)
                 if "metrics.json" in files else None),
        gate=_read_contract(store, base + "gate.json", GateDecision.parse, problems) if "gate.json" in files else None,
        manifest=_read_json(store, base + "manifest.json", problems) if "manifest.json" in files else None,
        is_champion=(champ.get("model_name"), champ.get("version")) == (model_name, version),
        problems=tuple(problems),
    )


def load_catalog(store: Store) -> Catalog:
    """Every published version (newest first), the champion pointer, and what could not be read.

    Args:
        store: the registry's store.

    Returns:
        The catalog; unreadable objects are reported in ``problems``, not raised.
    """
    problems: list[str] = []
    champion = _read_json(store, CHAMPION_KEY, problems)
    groups = _group_version_files(store.list(MODELS_PREFIX), problems)
    versions = [_load_version(store, m, v, files, champion) for (m, v), files in groups.items()]
    versions.sort(key=lambda v: (v.published_at or "", v.version, v.model_name), reverse=True)
    if champion is not None and not any(v.is_champion for v in versions):
        problems.append(f"champion.json points at {champion.get('model_name')}/{champion.get('version')}, "
                        "which is not in the registry")
    _logger.debug("catalog of %s: %d versions, %d problems", store.uri(), len(versions), len(problems))
    return Catalog(store_uri=store.uri(), champion=champion, versions=versions, problems=problems)
