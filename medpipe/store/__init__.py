"""Object storage: one small interface, two backends (a local directory — the default — and S3 via boto3).

``open_store(cfg.store)`` picks the backend from ``cfg.store.uri``: ``s3://bucket/prefix`` for S3 (AWS, MinIO,
any S3-compatible server at ``endpoint_url``), anything else is a local directory (``file://`` accepted).
Key rules live in :func:`validate_key`; the local layout is described in :mod:`medpipe.store.local`.
"""

from __future__ import annotations

import logging
import urllib.parse

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

__all__ = [*base.__all__, "LocalStore", "open_store"]  # the base names are re-exported as they are

_logger = logging.getLogger(__name__)


def open_store(store_cfg: StoreConfig) -> Store:
    """Open the store that ``store_cfg.uri`` names.

    Args:
        store_cfg: ``cfg.store``; endpoint_url, region, max_attempts, multipart_threshold_mb and the timeouts
            apply to S3 only.

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

        return S3Store(
            uri,
            endpoint_url=store_cfg.endpoint_url,
            region=store_cfg.region,
            max_attempts=store_cfg.max_attempts,
            multipart_threshold_mb=store_cfg.multipart_threshold_mb,
            connect_timeout_s=store_cfg.connect_timeout_s,
            read_timeout_s=store_cfg.read_timeout_s,
        )
    if scheme == "file":
        return LocalStore(urllib.parse.unquote(urllib.parse.urlsplit(uri).path))
    if len(scheme) > 1:  # a one-letter "scheme" is a Windows drive (C:\...), i.e. a local path
        raise StoreError(
            f"store.uri {uri!r}: unsupported scheme {scheme!r}; use a local directory or s3://bucket/prefix"
        )
    return LocalStore(uri)
