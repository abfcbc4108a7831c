"""S3 backend (AWS S3, MinIO and other S3-compatible servers) over boto3.

Credentials come from boto3's standard chain (environment variables, AWS config/credential files, instance
or container roles), or from a boto3 session the caller passes (``session=``: the Airflow layer builds one from
its Connection, so medpipe itself never imports Airflow); this module never reads, stores, prints or logs them,
and its error messages never quote
a server message that could echo a request. Retries use botocore's "standard" mode (exponential backoff with
jitter, ``max_attempts`` tries in all). Files go through boto3's transfer manager, which switches to a parallel
multipart upload above ``multipart_threshold_mb``; since multipart ETags are not content hashes, every object
carries its sha256 in user metadata (``x-amz-meta-sha256``).

Every request has a connect and a read timeout (``store.connect_timeout_s``, ``store.read_timeout_s``): an endpoint
that accepts connections and never answers fails after about ``read_timeout_s`` x ``max_attempts`` seconds
instead of holding a task forever.

botocore errors are turned into :class:`StoreError` with one of a few plain messages: the bucket does not exist,
access denied / invalid credentials, the endpoint cannot be reached or does not answer (naming the endpoint, the
timeouts and the attempts), or the object does not exist.

botocore, s3transfer and urllib3 log every request at DEBUG with its headers, among them the session token
(``X-Amz-Security-Token``) and the access key id (``Authorization``); creating an S3Store holds those loggers at
INFO (:func:`quiet_aws_loggers`), so no verbosity setting makes them log credentials.
"""

from __future__ import annotations

import contextlib
import logging
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import boto3.exceptions
from boto3.s3.transfer import TransferConfig
from botocore.config import Config as BotoConfig
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    CredentialRetrievalError,
    NoCredentialsError,
    PartialCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from medpipe.store.base import SHA256_METADATA, ObjectNotFoundError, Store, StoreError, validate_key

__all__ = ["S3Store", "parse_s3_uri", "quiet_aws_loggers"]

_logger = logging.getLogger(__name__)

_MIB = 1024 * 1024
_MIN_PART = 5 * _MIB  # S3 refuses multipart parts below 5 MiB (except the last)
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_CREDENTIAL_CODES = {
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "ExpiredToken",
    "InvalidClientTokenId", "AllAccessDisabled", "AccountProblem", "403", "Forbidden",
}
_MISSING_KEY_CODES = {"NoSuchKey", "404", "NotFound"}
_UNREACHABLE = (BotoConnectionError, ConnectionClosedError, ReadTimeoutError)
_NO_CREDENTIALS = (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)
# Loggers of the AWS client stack whose DEBUG records dump requests with their credential headers.
_AWS_CLIENT_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3")


def quiet_aws_loggers() -> None:
    """Hold the AWS client loggers at INFO, so their DEBUG request dumps (which carry the session token and the
    access key id) are never made, whatever level the root logger, `-v` or Airflow's logging config sets.

    Why not redact the values instead: the values are not all known here. Credentials from a role, SSO or an
    instance profile are fetched by botocore after this and refreshed during a long task, and botocore.auth also
    logs the canonical request holding the token. Holding the levels needs no values. Their INFO and WARNING lines
    (which credential source was used, retries) carry no secret. A logger below these that was set to DEBUG
    explicitly (e.g. boto3.set_stream_logger) is raised too.
    """
    loggers = [logging.getLogger(name) for name in _AWS_CLIENT_LOGGERS]
    loggers += [logger for name, logger in logging.Logger.manager.loggerDict.items()
                if isinstance(logger, logging.Logger) and name.startswith(tuple(f"{n}." for n in _AWS_CLIENT_LOGGERS))
                and logger.level != logging.NOTSET]
    for logger in loggers:
        if logger.getEffectiveLevel() < logging.INFO:
            logger.setLevel(logging.INFO)


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/prefix`` into (bucket, prefix) with the prefix '' or ending in '/'."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme != "s3" or parsed.query or parsed.fragment:
        raise StoreError(f"store uri {uri!r} must look like s3://bucket/prefix")
    bucket, prefix = parsed.netloc, parsed.path.strip("/")
    if not _BUCKET_NAME.fullmatch(bucket) or ".." in bucket:
        raise StoreError(
            f"store uri {uri!r}: bucket name {bucket!r} must be 3-63 characters of a-z 0-9 . - "
            "starting and ending with a letter or digit"
        )
    if prefix:
        validate_key(prefix)
        prefix += "/"
    return bucket, prefix


def _display_endpoint(url: str) -> str:
    """The endpoint without any user:password part, for messages."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _root_cause(exc: BaseException) -> BaseException:
    """The botocore error behind boto3's transfer wrappers (S3UploadFailedError, RetriesExceededError)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ClientError, BotoCoreError)):
            return current
        last = getattr(current, "last_exception", None)
        current = last if isinstance(last, BaseException) else (current.__cause__ or current.__context__)
    return exc


class S3Store(Store):
    """Objects under ``s3://bucket/prefix``; the bucket must exist (checked once, on first use)."""

    def __init__(
        self,
        uri: str,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        max_attempts: int = 5,
        multipart_threshold_mb: int = 64,
        connect_timeout_s: float = 10.0,
        read_timeout_s: float = 60.0,
        session: boto3.session.Session | None = None,
        credentials_source: str = "the environment/AWS config",
    ) -> None:
        if max_attempts < 1 or multipart_threshold_mb < 1:
            raise StoreError(
                f"store.max_attempts and store.multipart_threshold_mb must be >= 1, "
                f"got {max_attempts} and {multipart_threshold_mb}"
            )
        if not (connect_timeout_s > 0 and read_timeout_s > 0):
            raise StoreError(f"store.connect_timeout_s and store.read_timeout_s must be > 0, "
                             f"got {connect_timeout_s} and {read_timeout_s}")
        quiet_aws_loggers()  # before the client exists: creating it logs at DEBUG already
        self._bucket, self._prefix = parse_s3_uri(uri)
        self._max_attempts = max_attempts
        self._credentials_source = credentials_source  # named in error messages, so an operator knows where to look
        self._timeouts = (connect_timeout_s, read_timeout_s)
        options: dict[str, Any] = {"retries": {"max_attempts": max_attempts, "mode": "standard"},
                                   "connect_timeout": connect_timeout_s, "read_timeout": read_timeout_s}
        if endpoint_url:
            # MinIO and most self-hosted servers only route path-style requests, and several of them reject
            # the CRC checksums that botocore >= 1.36 adds by default; ask for checksums only where required.
            options.update(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
        # A caller's session carries its own credentials (and region, unless `region` overrides it); without one,
        # a fresh session reads the AWS chain.
        session = session if session is not None else boto3.session.Session(region_name=region)
        self._client = session.client("s3", endpoint_url=endpoint_url or None, region_name=region or None,
                                      config=BotoConfig(**options))
        self._endpoint = _display_endpoint(self._client.meta.endpoint_url)
        threshold = multipart_threshold_mb * _MIB
        # s3transfer retries a download whose body stalls on its own (5 times by default), on top of botocore's
        # attempts for the request: the same number of tries keeps a stalled download within the advertised bound.
        self._transfer = TransferConfig(multipart_threshold=threshold, multipart_chunksize=max(threshold, _MIN_PART),
                                        num_download_attempts=max_attempts)
        self._bucket_checked = False
        _logger.debug("S3 store s3://%s/%s at %s: connect timeout %s s, read timeout %s s, %d attempt(s)",
                      self._bucket, self._prefix, self._endpoint, connect_timeout_s, read_timeout_s, max_attempts)

    @property
    def bucket(self) -> str:
        """The bucket name."""
        return self._bucket

    def _full(self, key: str) -> str:
        return self._prefix + key

    def _translate(self, exc: BaseException, action: str, key: str) -> StoreError:
        cause = _root_cause(exc)
        where = self._uri(key)
        if isinstance(cause, ClientError):
            code = str(cause.response.get("Error", {}).get("Code", ""))
            status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code == "NoSuchBucket":
                return StoreError(f"bucket {self._bucket} does not exist at endpoint {self._endpoint}")
            if code in _CREDENTIAL_CODES or status == 403:
                return StoreError(
                    f"access denied / invalid credentials for bucket {self._bucket} at endpoint {self._endpoint} "
                    f"({code or status} on {action} {where}; credentials come from {self._credentials_source}; "
                    "not shown)"
                )
            if code in _MISSING_KEY_CODES or status == 404:
                return ObjectNotFoundError(f"object {where} does not exist")
            return StoreError(f"cannot {action} {where}: S3 error {code or '?'} (HTTP {status})")
        if isinstance(cause, _NO_CREDENTIALS):
            return StoreError(
                f"no usable credentials for bucket {self._bucket} from {self._credentials_source}: set "
                "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or another AWS config source, or the Airflow "
                f"connection's login/password ({type(cause).__name__}; values are never shown)"
            )
        if isinstance(cause, _UNREACHABLE):
            return StoreError(self._unreachable_message(cause, action, where))
        return StoreError(f"cannot {action} {where}: {type(cause).__name__}: {cause}")

    def _unreachable_message(self, cause: BaseException, action: str, where: str) -> str:
        connect, read = self._timeouts
        if isinstance(cause, ReadTimeoutError):
            why = f"no answer within the read timeout of {read:g} s"
        elif isinstance(cause, ConnectTimeoutError):
            why = f"no connection within the connect timeout of {connect:g} s"
        else:
            why = f"connection failed (connect timeout {connect:g} s, read timeout {read:g} s)"
        return (f"cannot reach endpoint {self._endpoint} to {action} {where} after {self._max_attempts} attempt(s) "
                f"(store.max_attempts): {why} ({type(cause).__name__}; see store.connect_timeout_s, "
                "store.read_timeout_s)")

    @contextlib.contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        try:
            yield
        except (ClientError, BotoCoreError, boto3.exceptions.Boto3Error) as exc:
            raise self._translate(exc, action, key) from exc

    def _check_bucket(self) -> None:
        """HEAD the bucket once, so that a missing bucket is not mistaken for a missing object later."""
        if self._bucket_checked:
            return
        try:
            self._client.head_bucket(Bucket=self._bucket)
        except ClientError as exc:
            if exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                raise StoreError(f"bucket {self._bucket} does not exist at endpoint {self._endpoint}") from exc
            raise self._translate(exc, "open", "") from exc
        except (BotoCoreError, boto3.exceptions.Boto3Error) as exc:
            raise self._translate(exc, "open", "") from exc
        self._bucket_checked = True

    def _put_file(self, key: str, path: Path, metadata: dict[str, str]) -> None:
        self._check_bucket()
        with self._errors("upload", key):
            self._client.upload_file(
                str(path), self._bucket, self._full(key), ExtraArgs={"Metadata": metadata}, Config=self._transfer
            )

    def _put_bytes(self, key: str, data: bytes, metadata: dict[str, str]) -> None:
        self._check_bucket()
        with self._errors("upload", key):
            self._client.put_object(Bucket=self._bucket, Key=self._full(key), Body=data, Metadata=metadata)

    def _get_file(self, key: str, tmp: Path) -> None:
        self._check_bucket()
        with self._errors("download", key):
            self._client.download_file(self._bucket, self._full(key), str(tmp), Config=self._transfer)

    def _get_bytes(self, key: str) -> bytes:
        self._check_bucket()
        with self._errors("download", key):
            response = self._client.get_object(Bucket=self._bucket, Key=self._full(key))
            return response["Body"].read()

    def _exists(self, key: str) -> bool:
        try:
            self._head(key)
        except ObjectNotFoundError:
            return False
        return True

    def _list(self, prefix: str) -> list[str]:
        self._check_bucket()
        keys: list[str] = []
        with self._errors("list", prefix):
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self._bucket, Prefix=self._full(prefix)
            )
            for page in pages:
                keys.extend(obj["Key"][len(self._prefix):] for obj in page.get("Contents", []))
        return keys

    def _head(self, key: str) -> dict[str, Any]:
        self._check_bucket()
        with self._errors("read", key):
            response = self._client.head_object(Bucket=self._bucket, Key=self._full(key))
        metadata = dict(response.get("Metadata", {}))
        modified = response.get("LastModified")
        return {
            "key": key,
            "size": int(response.get("ContentLength", 0)),
            "sha256": metadata.pop(SHA256_METADATA, None),
            "etag": str(response.get("ETag", "")).strip('"') or None,
            "last_modified": modified.isoformat() if modified is not None else None,
            "metadata": metadata,
        }

    def _uri(self, key: str) -> str:
        return f"s3://{self._bucket}/{self._prefix}{key}"
