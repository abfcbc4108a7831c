"""The Store contract on both backends (a real local folder and a real S3 server on loopback), the key rules,
and what only the local backend does (sidecar metadata, staying under its root)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from medpipe.config import StoreConfig
from medpipe.store import (
    InvalidKeyError,
    LocalStore,
    ObjectNotFoundError,
    Store,
    StoreError,
    open_store,
    sha256_bytes,
    validate_key,
)

BAD_KEYS = {
    "": "empty",
    "/etc/passwd": "absolute",
    "a/../b": "'..'",
    "..": "'..'",
    "./a": "'.'",
    "a\\b": "backslash",
    "a//b": "'//'",
    "a/": "ends with '/'",
    "a b": "' '",
    "a\nb": "control character",
    "caf\u00e9": "'\u00e9'",
    "a/.hidden": "starts with '.'",
    "x" * 1025: "1025 characters",
}


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        return open_store(StoreConfig(uri=str(tmp_path / "store")))
    return open_store(request.getfixturevalue("s3_server").store_config(prefix="contract"))


@pytest.mark.parametrize("key", ["a", "models/resnet18/20261126T153000Z/model.onnx", "plots/roc-curve_v1.png",
                                 "a+b=c", "-x/_y/0"])
def test_validate_key_accepts_safe_keys(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(("key", "reason"), list(BAD_KEYS.items()), ids=[f"bad{i}" for i in range(len(BAD_KEYS))])
def test_validate_key_rejects_with_a_message_naming_key_and_rules(key: str, reason: str) -> None:
    with pytest.raises(InvalidKeyError) as info:
        validate_key(key)
    message = str(info.value)
    assert repr(key) in message and reason in message
    assert "A-Z a-z 0-9 . _ + = -" in message


def test_bytes_round_trip_with_sha256_and_metadata(store: Store) -> None:
    data = b"\x00medpipe\xff" * 100
    assert store.put_bytes("a/b/data.bin", data, {"model-name": "resnet18"}) == sha256_bytes(data)
    assert store.get_bytes("a/b/data.bin") == data
    assert store.exists("a/b/data.bin") and not store.exists("a/b/other.bin") and not store.exists("a/b")
    assert store.sha256("a/b/data.bin") == sha256_bytes(data)
    head = store.head("a/b/data.bin")
    assert head["size"] == len(data) and head["metadata"] == {"model-name": "resnet18"}
    assert store.uri("a/b/data.bin") == store.uri().rstrip("/") + "/a/b/data.bin"


def test_file_round_trip_replaces_dest_atomically(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(300_000))
    store.put_file("dir/file.bin", src)
    dest = tmp_path / "out" / "nested" / "file.bin"
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"old content")
    assert store.get_file("dir/file.bin", dest) == dest
    assert dest.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["file.bin"]  # no temp file left behind
    assert store.sha256("dir/file.bin") == sha256_bytes(src.read_bytes())


def test_overwrite_updates_bytes_and_sha256(store: Store) -> None:
    store.put_bytes("pointer.json", b"{}")
    store.put_bytes("pointer.json", b'{"v": 2}')
    assert store.get_bytes("pointer.json") == b'{"v": 2}'
    assert store.sha256("pointer.json") == sha256_bytes(b'{"v": 2}')


def test_list_is_a_sorted_string_prefix_match(store: Store) -> None:
    for key in ["models/b/2/x", "models/a/1/x", "models/ab/1/y", "champion.json"]:
        store.put_bytes(key, key.encode())
    assert store.list() == ["champion.json", "models/a/1/x", "models/ab/1/y", "models/b/2/x"]
    assert store.list("models/a") == ["models/a/1/x", "models/ab/1/y"]
    assert store.list("models/a/") == ["models/a/1/x"]
    assert store.list("nothing/") == []


def test_missing_object_errors_name_the_key(store: Store, tmp_path: Path) -> None:
    for call in (lambda: store.get_bytes("no/such.bin"), lambda: store.head("no/such.bin"),
                 lambda: store.get_file("no/such.bin", tmp_path / "dl" / "x.bin")):
        with pytest.raises(ObjectNotFoundError, match="no/such.bin"):
            call()
    assert not (tmp_path / "dl" / "x.bin").exists()
    assert list((tmp_path / "dl").iterdir()) == []  # the failed download left no temp file


@pytest.mark.parametrize("key", ["../escape", "/abs", "a\\b", "a//b"])
def test_every_method_validates_keys_before_touching_storage(store: Store, tmp_path: Path, key: str) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(b"x")
    calls = [lambda: store.put_bytes(key, b"x"), lambda: store.put_file(key, src), lambda: store.get_bytes(key),
             lambda: store.get_file(key, tmp_path / "d.bin"), lambda: store.exists(key), lambda: store.head(key),
             lambda: store.sha256(key), lambda: store.uri(key), lambda: store.list(key)]
    for call in calls:
        with pytest.raises(InvalidKeyError, match="invalid object key"):
            call()
    assert store.list() == []
    assert not (tmp_path / "escape").exists()


def test_metadata_names_and_values_are_checked(store: Store) -> None:
    with pytest.raises(StoreError, match="reserved"):
        store.put_bytes("k", b"x", {"sha256": "forged"})
    with pytest.raises(StoreError, match="metadata name 'Bad_Name'"):
        store.put_bytes("k", b"x", {"Bad_Name": "v"})
    with pytest.raises(StoreError, match="printable ASCII"):
        store.put_bytes("k", b"x", {"note": "line\nbreak"})
    assert not store.exists("k")


# --- local backend only -------------------------------------------------------------------------------------


def test_local_layout_is_browsable_with_a_metadata_sidecar(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put_bytes("models/m/1/model.onnx", b"onnx bytes", {"note": "hi"})
    assert (tmp_path / "store/models/m/1/model.onnx").read_bytes() == b"onnx bytes"
    sidecar = json.loads((tmp_path / "store/.meta/models/m/1/model.onnx.json").read_text())
    assert sidecar == {"sha256": sha256_bytes(b"onnx bytes"), "size": 10, "metadata": {"note": "hi"}}
    (tmp_path / "store/models/m/1/.model.onnx.123.tmp").write_bytes(b"an in-flight write")
    assert store.list() == ["models/m/1/model.onnx"]  # neither .meta/ nor temp files are objects


def test_local_object_without_trustworthy_sidecar_reads_as_unverified(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put_bytes("a.bin", b"12345")
    (tmp_path / "store/a.bin").write_bytes(b"changed behind the store's back")
    assert store.sha256("a.bin") is None  # sidecar size no longer matches: it vouches for other bytes
    store.put_bytes("b.bin", b"x")
    (tmp_path / "store/.meta/b.bin.json").unlink()  # as after a crash between data and sidecar
    assert store.sha256("b.bin") is None and store.get_bytes("b.bin") == b"x"


def test_local_keys_cannot_leave_the_root_through_a_symlink(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not yours")
    root = tmp_path / "store"
    root.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    store = LocalStore(root)
    with pytest.raises(StoreError, match="outside the store root"):
        store.put_bytes("link/new.txt", b"x")
    with pytest.raises(StoreError, match="outside the store root"):
        store.get_bytes("link/secret.txt")
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


def test_local_refuses_an_object_where_a_folder_of_objects_is(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    store.put_bytes("a/b", b"x")
    with pytest.raises(StoreError, match="folder of other objects"):
        store.put_bytes("a", b"y")
    assert store.get_bytes("a/b") == b"x"


def test_open_store_picks_the_backend_from_the_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_store(StoreConfig(uri="./rel-store"))
    assert isinstance(relative, LocalStore) and relative.root == tmp_path / "rel-store"
    assert open_store(StoreConfig(uri=(tmp_path / "s").as_uri())).uri() == str(tmp_path / "s")
    with pytest.raises(StoreError, match="unsupported scheme 'ftp'"):
        open_store(StoreConfig(uri="ftp://host/x"))
    (tmp_path / "a-file").write_text("")
    with pytest.raises(StoreError, match="not a directory"):
        open_store(StoreConfig(uri=str(tmp_path / "a-file")))
