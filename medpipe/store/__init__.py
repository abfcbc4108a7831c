"""Object storage: one small interface, two backends (a local directory — the default — and S3 via boto3).

``open_store(cfg.store)`` picks the backend from ``cfg.store.uri``: ``s3://bucket/prefix`` for S3 (AWS, MinIO,
any S3-compatible server at ``endpoint_url``), anything else is a local directory (``file://`` accepted).
Key rules live in :func:`validate_key`; the local layout is described in :mod:`medpipe.store.local`.

S3 credentials come from the AWS default chain unless the caller supplies an :class:`S3Access` (a boto3 session
and an endpoint): passed to ``open_store`` directly, or for every store opened inside ``with s3_access_scope(f):``
(``f`` is called once, lazily, when the first S3 store is opened). The Airflow layer uses the scope to hand over
its Connection without medpipe importing Airflow, and without threading an argument through every stage.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from medpipe.config import StoreConfig
from medpipe.extras import import_extra
from medpipe.store import base
from medpipe.store.base import (
    KEY_RULES,
    SHA256_METADATA,
    InvalidKeyError,
    ObjectNotFoundError,
    Store,
    StoreError,
    sha256_bytes,
    sha256_file,
    validate_key,
    validate_prefix,
)
from medpipe.store.local import LocalStore

# the base names are re-exported as they are
__all__ = [*base.__all__, "LocalStore", "S3Access", "open_store", "s3_access_scope"]

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class S3Access:
    """What a caller gives an S3 store instead of the AWS default chain.

    Attributes:
        session: a boto3.session.Session holding the credentials (and possibly the region); typed Any so that
            importing this module does not import boto3 (the `s3` extra).
        endpoint_url: the S3-compatible endpoint the credentials are for, or None (AWS / the config's endpoint).
        source: where the credentials come from, named in error messages (never the values).
    """

    session: Any
    endpoint_url: str | None = None
    source: str = "the caller"

    def __repr__(self) -> str:  # a session's repr is harmless, but keep anything near credentials out of logs
        return f"S3Access(source={self.source!r}, endpoint_url={self.endpoint_url!r})"


_ACCESS_PROVIDER: contextvars.ContextVar[Callable[[], S3Access | None] | None] = contextvars.ContextVar(
    "medpipe_s3_access_provider", default=None)


@contextlib.contextmanager
def s3_access_scope(provider: Callable[[], S3Access | None]) -> Iterator[None]:
    """Inside the block, S3 stores opened without an explicit `s3_access` use ``provider()``'s (None = AWS chain).

    The provider is called at most once, when the first S3 store is opened, so a run on a local store never looks
    up credentials.
    """
    resolved: list[S3Access | None] = []

    def once() -> S3Access | None:
        if not resolved:
            resolved.append(provider())
        return resolved[0]

    token = _ACCESS_PROVIDER.set(once)
    try:
        yield
    finally:
        _ACCESS_PROVIDER.reset(token)


def _s3_access(explicit: S3Access | None) -> S3Access | None:
    if explicit is not None:
        return explicit
    provider = _ACCESS_PROVIDER.get()
    return provider() if provider is not None else None


def _endpoint(store_cfg: StoreConfig, access: S3Access | None) -> str | None:
    """The config's endpoint, else the access's; two different ones are an error: credentials are not sent to an
    endpoint they were not given for."""
    configured, given = store_cfg.endpoint_url or None, access.endpoint_url if access is not None else None
    if configured and given and configured.rstrip("/") != given.rstrip("/"):
        raise StoreError(f"store.endpoint_url={configured!r} differs from the endpoint {given!r} of "
                         f"{access.source}: set one of them, or make them equal")
    return configured or given


def open_store(store_cfg: StoreConfig, *, s3_access: S3Access | None = None) -> Store:
    """Open the store that ``store_cfg.uri`` names.

    Args:
        store_cfg: ``cfg.store``; endpoint_url, region, max_attempts, multipart_threshold_mb and the timeouts
            apply to S3 only.
        s3_access: credentials (+ endpoint) for an S3 store; default: the enclosing ``s3_access_scope``'s, else
            the AWS default chain.

    Returns:
        A LocalStore or an S3Store. Nothing is contacted yet: an S3 bucket is checked on first use.
    """
    uri = str(store_cfg.uri).strip()
    if not uri:
        raise StoreError("store.uri is empty: give a local directory or s3://bucket/prefix")
    scheme = urllib.parse.urlsplit(uri).scheme
    if scheme == "s3":
        # boto3 (the `s3` extra) is imported only when an S3 store is used: local runs and DAG parsing stay light.
        import_extra("boto3", "s3", f"store.uri {uri!r}")
        from medpipe.store.s3 import S3Store

        access = _s3_access(s3_access)
        return S3Store(
            uri,
            endpoint_url=_endpoint(store_cfg, access),
            region=store_cfg.region,
            max_attempts=store_cfg.max_attempts,
            multipart_threshold_mb=store_cfg.multipart_threshold_mb,
            connect_timeout_s=store_cfg.connect_timeout_s,
            read_timeout_s=store_cfg.read_timeout_s,
            **({"session": access.session, "credentials_source": access.source} if access is not None else {}),
        )
    if scheme == "file":
        return LocalStore(urllib.parse.unquote(urllib.parse.urlsplit(uri).path))
    if len(scheme) > 1:  # a one-letter "scheme" is a Windows drive (C:\...), i.e. a local path
        raise StoreError(
            f"store.uri {uri!r}: unsupported scheme {scheme!r}; use a local directory or s3://bucket/prefix"
        )
    return LocalStore(uri)
