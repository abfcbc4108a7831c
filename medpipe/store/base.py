"""The store interface shared by every backend, and the one function that decides which object keys are valid.

A key is a relative POSIX path below the store's root/prefix, e.g. ``models/resnet18/20261126T153000Z/model.onnx``.
Allowed: segments made of ``A-Z a-z 0-9 . _ + = -``, separated by single ``/``; a segment may not start with ``.``
(which also rules out ``.`` and ``..``); at most 1024 characters. Rejected: empty keys, absolute keys, backslashes,
control characters, ``//``, a trailing ``/``, spaces and every other character. The allow-list is deliberately
small: such keys mean the same thing on every S3-compatible server and on every local filesystem, need no URL
quoting, and cannot collide with the local backend's hidden bookkeeping (``.meta/``, ``.<name>.tmp`` files).

Every public method validates its key with :func:`validate_key` before a backend sees it; backends implement the
``_``-prefixed hooks only.
"""

from __future__ import annotations

import abc
import hashlib
import logging
import re
from pathlib import Path
from typing import Any

from medpipe.fileio import atomic_output, sha256_file  # sha256_file re-exported: one implementation

__all__ = [
    "Store",
    "StoreError",
    "InvalidKeyError",
    "ObjectNotFoundError",
    "validate_key",
    "validate_prefix",
    "sha256_file",
    "sha256_bytes",
    "KEY_RULES",
    "SHA256_METADATA",
]

_logger = logging.getLogger(__name__)

KEY_RULES = (
    "keys are relative POSIX paths: segments of A-Z a-z 0-9 . _ + = - (not starting with '.'), "
    "separated by single '/', at most 1024 characters"
)
SHA256_METADATA = "sha256"  # object metadata entry holding the hex sha256 of the object's bytes
_MAX_KEY_LENGTH = 1024  # S3's limit (in bytes; our keys are ASCII)
_SEGMENT = re.compile(r"[A-Za-z0-9_+=-][A-Za-z0-9._+=-]*")
_ALLOWED_CHARS = re.compile(r"[A-Za-z0-9._+=/-]")
# S3 sends user metadata as HTTP headers: lower-case names and short printable ASCII values stay portable.
_METADATA_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")


class StoreError(RuntimeError):
    """A store operation failed; the message names the key/bucket/endpoint, never a credential."""


class InvalidKeyError(StoreError, ValueError):
    """An object key (or list prefix) breaks the rules in :data:`KEY_RULES`."""


class ObjectNotFoundError(StoreError):
    """The object does not exist."""


def validate_key(key: str) -> str:
    """Check an object key against the allow-list; the one place where key rules live.

    Args:
        key: the key, relative to the store's prefix.

    Returns:
        The key, unchanged.

    Raises:
        InvalidKeyError: naming the key, the reason and what is allowed.
    """

    def _bad(reason: str) -> InvalidKeyError:
        return InvalidKeyError(f"invalid object key {key!r}: {reason}; {KEY_RULES}")

    if not isinstance(key, str):
        raise InvalidKeyError(f"object key must be a string, got {type(key).__name__}; {KEY_RULES}")
    if not key:
        raise _bad("empty")
    if len(key) > _MAX_KEY_LENGTH:
        raise _bad(f"{len(key)} characters")
    if key.startswith("/"):
        raise _bad("absolute (starts with '/')")
    if "\\" in key:
        raise _bad("contains a backslash")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in key):
        raise _bad("contains a control character")
    if "//" in key:
        raise _bad("contains '//'")
    if key.endswith("/"):
        raise _bad("ends with '/'")
    segments = key.split("/")
    if any(seg in (".", "..") for seg in segments):
        raise _bad("contains a '.' or '..' segment")
    bad_chars = sorted({ch for ch in key if not _ALLOWED_CHARS.fullmatch(ch)})
    if bad_chars:
        raise _bad(f"contains {''.join(bad_chars)!r}")
    for seg in segments:
        if not _SEGMENT.fullmatch(seg):
            raise _bad(f"segment {seg!r} starts with '.'")
    return key


def validate_prefix(prefix: str) -> str:
    """Validate a list prefix: empty, or a key optionally ending with one '/'."""
    if prefix == "":
        return prefix
    validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def _check_metadata(metadata: dict[str, str] | None) -> dict[str, str]:
    metadata = dict(metadata or {})
    for name, value in metadata.items():
        if not isinstance(name, str) or not _METADATA_NAME.fullmatch(name):
            raise StoreError(f"metadata name {name!r} must match {_METADATA_NAME.pattern}")
        if name == SHA256_METADATA:
            raise StoreError(f"metadata name {name!r} is reserved: the store computes it from the content")
        if not isinstance(value, str) or len(value) > 1024 or not value.isascii() or not value.isprintable():
            raise StoreError(f"metadata {name}={value!r} must be printable ASCII of at most 1024 characters")
    return metadata


def sha256_bytes(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


class Store(abc.ABC):
    """Object storage below one root/prefix. Keys are validated here; backends implement the ``_`` hooks.

    Every object carries its sha256 in metadata entry ``sha256`` (computed by the store from the bytes it
    writes), because S3 ETags of multipart uploads are not content hashes.
    """

    def put_file(self, key: str, path: str | Path, metadata: dict[str, str] | None = None) -> str:
        """Upload a local file to ``key`` (replacing any object there); returns the file's sha256."""
        validate_key(key)
        path = Path(path)
        if not path.is_file():
            raise StoreError(f"cannot store {self.uri(key)}: {path} is not a file")
        meta = _check_metadata(metadata)
        meta[SHA256_METADATA] = sha256_file(path)
        self._put_file(key, path, meta)
        _logger.debug("stored %s (%s bytes)", self.uri(key), path.stat().st_size)
        return meta[SHA256_METADATA]

    def put_bytes(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> str:
        """Store bytes at ``key`` (replacing any object there); returns their sha256."""
        validate_key(key)
        meta = _check_metadata(metadata)
        meta[SHA256_METADATA] = sha256_bytes(data)
        self._put_bytes(key, bytes(data), meta)
        return meta[SHA256_METADATA]

    def get_file(self, key: str, dest: str | Path) -> Path:
        """Download ``key`` to the file ``dest`` atomically (temp file in the same folder, then os.replace)."""
        validate_key(key)
        dest = Path(dest)
        with atomic_output(dest) as tmp:
            self._get_file(key, tmp)
        return dest

    def get_bytes(self, key: str) -> bytes:
        """The object's bytes; ObjectNotFoundError when it does not exist."""
        return self._get_bytes(validate_key(key))

    def exists(self, key: str) -> bool:
        """Whether an object exists at ``key``."""
        return self._exists(validate_key(key))

    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys that start with ``prefix`` (plain string prefix, as in S3)."""
        return sorted(self._list(validate_prefix(prefix)))

    def head(self, key: str) -> dict[str, Any]:
        """``{"key", "size", "sha256", "etag", "last_modified", "metadata"}``; ObjectNotFoundError if absent."""
        return self._head(validate_key(key))

    def sha256(self, key: str) -> str | None:
        """The sha256 recorded in the object's metadata (None if it has none); ObjectNotFoundError if absent."""
        return self.head(key)["sha256"]

    def uri(self, key: str = "") -> str:
        """A display URI (``s3://bucket/prefix/key`` or a file path); a ``dir/`` prefix or ``""`` is accepted too."""
        return self._uri(validate_prefix(key))

    @abc.abstractmethod
    def _put_file(self, key: str, path: Path, metadata: dict[str, str]) -> None: ...

    @abc.abstractmethod
    def _put_bytes(self, key: str, data: bytes, metadata: dict[str, str]) -> None: ...

    @abc.abstractmethod
    def _get_file(self, key: str, tmp: Path) -> None: ...

    @abc.abstractmethod
    def _get_bytes(self, key: str) -> bytes: ...

    @abc.abstractmethod
    def _exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def _list(self, prefix: str) -> list[str]: ...

    @abc.abstractmethod
    def _head(self, key: str) -> dict[str, Any]: ...

    @abc.abstractmethod
    def _uri(self, key: str) -> str: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.uri()!r})"

