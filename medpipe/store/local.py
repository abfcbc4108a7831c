"""Local-directory backend (the default store): objects are plain files under a root folder.

Layout::

    ROOT/<key>               the object's bytes, at the key's path (browsable with ls)
    ROOT/.meta/<key>.json    its metadata sidecar: {"sha256": ..., "size": ..., "metadata": {...}}

Keys never have a segment starting with ``.`` (see :mod:`medpipe.store.base`), so ``.meta/`` and the hidden
``.<name>.*.tmp`` files of in-flight writes can never collide with an object and are left out of ``list()``.

Every write goes to a temp file in the target folder and is moved into place with ``os.replace``. One put
removes the old sidecar, replaces the bytes, then writes the new sidecar: a crash in between leaves an object
without a sidecar (its sha256 reads as None, i.e. unverified), never a sidecar that vouches for other bytes.
Every path is resolved and must stay under the root, so a symlink inside the root cannot lead a key outside it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

from medpipe.fileio import atomic_output, atomic_write_bytes
from medpipe.store.base import SHA256_METADATA, ObjectNotFoundError, Store, StoreError

__all__ = ["LocalStore", "META_DIR"]

_logger = logging.getLogger(__name__)

META_DIR = ".meta"


class LocalStore(Store):
    """Objects as files under ``root`` (created on the first write)."""

    def __init__(self, root: str | Path) -> None:
        # Resolved once: uri() stays stable when the cwd changes, and the escape check compares real paths.
        self._root = Path(root).expanduser().resolve()
        if self._root.exists() and not self._root.is_dir():
            raise StoreError(f"local store root {self._root} exists but is not a directory")

    @property
    def root(self) -> Path:
        """The store's root folder."""
        return self._root

    def _inside(self, path: Path, key: str) -> Path:
        resolved = path.resolve()
        if not resolved.is_relative_to(self._root):
            raise StoreError(f"key {key!r} resolves to {resolved}, outside the store root {self._root} (a symlink?)")
        return resolved

    def _path(self, key: str) -> Path:
        return self._inside(self._root / key, key)

    def _meta_path(self, key: str) -> Path:
        return self._inside(self._root / META_DIR / f"{key}.json", key)

    @contextlib.contextmanager
    def _os_errors(self, action: str, key: str) -> Iterator[None]:
        try:
            yield
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(f"object {self._uri(key)} does not exist") from exc
        except OSError as exc:
            raise StoreError(f"cannot {action} {self._uri(key)}: {exc.strerror or exc}") from exc

    def _store(self, key: str, write: Callable[[BinaryIO], None], metadata: dict[str, str]) -> None:
        target, meta_path = self._path(key), self._meta_path(key)
        if target.is_dir():
            raise StoreError(f"cannot write {self._uri(key)}: a folder of other objects is already there")
        sidecar = {
            SHA256_METADATA: metadata[SHA256_METADATA],
            "metadata": {k: v for k, v in metadata.items() if k != SHA256_METADATA},
        }
        with self._os_errors("write", key):
            meta_path.unlink(missing_ok=True)
            with atomic_output(target) as tmp, open(tmp, "xb") as fh:
                write(fh)
            sidecar["size"] = target.stat().st_size
            atomic_write_bytes(meta_path, json.dumps(sidecar, sort_keys=True).encode())

    def _put_file(self, key: str, path: Path, metadata: dict[str, str]) -> None:
        def _copy(fh: BinaryIO) -> None:
            with open(path, "rb") as src:
                shutil.copyfileobj(src, fh, 1024 * 1024)

        self._store(key, _copy, metadata)

    def _put_bytes(self, key: str, data: bytes, metadata: dict[str, str]) -> None:
        self._store(key, lambda fh: fh.write(data), metadata)

    def _get_file(self, key: str, tmp: Path) -> None:
        with self._os_errors("read", key):
            shutil.copyfile(self._path(key), tmp)

    def _get_bytes(self, key: str) -> bytes:
        with self._os_errors("read", key):
            return self._path(key).read_bytes()

    def _exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _list(self, prefix: str) -> list[str]:
        # Walk only the deepest folder the prefix names fully ("models/res" -> ROOT/models).
        start = self._root.joinpath(*prefix.split("/")[:-1]) if "/" in prefix else self._root
        start = self._inside(start, prefix)
        keys: list[str] = []
        for folder, dirs, files in os.walk(start):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            rel = Path(folder).relative_to(self._root)
            for name in files:
                if name.startswith("."):
                    continue
                key = (rel / name).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return keys

    def _head(self, key: str) -> dict[str, Any]:
        path = self._path(key)
        with self._os_errors("read", key):
            stat = path.stat()
        if not path.is_file():
            raise ObjectNotFoundError(f"object {self._uri(key)} does not exist (it is a folder of other objects)")
        sidecar = self._read_sidecar(key)
        # A sidecar whose size disagrees with the file belongs to other bytes: report the object unverified.
        sha = sidecar.get(SHA256_METADATA) if sidecar.get("size") == stat.st_size else None
        return {
            "key": key,
            "size": stat.st_size,
            "sha256": sha,
            "etag": None,
            "last_modified": dt.datetime.fromtimestamp(stat.st_mtime, dt.timezone.utc).isoformat(),
            "metadata": dict(sidecar.get("metadata", {})),
        }

    def _read_sidecar(self, key: str) -> dict[str, Any]:
        meta_path = self._meta_path(key)
        try:
            sidecar = json.loads(meta_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            _logger.warning("ignoring unreadable metadata %s of %s: %s", meta_path, key, exc)
            return {}
        return sidecar if isinstance(sidecar, dict) else {}

    def _uri(self, key: str) -> str:
        return str(self._root / key) if key else str(self._root)
