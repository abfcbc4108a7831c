"""The S3 store's credentials and endpoint in DAG tasks and the Models page: an Airflow Connection of type aws.

The connection (id `MEDPIPE_AWS_CONN_ID`, default `medpipe_s3`) is read through the Amazon provider's
AwsBaseHook, the way Airflow's own S3 operators read theirs: login / password = access key id / secret key
(or any other credential form the provider supports: a role to assume, a profile), extra `endpoint_url` = the
S3-compatible endpoint (MinIO), extra `region_name` = the region. Example, as an environment variable::

    AIRFLOW_CONN_MEDPIPE_S3='{"conn_type": "aws", "login": "<key id>", "password": "<secret>",
                              "extra": {"endpoint_url": "http://minio:9000", "region_name": "us-east-1"}}'

medpipe never imports Airflow: this module turns the connection into a boto3 session + endpoint
(medpipe.store.S3Access) and hands it to medpipe's stores through `medpipe.store.s3_access_scope`. Without the
connection, stores use the AWS default chain, as the medpipe CLI always does. Nothing here logs a credential:
only the connection id, and whether it was found.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import urllib.parse
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from medpipe.store import S3Access

__all__ = ["DEFAULT_CONN_ID", "aws_conn_id", "connection_s3_access", "store_connection", "with_store_connection"]

_logger = logging.getLogger(__name__)

DEFAULT_CONN_ID = "medpipe_s3"
_OFF = ("", "none")
_F = TypeVar("_F", bound=Callable[..., Any])


def aws_conn_id() -> str | None:
    """The connection id from MEDPIPE_AWS_CONN_ID (default medpipe_s3); "none" = never look one up."""
    value = os.environ.get("MEDPIPE_AWS_CONN_ID", DEFAULT_CONN_ID).strip()
    return None if value.lower() in _OFF else value


def connection_s3_access(conn_id: str | None = None) -> S3Access | None:
    """The S3Access the Airflow connection `conn_id` (default: aws_conn_id()) describes, or None when it is not
    defined (the caller then uses the AWS default chain; an INFO line says so)."""
    from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
    from airflow.providers.common.compat.sdk import AirflowNotFoundException

    from medpipe.store import S3Access

    conn_id = aws_conn_id() if conn_id is None else conn_id
    if not conn_id:
        return None
    hook = AwsBaseHook(aws_conn_id=conn_id, client_type="s3")
    try:
        connection = hook.get_connection(conn_id)
    except AirflowNotFoundException:
        # Not an error: a deployment on AWS with instance/pod roles needs no connection at all.
        _logger.info("Airflow connection %r is not defined: the S3 store uses the AWS default credential chain "
                     "(set MEDPIPE_AWS_CONN_ID=none to skip this lookup)", conn_id)
        return None
    if connection.conn_type not in ("aws", "s3"):
        raise ValueError(f"Airflow connection {conn_id!r} (MEDPIPE_AWS_CONN_ID) has conn_type "
                         f"{connection.conn_type!r}: the S3 store needs one of type 'aws'")
    # get_session() builds the session the provider would use for its own S3Hook (static keys, an assumed role
    # with refreshable credentials, or a profile); the endpoint may be global or per service (service_config.s3).
    session = hook.get_session(region_name=hook.region_name)
    endpoint = hook.conn_config.get_service_endpoint_url("s3")
    shown = urllib.parse.urlsplit(endpoint).hostname if endpoint else "AWS default"  # never a user:password@ part
    _logger.info("S3 store credentials from Airflow connection %r (endpoint host %s)", conn_id, shown)
    return S3Access(session=session, endpoint_url=endpoint, source=f"Airflow connection {conn_id!r}")


@contextlib.contextmanager
def store_connection(conn_id: str | None = None) -> Iterator[None]:
    """Inside the block, S3 stores medpipe opens use the Airflow connection (looked up once, on first use)."""
    from medpipe.store import s3_access_scope

    with s3_access_scope(lambda: connection_s3_access(conn_id)):
        yield


def with_store_connection(func: _F) -> _F:
    """A task function whose S3 stores use the Airflow connection; put it under @task (the signature is kept, so
    TaskFlow still sees the function's own arguments)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with store_connection():
            return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
