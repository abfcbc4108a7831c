"""DAG tasks and the Models page take the S3 store's credentials and endpoint from an Airflow Connection (type
aws, endpoint in its extra) through the Amazon provider; without the connection, the AWS chain, as in the CLI.

The connection is a real one, defined the way a deployment may define it (AIRFLOW_CONN_MEDPIPE_S3 as JSON), and
the store is medpipe's S3Store talking to moto's HTTP server with signatures checked.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from medpipe.config import StoreConfig
from medpipe.store import StoreError, open_store
from medpipe_testdata import REPO_ROOT
from s3_fixtures import REGION, S3Server

# Distinctive values: a hit in the logs cannot be a coincidence.
KEY_ID, SECRET, TOKEN = ("AKIAMEDPIPECONNLEAK7", "medpipe/conn+Secret0123456789LeakCheckxyz",
                         "medpipeConnSessionToken//LeakCheck0123456789ABCDEFGHIJ==")


def _plugin() -> Any:
    """medpipe_plugin.aws, imported once Airflow has put plugins/ on sys.path (the session's airflow_db fixture)."""
    from medpipe_plugin import aws

    return aws


def _define_connection(monkeypatch: pytest.MonkeyPatch, login: str, password: str, endpoint: str,
                       **extra: str) -> None:
    conn = {"conn_type": "aws", "login": login, "password": password,
            "extra": {"endpoint_url": endpoint, "region_name": REGION, **extra}}
    monkeypatch.setenv("AIRFLOW_CONN_MEDPIPE_S3", json.dumps(conn))


def _client_log(caplog: pytest.LogCaptureFixture) -> str:
    """Every captured record of this process but the test S3 server's own (moto runs in-process here and logs the
    requests it receives, Authorization header included; a real server's logs are not ours)."""
    records = [r for r in caplog.records if not r.name.startswith(("moto", "werkzeug"))]
    return "\n".join(f"{r.levelname} {r.name}: {r.getMessage()}" for r in records)


def _wrong_environment_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """The AWS chain would find these: a request that succeeds was signed with the connection's, not these."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGENVIRONMENT")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-environment-secret")


def test_a_dag_side_store_reads_and_writes_with_the_connections_credentials_and_endpoint(
        s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    uri = f"s3://{s3_server.bucket}/medpipe"
    with s3_server.enforce_credentials() as valid:
        _define_connection(monkeypatch, valid["AWS_ACCESS_KEY_ID"], valid["AWS_SECRET_ACCESS_KEY"],
                           s3_server.endpoint_url)
        _wrong_environment_credentials(monkeypatch)
        # The environment's credentials are refused: the server really checks signatures.
        with pytest.raises(StoreError, match="access denied / invalid credentials .*the environment/AWS config"):
            open_store(StoreConfig(uri=uri, endpoint_url=s3_server.endpoint_url, max_attempts=1)).list("")
        with caplog.at_level(logging.DEBUG), _plugin().store_connection():
            # No endpoint in the config: it comes from the connection's extra.
            store = open_store(StoreConfig(uri=uri, max_attempts=1))
            store.put_bytes("models/m/1/metrics.json", b'{"ok": 1}')
            assert store.get_bytes("models/m/1/metrics.json") == b'{"ok": 1}'
            assert store.list("models/") == ["models/m/1/metrics.json"]
        text = _client_log(caplog)
        assert "S3 store credentials from Airflow connection 'medpipe_s3'" in text
        for value in valid.values():
            assert value not in text
        # The Models page reads the same store with the same connection.
        from medpipe_plugin.catalog import open_registry_store

        page_store = open_registry_store(uri)
        assert page_store.get_bytes("models/m/1/metrics.json") == b'{"ok": 1}'
        # Wrong credentials in the connection: the message names the connection, not a value.
        _define_connection(monkeypatch, valid["AWS_ACCESS_KEY_ID"], "not-the-secret", s3_server.endpoint_url)
        with _plugin().store_connection(), pytest.raises(StoreError) as info:
            open_store(StoreConfig(uri=uri, max_attempts=1)).list("")
        assert "credentials come from Airflow connection 'medpipe_s3'" in str(info.value)
        assert "not-the-secret" not in str(info.value)


def test_no_key_id_secret_or_session_token_of_the_connection_is_logged_at_debug(
        s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """botocore logs requests with X-Amz-Security-Token and Authorization at DEBUG; the provider logs where it
    found the credentials. Every record at DEBUG, from every logger, must be free of the three values."""
    _define_connection(monkeypatch, KEY_ID, SECRET, s3_server.endpoint_url, aws_session_token=TOKEN)
    with caplog.at_level(logging.DEBUG), _plugin().store_connection():
        store = open_store(StoreConfig(uri=f"s3://{s3_server.bucket}/p", max_attempts=1))
        store.put_bytes("a.json", b"{}")
        assert store.get_bytes("a.json") == b"{}" and store.exists("a.json")
    access = _plugin().connection_s3_access()
    assert access is not None and access.session.get_credentials().token == TOKEN  # the token was really used
    assert any(r.levelno == logging.DEBUG for r in caplog.records)  # DEBUG was on
    everything = _client_log(caplog)
    for name, value in (("access key id", KEY_ID), ("secret key", SECRET), ("session token", TOKEN)):
        assert value not in everything, f"the connection's {name} leaked into the logs"
    assert SECRET not in repr(access) and TOKEN not in repr(access)


def test_without_the_connection_the_aws_chain_is_used_and_an_info_line_says_so(
        s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_MEDPIPE_S3", raising=False)
    with caplog.at_level(logging.INFO, logger="medpipe_plugin.aws"), _plugin().store_connection():
        store = open_store(s3_server.store_config())  # endpoint from the config, credentials from the environment
        store.put_bytes("a.json", b"{}")
    assert store.get_bytes("a.json") == b"{}"
    lines = [r.getMessage() for r in caplog.records if r.name == "medpipe_plugin.aws"]
    assert lines == ["Airflow connection 'medpipe_s3' is not defined: the S3 store uses the AWS default credential "
                     "chain (set MEDPIPE_AWS_CONN_ID=none to skip this lookup)"]


def test_the_connection_id_comes_from_the_environment_and_none_switches_the_lookup_off(
        s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_OTHER_S3", json.dumps({"conn_type": "aws", "login": KEY_ID, "password": SECRET,
                                                            "extra": {"endpoint_url": s3_server.endpoint_url}}))
    monkeypatch.setenv("MEDPIPE_AWS_CONN_ID", "other_s3")
    access = _plugin().connection_s3_access()
    assert access is not None and access.endpoint_url == s3_server.endpoint_url
    assert access.source == "Airflow connection 'other_s3'"
    monkeypatch.setenv("MEDPIPE_AWS_CONN_ID", "none")
    with caplog.at_level(logging.DEBUG, logger="medpipe_plugin.aws"):
        assert _plugin().connection_s3_access() is None
    assert not caplog.records  # no lookup, nothing to say


def test_an_endpoint_in_the_config_that_differs_from_the_connections_is_refused(
        s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    _define_connection(monkeypatch, KEY_ID, SECRET, s3_server.endpoint_url)
    with _plugin().store_connection(), pytest.raises(StoreError) as info:
        open_store(StoreConfig(uri=f"s3://{s3_server.bucket}/p", endpoint_url="http://elsewhere.invalid:9000"))
    assert str(info.value) == (f"store.endpoint_url='http://elsewhere.invalid:9000' differs from the endpoint "
                               f"'{s3_server.endpoint_url}' of Airflow connection 'medpipe_s3': set one of them, or "
                               "make them equal")
    with _plugin().store_connection():  # the same endpoint twice is fine
        open_store(StoreConfig(uri=f"s3://{s3_server.bucket}/p", endpoint_url=s3_server.endpoint_url + "/"))


def test_a_connection_of_another_type_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_MEDPIPE_S3", json.dumps({"conn_type": "postgres", "host": "db"}))
    with pytest.raises(ValueError, match="Airflow connection 'medpipe_s3' \\(MEDPIPE_AWS_CONN_ID\\) has conn_type "
                                         "'postgres': the S3 store needs one of type 'aws'"):
        _plugin().connection_s3_access()


def test_a_local_store_never_looks_up_the_connection(tmp_path, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("AIRFLOW_CONN_MEDPIPE_S3", raising=False)
    with caplog.at_level(logging.DEBUG, logger="medpipe_plugin.aws"), _plugin().store_connection():
        open_store(StoreConfig(uri=str(tmp_path / "store"))).put_bytes("a.json", b"{}")
    assert not caplog.records


def test_the_dag_tasks_that_open_stores_run_inside_the_connection_scope() -> None:
    """The task functions that call open_store themselves are wrapped by with_store_connection; run_stage_task
    and the publish operator open the scope in their bodies."""
    from airflow.dag_processing.dagbag import DagBag

    dagbag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    for dag_id, task_id in (("medpipe_score", "resolve_champion"), ("medpipe_score", "score"),
                            ("medpipe_score", "upload_results"),
                            ("medpipe_inbox", "find_batches"), ("medpipe_inbox", "score_batch")):
        function = dagbag.get_dag(dag_id).get_task(task_id).python_callable
        wrapper_code = _plugin().with_store_connection(len).__code__
        assert function.__code__ is wrapper_code and function.__wrapped__.__name__ == task_id, (dag_id, task_id)
