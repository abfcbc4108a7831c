"""What only the S3 backend does, against a real S3 server on loopback (moto) through boto3: multipart uploads,
prefixes, and plain errors for a missing bucket, bad or missing credentials and an unreachable endpoint."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path

import pytest

from medpipe.store import StoreError, open_store, sha256_file
from medpipe.store.s3 import S3Store, parse_s3_uri
from s3_fixtures import S3Server

MIB = 1024 * 1024


def test_large_file_goes_multipart_above_the_threshold(s3_server: S3Server, tmp_path: Path) -> None:
    store = open_store(s3_server.store_config(multipart_threshold_mb=5))
    big, small = tmp_path / "big.bin", tmp_path / "small.bin"
    big.write_bytes(os.urandom(6 * MIB))
    small.write_bytes(os.urandom(MIB))
    store.put_file("models/big.bin", big)
    store.put_file("models/small.bin", small)
    # A multipart ETag is "<md5 of part md5s>-<number of parts>"; a single PUT's ETag has no suffix.
    assert store.head("models/big.bin")["etag"].endswith("-2")
    assert "-" not in store.head("models/small.bin")["etag"]
    assert store.sha256("models/big.bin") == sha256_file(big)  # the sha256 survives the multipart path
    out = store.get_file("models/big.bin", tmp_path / "dl" / "big.bin")
    assert out.read_bytes() == big.read_bytes()


def test_objects_live_under_the_prefix_and_prefixes_are_isolated(s3_server: S3Server) -> None:
    one = open_store(s3_server.store_config(prefix="team-a/medpipe"))
    two = open_store(s3_server.store_config(prefix="team-b"))
    one.put_bytes("champion.json", b"{}")
    assert one.uri("champion.json") == f"s3://{s3_server.bucket}/team-a/medpipe/champion.json"
    listed = s3_server.client().list_objects_v2(Bucket=s3_server.bucket)["Contents"]
    assert [obj["Key"] for obj in listed] == ["team-a/medpipe/champion.json"]
    assert two.list() == [] and not two.exists("champion.json")
    root = open_store(s3_server.store_config(prefix=""))
    assert root.list() == ["team-a/medpipe/champion.json"]


def test_sha256_is_stored_as_object_metadata_visible_to_any_s3_client(s3_server: S3Server) -> None:
    store = open_store(s3_server.store_config())
    digest = store.put_bytes("x.json", b"[1, 2]")
    head = s3_server.client().head_object(Bucket=s3_server.bucket, Key="medpipe/x.json")
    assert head["Metadata"] == {"sha256": digest}


def test_missing_bucket_is_named_with_the_endpoint(s3_server: S3Server) -> None:
    store = open_store(dataclasses.replace(s3_server.store_config(), uri="s3://no-such-bucket-here/medpipe"))
    expected = f"bucket no-such-bucket-here does not exist at endpoint {s3_server.endpoint_url}"
    for call in (lambda: store.exists("a"), lambda: store.list(), lambda: store.put_bytes("a", b"x")):
        with pytest.raises(StoreError) as info:
            call()
        assert str(info.value) == expected


def test_bad_credentials_are_refused_clearly_and_never_shown(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    open_store(s3_server.store_config()).put_bytes("model.onnx", b"weights")
    with s3_server.enforce_credentials() as valid:
        for name, value in valid.items():
            monkeypatch.setenv(name, value)
        assert open_store(s3_server.store_config()).get_bytes("model.onnx") == b"weights"  # good keys work

        wrong_secret = "wrong-secret-0123456789-abcdefghij"
        for access_key in (valid["AWS_ACCESS_KEY_ID"], "AKIAUNKNOWNKEY000000"):
            monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key)
            monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
            store = open_store(s3_server.store_config())
            with caplog.at_level(logging.DEBUG), pytest.raises(StoreError) as info:
                store.get_bytes("model.onnx")
            message = str(info.value)
            assert message.startswith(f"access denied / invalid credentials for bucket {s3_server.bucket}")
            assert "credentials come from the environment/AWS config; not shown" in message
            for secret in (wrong_secret, valid["AWS_SECRET_ACCESS_KEY"]):
                assert secret not in message and secret not in caplog.text


def test_missing_credentials_say_where_they_come_from(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StoreError, match="no usable credentials for bucket .*AWS_ACCESS_KEY_ID"):
        open_store(s3_server.store_config()).exists("a")


def test_unreachable_endpoint_after_retries(s3_server: S3Server) -> None:
    store = open_store(s3_server.store_config(max_attempts=2))
    assert not store.exists("a")
    s3_server.stop()
    try:
        with pytest.raises(StoreError, match=r"cannot reach endpoint http://127\.0\.0\.1:\d+ .* after 2 attempt"):
            store.put_bytes("a", b"x")
    finally:
        s3_server.restart()
    assert not store.exists("a") and store.put_bytes("a", b"x")  # works again once the server is back


@pytest.mark.parametrize(("uri", "message"), [
    ("s3://Bad_Bucket/x", "bucket name 'Bad_Bucket'"),
    ("s3://ab/x", "bucket name 'ab'"),
    ("s3://bucket-name/a/../b", "invalid object key 'a/../b'"),
    ("s3://bucket-name/a//b", "invalid object key"),
    ("s3://bucket-name/x?versionId=1", "must look like s3://bucket/prefix"),
])
def test_bad_store_uris_are_refused(uri: str, message: str) -> None:
    with pytest.raises(StoreError, match=re.escape(message)):
        parse_s3_uri(uri)


def test_uri_parsing_normalises_the_prefix() -> None:
    assert parse_s3_uri("s3://bucket-name") == ("bucket-name", "")
    assert parse_s3_uri("s3://bucket-name/") == ("bucket-name", "")
    assert parse_s3_uri("s3://bucket-name/a/b/") == ("bucket-name", "a/b/")
    with pytest.raises(StoreError, match="max_attempts"):
        S3Store("s3://bucket-name/a", max_attempts=0)
