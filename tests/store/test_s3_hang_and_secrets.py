"""The S3 store never hangs on an endpoint that does not answer, and never logs credentials, at any verbosity."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from medpipe.cli import main
from medpipe.store import StoreError, open_store
from medpipe_testdata import REPO_ROOT
from s3_fixtures import S3Server

# Distinctive values, so that a hit in the logs cannot be a coincidence.
SECRETS = {"AWS_ACCESS_KEY_ID": "AKIAMEDPIPELEAKCHECK7", "AWS_SECRET_ACCESS_KEY": "medpipe/secret+LeakCheck0123456789abcd",
           "AWS_SESSION_TOKEN": "medpipeSessionTokenLeakCheck//ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789=="}


@contextlib.contextmanager
def silent_endpoint() -> Iterator[str]:
    """An HTTP endpoint on loopback that accepts connections and never answers (a hung server or proxy)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted: list[socket.socket] = []

    def _accept() -> None:
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:  # closed below
                return

    thread = threading.Thread(target=_accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()
        for conn in accepted:
            conn.close()


def _aws_env(tmp_path: Path) -> dict[str, str]:
    """Credentials in the environment and no AWS config files or instance metadata (no 1 s IMDS waits)."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **SECRETS,
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
            "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}


def _cli(args: list[str], env: dict[str, str]) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "medpipe", *args], env=env, capture_output=True, text=True,
                          timeout=120)
    return proc, time.monotonic() - started


def test_the_cli_gives_up_on_a_silent_endpoint_within_the_timeout(tmp_path: Path) -> None:
    """A hang guard, not a benchmark: 1 attempt with a 1 s read timeout ends in seconds (measured ~3 s with the
    interpreter's start-up), with one line naming the endpoint, the timeout and the attempts."""
    with silent_endpoint() as endpoint:
        proc, seconds = _cli(["models", "list", "--store", "s3://bucket/p", "--set", f"store.endpoint_url={endpoint}",
                              "--set", "store.read_timeout_s=1", "--set", "store.max_attempts=1"], _aws_env(tmp_path))
    assert proc.returncode == 1, proc.stderr
    assert seconds < 20, f"{seconds:.1f} s"
    lines = [line for line in proc.stderr.splitlines() if line.startswith("medpipe:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"medpipe: error: cannot reach endpoint {endpoint} to open s3://bucket/p/ after 1 "
                               "attempt(s) (store.max_attempts): no answer within the read timeout of 1 s"), lines[0]


def test_every_attempt_times_out_and_the_message_counts_them(s3_server: S3Server) -> None:
    with silent_endpoint() as endpoint:
        store = open_store(s3_server.store_config(endpoint_url=endpoint, read_timeout_s=0.5, max_attempts=2))
        started = time.monotonic()
        with pytest.raises(StoreError) as info:
            store.put_bytes("a.json", b"{}")
        seconds = time.monotonic() - started
    assert 1.0 <= seconds < 20, f"{seconds:.1f} s"  # two attempts of 0.5 s each, and the backoff between them
    assert f"cannot reach endpoint {endpoint} to open" in str(info.value)
    assert "after 2 attempt(s)" in str(info.value) and "read timeout of 0.5 s" in str(info.value)


def _assert_no_secret(text: str) -> None:
    for name, value in SECRETS.items():
        assert value not in text, f"{name} leaked into the logs"


def test_no_credential_is_logged_at_debug(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture, tmp_path: Path,
) -> None:
    """botocore logs every request at DEBUG with X-Amz-Security-Token and the access key id; none of it may
    reach a log, in the CLI with -v (stderr) or in library use (every record, caught by caplog at DEBUG)."""
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    uri = f"s3://{s3_server.bucket}/medpipe"
    with caplog.at_level(logging.DEBUG):
        store = open_store(s3_server.store_config())
        store.put_bytes("models/x/1/metrics.json", b"{}")
        assert store.get_bytes("models/x/1/metrics.json") == b"{}" and store.list("models/")
        assert main(["models", "list", "--store", uri, "--set", f"store.endpoint_url={s3_server.endpoint_url}",
                     "-v"]) == 0
    records = caplog.records
    assert any(r.levelno == logging.DEBUG and r.name == "medpipe.store.s3" for r in records)  # DEBUG was on
    assert any(r.name.startswith("botocore") for r in records)  # and botocore's records reached the capture
    _assert_no_secret(caplog.text + capsys.readouterr().err)

    proc, _ = _cli(["models", "list", "--store", uri, "--set", f"store.endpoint_url={s3_server.endpoint_url}",
                    "-v"], _aws_env(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert " DEBUG medpipe.store.s3: S3 store " in proc.stderr and " botocore." in proc.stderr
    _assert_no_secret(proc.stdout + proc.stderr)


def test_the_cli_log_handler_masks_credentials_from_any_logger(tmp_path: Path) -> None:
    """The second line of defence: a credential value that reaches the CLI's handler anyway (another library, an
    exception text) is shown as ***."""
    code = ("import logging, os\n"
            "from medpipe.cli import _setup_logging\n"
            "_setup_logging(True)\n"
            "log = logging.getLogger('some.library')\n"
            "log.debug('headers %s', {'X-Amz-Security-Token': os.environ['AWS_SESSION_TOKEN']})\n"
            "try:\n"
            "    raise RuntimeError('bad key ' + os.environ['AWS_SECRET_ACCESS_KEY'])\n"
            "except RuntimeError:\n"
            "    log.warning('failed for %s', os.environ['AWS_ACCESS_KEY_ID'], exc_info=True)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=_aws_env(tmp_path), capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "{'X-Amz-Security-Token': '***'}" in proc.stderr and "failed for ***" in proc.stderr
    assert "RuntimeError: bad key ***" in proc.stderr
    _assert_no_secret(proc.stderr)
