"""A real S3 server for tests: moto's HTTP server on loopback, spoken to by boto3 exactly like S3 or MinIO.

One server runs for the whole session (started on first use, ~0.2 s); every test gets a fresh bucket, dummy
credentials in its environment and no AWS config files, so a developer's ~/.aws never leaks into a test.
``s3_server.stop()`` / ``restart()`` take the server down and up on the same port (objects survive: moto keeps
them in-process), ``enforce_credentials()`` makes it check signatures against its IAM users.
"""

from __future__ import annotations

import contextlib
import json
import logging
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto.server import ThreadedMotoServer

from medpipe.config import StoreConfig

__all__ = ["S3Server", "MotoServer", "s3_server", "REGION", "DUMMY_CREDENTIALS"]

REGION = "us-east-1"  # the one region where create_bucket needs no CreateBucketConfiguration
DUMMY_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing-access-key", "AWS_SECRET_ACCESS_KEY": "testing-secret-key"}
_AWS_ENV_TO_CLEAR = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL",
                     "AWS_ENDPOINT_URL_S3", "AWS_ROLE_ARN", "AWS_WEB_IDENTITY_TOKEN_FILE")


class MotoServer:
    """moto's ThreadedMotoServer on 127.0.0.1 that can be stopped and restarted on the same port."""

    def __init__(self) -> None:
        self._server: ThreadedMotoServer | None = None
        self._port = 0  # 0: let the OS pick on the first start, then keep that port
        self.endpoint_url = ""

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one access-log line per request otherwise
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self._port, verbose=False)
        self._server.start()
        host, self._port = self._server.get_host_and_port()
        self.endpoint_url = f"http://{host}:{self._port}"

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.stop()
        # ThreadedMotoServer.stop() leaves the listening socket open: clients would wait in its backlog instead
        # of being refused, and a restart could not bind the port again. Close it like a dead server would.
        self._server._server.server_close()
        self._server = None

    def set_auth(self, enforced: bool) -> None:
        """Switch moto's IAM authentication on (every request signed by a known IAM key) or off."""
        body = b"0" if enforced else b"inf"  # number of requests served before authentication starts
        request = urllib.request.Request(f"{self.endpoint_url}/moto-api/reset-auth", data=body, method="POST",
                                         headers={"Content-Type": "text/plain"})
        with urllib.request.urlopen(request, timeout=10) as response:
            json.loads(response.read())


_SESSION_SERVER: MotoServer | None = None


@dataclass
class S3Server:
    """What a test sees: the endpoint, its own bucket, and handles to break the server."""

    server: MotoServer
    bucket: str

    @property
    def endpoint_url(self) -> str:
        return self.server.endpoint_url

    def store_config(self, prefix: str = "medpipe", **overrides: Any) -> StoreConfig:
        """A StoreConfig for ``s3://<bucket>/<prefix>`` at this server (2 attempts: failures stay fast)."""
        uri = f"s3://{self.bucket}/{prefix}" if prefix else f"s3://{self.bucket}"
        settings = {"uri": uri, "endpoint_url": self.endpoint_url, "region": REGION, "max_attempts": 2,
                    **overrides}
        return StoreConfig(**settings)

    def client(self, service: str = "s3", **kwargs: Any) -> Any:
        """A boto3 client for this server (uses the test's environment credentials unless given others)."""
        return boto3.client(service, endpoint_url=self.endpoint_url, region_name=REGION, **kwargs)

    def stop(self) -> None:
        self.server.stop()

    def restart(self) -> None:
        self.server.stop()
        self.server.start()

    @contextlib.contextmanager
    def enforce_credentials(self) -> Iterator[dict[str, str]]:
        """Make the server check credentials; yields valid ones (an IAM user allowed s3:*) as env variables."""
        iam = self.client("iam")
        user = f"medpipe-{uuid.uuid4().hex[:8]}"
        iam.create_user(UserName=user)
        policy = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
        iam.put_user_policy(UserName=user, PolicyName="s3-all", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=user)["AccessKey"]
        self.server.set_auth(True)
        try:
            yield {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]}
        finally:
            self.server.set_auth(False)


def _session_server(request: pytest.FixtureRequest) -> MotoServer:
    global _SESSION_SERVER
    if _SESSION_SERVER is None:
        _SESSION_SERVER = MotoServer()
        _SESSION_SERVER.start()
        request.config.add_cleanup(_SESSION_SERVER.stop)
    return _SESSION_SERVER


@pytest.fixture
def s3_server(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path) -> Iterator[S3Server]:
    """A real S3 endpoint on loopback with a fresh, empty bucket for this test."""
    for name in _AWS_ENV_TO_CLEAR:
        monkeypatch.delenv(name, raising=False)
    for name, value in DUMMY_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no 1 s wait for an instance-metadata service
    server = _session_server(request)
    if not server.running:
        server.start()
    env = S3Server(server=server, bucket=f"medpipe-test-{uuid.uuid4().hex[:12]}")
    env.client().create_bucket(Bucket=env.bucket)
    yield env
    if not server.running:  # a test that stopped the server leaves it running for the next one
        server.start()
