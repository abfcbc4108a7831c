"""CLI commands of the model registry: ``medpipe publish``, ``medpipe models list`` and ``medpipe models show``.

The lead's CLI calls :func:`register`; every handler takes the parsed args and returns an exit code.
``--store URI`` overrides ``cfg.store.uri``; endpoint, region and retries still come from the config, and
credentials only from the environment / AWS config chain.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medpipe.config import ConfigError, load_config
from medpipe.onnx_runtime import read_file_metadata
from medpipe.registry import (
    MODEL_FILE,
    RegistryError,
    list_versions,
    new_version_name,
    publish_version,
    read_champion,
    show_version,
)
from medpipe.store import Store, StoreError, open_store

__all__ = ["register", "cmd_publish", "cmd_models_list", "cmd_models_show"]

_logger = logging.getLogger(__name__)

# Columns of `models list`: (header, split, metric).
_METRIC_COLUMNS = (("val_auc", "val", "macro_auc"), ("val_bacc", "val", "balanced_accuracy"),
                   ("test_auc", "test", "macro_auc"), ("test_bacc", "test", "balanced_accuracy"))
_ERRORS = (ConfigError, StoreError, RegistryError)
_UNVERSIONED = "unversioned"  # what export writes when it was given no version: not a name to publish under


def register(subparsers: Any, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add ``publish`` and ``models {list,show}`` to the CLI's subparsers.

    Args:
        subparsers: the object returned by ``parser.add_subparsers()``.
        add_common: adds the common ``--config`` / ``--set`` options to a parser.
    """
    publish = subparsers.add_parser("publish", help="upload a model version folder to the store")
    publish.add_argument("--version-dir", required=True, type=Path, help="folder with model.onnx, metrics.json, ...")
    publish.add_argument("--model-name", help="e.g. resnet18 (default: model_name in model.onnx's metadata)")
    publish.add_argument("--version", help="version name (default: version in model.onnx's metadata, else a UTC "
                                           "timestamp like 20261126T153000Z)")
    champion = publish.add_mutually_exclusive_group()
    champion.add_argument("--no-champion", action="store_true", help="do not point champion.json at this version")
    champion.add_argument("--promote", action="store_true",
                          help="make it champion even without a passed gate verdict in its gate.json (recorded in "
                               "champion.json as a manual promotion); without it such a version is published only")
    _add_store_option(publish, add_common)
    publish.set_defaults(func=cmd_publish)

    models = subparsers.add_parser("models", help="list and inspect published model versions")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    listing = models_sub.add_parser("list", help="table of every version in the store")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_store_option(listing, add_common)
    listing.set_defaults(func=cmd_models_list)
    show = models_sub.add_parser("show", help="details of one version")
    show.add_argument("ref", nargs="?", default="champion", help="champion (default), VERSION or MODEL/VERSION")
    show.add_argument("--json", action="store_true", help="print JSON instead of text")
    _add_store_option(show, add_common)
    show.set_defaults(func=cmd_models_show)


def _add_store_option(parser: argparse.ArgumentParser, add_common: Callable[[argparse.ArgumentParser], None]) -> None:
    add_common(parser)
    parser.add_argument("--store", metavar="URI", help="store to use instead of store.uri (dir or s3://bucket/prefix)")


def _open(args: argparse.Namespace) -> Store:
    cfg = load_config(getattr(args, "config", None), getattr(args, "set", None) or [])
    store_cfg = dataclasses.replace(cfg.store, uri=args.store) if args.store else cfg.store
    return open_store(store_cfg)


def _fail(exc: Exception) -> int:
    print(f"medpipe: error: {exc}", file=sys.stderr)
    return 1


def _publish_identity(args: argparse.Namespace) -> tuple[str, str]:
    """The (model name, version) to publish under.

    Each comes from its option, else from the metadata `medpipe export` wrote into model.onnx (META_KEYS
    ``model_name`` / ``version``), else (version only) a new UTC timestamp version.

    Raises:
        RegistryError: no model name in the options nor in the metadata, or an unreadable model.onnx.
    """
    model_name, version = args.model_name, args.version
    onnx_path = Path(args.version_dir) / MODEL_FILE
    if (model_name is None or version is None) and onnx_path.is_file():
        try:
            meta = read_file_metadata(onnx_path)
        except ValueError as exc:
            raise RegistryError(f"cannot read the model name/version from {onnx_path}: {exc}") from exc
        model_name = model_name or meta.get("model_name") or None
        version = version or (meta.get("version") if meta.get("version") != _UNVERSIONED else None)
        _logger.info("publishing as %s/%s (missing options taken from %s metadata)", model_name, version, onnx_path)
    if not model_name:
        raise RegistryError(f"no model name: pass --model-name, or publish a folder whose {MODEL_FILE} carries "
                            f"'model_name' in its metadata (as `medpipe export` writes it); {onnx_path} "
                            f"{'has none' if onnx_path.is_file() else 'does not exist'}")
    return model_name, version or new_version_name()


def cmd_publish(args: argparse.Namespace) -> int:
    """``medpipe publish``: upload the folder as a new version; prints what was uploaded and the champion."""
    try:
        model_name, version = _publish_identity(args)
        store = _open(args)
        result = publish_version(store, args.version_dir, model_name, version, make_champion=not args.no_champion,
                                 promote=args.promote)
    except _ERRORS as exc:
        return _fail(exc)
    print(f"{result['status']}: {model_name}/{version} -> {result['uri']}")
    print(f"  {len(result['uploaded'])} file(s) uploaded, {len(result['skipped'])} already there")
    print(f"  gate: {'passed' if result['gate_passed'] else 'NOT passed'} ({result['gate_reason']})")
    if result["champion_updated"]:
        how = " by MANUAL promotion (--promote), without a passed gate" if result["promotion"] == "manual" else ""
        print(f"  champion: now {model_name}/{version}{how}")
    elif result["champion_reason"] and not args.no_champion:
        print(f"  champion: unchanged. {result['champion_reason']}:\n"
              f"    medpipe publish --version-dir {args.version_dir} --model-name {model_name} --version {version} "
              "--promote", file=sys.stderr)
    else:
        print("  champion: unchanged")
    return 0


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _table(rows: list[dict[str, Any]]) -> str:
    headers = ["", "model", "version", "published_at"] + [c[0] for c in _METRIC_COLUMNS]
    cells = [
        ["*" if r["is_champion"] else "", r["model_name"], r["version"],
         r["published_at"] or "(incomplete)"]
        + [_fmt(r["metrics"].get(split, {}).get(metric)) for _, split, metric in _METRIC_COLUMNS]
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in [headers, *cells]) for i in range(len(headers))]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row, widths)).rstrip() for row in [headers, *cells]]
    return "\n".join(lines)


def cmd_models_list(args: argparse.Namespace) -> int:
    """``medpipe models list``: one row per version, ``*`` marks the champion."""
    try:
        store = _open(args)
        rows = list_versions(store)
    except _ERRORS as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        print(f"no model versions in {store.uri()}")
    else:
        print(_table(rows))
    return 0


def cmd_models_show(args: argparse.Namespace) -> int:
    """``medpipe models show [REF]``: files with sha256 and size, headline metrics, champion flag."""
    try:
        store = _open(args)
        info = show_version(store, args.ref)
        champion = read_champion(store) if info["is_champion"] else None
    except _ERRORS as exc:
        return _fail(exc)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['model_name']}/{info['version']}{'  (champion)' if info['is_champion'] else ''}")
    print(f"  uri:          {info['uri']}")
    print(f"  published_at: {info['published_at']}")
    verdict = info.get("gate_verdict")  # versions published before the promotion rule have none
    if verdict:
        print(f"  gate:         {'passed' if verdict['passed'] else 'NOT passed'} ({verdict['reason']})")
    if champion and champion.get("promotion") == "manual":
        print(f"  champion by MANUAL promotion, no passed gate: {champion.get('promotion_reason')}")
    for split, values in sorted(info.get("metrics", {}).items()):
        print(f"  {split}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in values.items()))
    print("  files:")
    for entry in info["files"]:
        print(f"    {entry['path']:<28} {entry['size']:>12,d} B  sha256 {entry['sha256']}")
    return 0
