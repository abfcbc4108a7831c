"""The model registry on both backends (a real folder and a real S3 server on loopback): publish, list, show,
resolve with sha256 verification, immutability, completing an interrupted publish, and the CLI commands."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from PIL import Image

from medpipe.cli import main as cli_main
from medpipe.config import StoreConfig
from medpipe.registry import (
    CHAMPION_KEY,
    IntegrityError,
    RegistryError,
    list_versions,
    new_version_name,
    publish_version,
    read_champion,
    resolve_model,
    show_version,
)
from medpipe.store import Store, StoreError, open_store, sha256_bytes, sha256_file
from s3_fixtures import S3Server

VERSION_FILES = ["config.yaml", "gate.json", "metrics.json", "model.onnx", "model_card.md", "plots/confusion.png"]


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "local":
        return open_store(StoreConfig(uri=str(tmp_path / "store")))
    return open_store(request.getfixturevalue("s3_server").store_config(prefix="registry"))


def make_version_dir(root: Path, tag: str = "a", auc: float = 0.91, challenger: str = "resnet18") -> Path:
    """A version folder as export/evaluate/gate leave it: a real (tiny) ONNX model, metrics, card, plot, and a
    gate decision that `challenger` passed (only that model becomes champion without --promote)."""
    root.mkdir(parents=True)
    graph = helper.make_graph(
        [helper.make_node("Softmax", ["x"], ["probs"], axis=1)], f"toy-{tag}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], doc_string=f"version {tag}")
    onnx.save(model, root / "model.onnx")
    split = {"n": 30, "accuracy": 0.8, "balanced_accuracy": 0.7, "f1_macro": 0.69, "macro_auc": auc}
    metrics = {"model": "resnet18", "classes": ["normal", "benign", "cancer"], "splits": {"val": split}}
    (root / "metrics.json").write_text(json.dumps(metrics))
    (root / "gate.json").write_text(json.dumps({"passed": True, "challenger": challenger, "reasons": []}))
    (root / "model_card.md").write_text(f"# resnet18 ({tag})\n")
    (root / "config.yaml").write_text("data:\n  image_size: 32\n")
    (root / "plots").mkdir()
    Image.fromarray(np.full((8, 8), 200, np.uint8), mode="L").save(root / "plots" / "confusion.png")
    return root


def test_publish_list_show_resolve_round_trip(store: Store, tmp_path: Path) -> None:
    folder = make_version_dir(tmp_path / "v1")
    result = publish_version(store, folder, "resnet18", "v1")
    assert result["status"] == "published" and result["champion_updated"]
    assert sorted(result["uploaded"]) == VERSION_FILES and result["skipped"] == []
    for rel in VERSION_FILES:  # every object carries its sha256
        assert store.sha256(f"models/resnet18/v1/{rel}") == sha256_file(folder / rel)

    champion = read_champion(store)
    assert champion["model_name"] == "resnet18" and champion["version"] == "v1"
    assert champion["key"] == "models/resnet18/v1/model.onnx"
    assert champion["sha256"] == sha256_file(folder / "model.onnx")
    assert champion["metrics"]["val"]["macro_auc"] == 0.91

    (row,) = list_versions(store)
    assert row["model_name"] == "resnet18" and row["version"] == "v1" and row["is_champion"] and row["complete"]
    assert row["metrics"]["val"]["balanced_accuracy"] == 0.7 and row["published_at"] == champion["published_at"]

    shown = show_version(store, "champion")
    assert shown == show_version(store, "v1") == show_version(store, "resnet18/v1")
    assert {f["path"]: f["sha256"] for f in shown["files"]} == {r: sha256_file(folder / r) for r in VERSION_FILES}
    assert {f["path"]: f["size"] for f in shown["files"]} == {r: (folder / r).stat().st_size for r in VERSION_FILES}

    path, info = resolve_model(store, "champion", tmp_path / "models")
    assert path.read_bytes() == (folder / "model.onnx").read_bytes()
    assert info["source"] == "store" and info["downloaded"] and info["sha256"] == champion["sha256"]
    onnx.checker.check_model(onnx.load(path))
    again, info = resolve_model(store, "resnet18/v1", tmp_path / "models")
    assert again == path and not info["downloaded"]  # a verified copy is reused


def test_second_model_without_champion_keeps_the_pointer(store: Store, tmp_path: Path) -> None:
    publish_version(store, make_version_dir(tmp_path / "a"), "resnet18", "v1")
    before = store.get_bytes(CHAMPION_KEY)
    result = publish_version(store, make_version_dir(tmp_path / "b", "b"), "custom_cnn", "v2", make_champion=False)
    assert result["status"] == "published" and not result["champion_updated"]
    assert store.get_bytes(CHAMPION_KEY) == before
    rows = {(r["model_name"], r["version"]): r["is_champion"] for r in list_versions(store)}
    assert rows == {("resnet18", "v1"): True, ("custom_cnn", "v2"): False}


def test_republishing_identical_content_is_a_no_op(store: Store, tmp_path: Path) -> None:
    folder = make_version_dir(tmp_path / "v1")
    publish_version(store, folder, "resnet18", "v1")
    before = {key: store.head(key)["last_modified"] for key in store.list()}
    champion = store.get_bytes(CHAMPION_KEY)
    again = publish_version(store, folder, "resnet18", "v1")
    assert again["status"] == "unchanged" and again["uploaded"] == [] and not again["champion_updated"]
    assert {key: store.head(key)["last_modified"] for key in store.list()} == before
    assert store.get_bytes(CHAMPION_KEY) == champion


def test_pointer_is_moved_when_a_publish_died_after_its_manifest(store: Store, tmp_path: Path) -> None:
    folder = make_version_dir(tmp_path / "v1")
    publish_version(store, folder, "resnet18", "v1", make_champion=False)  # = everything but the pointer
    assert read_champion(store) is None
    result = publish_version(store, folder, "resnet18", "v1")
    assert result["status"] == "unchanged" and result["champion_updated"]
    assert read_champion(store)["version"] == "v1"


def test_different_content_under_an_existing_version_is_refused(store: Store, tmp_path: Path) -> None:
    publish_version(store, make_version_dir(tmp_path / "v1"), "resnet18", "v1")
    stored_model = store.get_bytes("models/resnet18/v1/model.onnx")
    changed = make_version_dir(tmp_path / "changed", tag="other")
    with pytest.raises(RegistryError, match=r"resnet18/v1 already exists .*model\.onnx differs") as info:
        publish_version(store, changed, "resnet18", "v1")
    assert "model_card.md differs" in str(info.value) and "never overwritten" in str(info.value)
    extra = make_version_dir(tmp_path / "extra")
    (extra / "notes.txt").write_text("new file")
    with pytest.raises(RegistryError, match=r"notes\.txt is only in the local folder"):
        publish_version(store, extra, "resnet18", "v1")
    assert store.get_bytes("models/resnet18/v1/model.onnx") == stored_model


def test_version_folder_and_names_are_checked(store: Store, tmp_path: Path) -> None:
    folder = make_version_dir(tmp_path / "v1")
    (folder / "metrics.json").unlink()
    with pytest.raises(RegistryError, match=r"lacks metrics\.json"):
        publish_version(store, folder, "resnet18", "v1")
    with pytest.raises(RegistryError, match="does not exist"):
        publish_version(store, tmp_path / "nowhere", "resnet18", "v1")
    good = make_version_dir(tmp_path / "good")
    for model, version in [("../etc", "v1"), ("resnet18", "a/b"), ("resnet18", "v..1"), ("", "v1"), ("m", "x" * 65)]:
        with pytest.raises(RegistryError, match="invalid (model name|version)"):
            publish_version(store, good, model, version)
    (good / "bad name.txt").write_text("x")
    with pytest.raises(RegistryError, match="bad name.txt cannot be published"):
        publish_version(store, good, "resnet18", "v1")
    assert store.list() == []


def test_refs_that_match_nothing_or_several_models(store: Store, tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="no champion"):
        show_version(store, "champion")
    publish_version(store, make_version_dir(tmp_path / "a"), "resnet18", "v1")
    publish_version(store, make_version_dir(tmp_path / "b", "b"), "custom_cnn", "v1", make_champion=False)
    with pytest.raises(RegistryError, match=r"version v1 exists for several models \(custom_cnn/v1, resnet18/v1\)"):
        show_version(store, "v1")
    with pytest.raises(RegistryError, match="no version v9 .*known: custom_cnn/v1, resnet18/v1"):
        show_version(store, "v9")
    assert show_version(store, "custom_cnn/v1")["model_name"] == "custom_cnn"


def test_resolve_a_local_onnx_path_downloads_nothing(store: Store, tmp_path: Path) -> None:
    folder = make_version_dir(tmp_path / "v1")
    path, info = resolve_model(store, str(folder / "model.onnx"), tmp_path / "dl")
    assert path == folder / "model.onnx" and info["source"] == "local"
    assert info["sha256"] == sha256_file(path) and not (tmp_path / "dl").exists()
    with pytest.raises(RegistryError, match="missing.onnx does not exist"):
        resolve_model(store, str(tmp_path / "missing.onnx"), tmp_path / "dl")


def test_tampered_model_is_refused(store: Store, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    publish_version(store, make_version_dir(tmp_path / "v1"), "resnet18", "v1")
    key = "models/resnet18/v1/model.onnx"
    expected = store.sha256(key)
    evil = b"not the published model"
    if store.uri().startswith("s3://"):
        server: S3Server = request.getfixturevalue("s3_server")
        # Overwrite the bytes behind the registry's back, even copying the old sha256 metadata.
        server.client().put_object(Bucket=server.bucket, Key=f"registry/{key}", Body=evil,
                                   Metadata={"sha256": expected})
    else:
        Path(store.uri(key)).write_bytes(evil)
    with pytest.raises(IntegrityError) as info:
        resolve_model(store, "champion", tmp_path / "dl")
    message = str(info.value)
    assert store.uri(key) in message and expected in message and sha256_bytes(evil) in message
    assert list((tmp_path / "dl" / "resnet18" / "v1").iterdir()) == []  # nothing unverified left behind


def test_publish_interrupted_by_a_dead_server_is_completed_by_a_rerun(s3_server: S3Server, tmp_path: Path) -> None:
    store = open_store(s3_server.store_config(prefix="registry"))
    publish_version(store, make_version_dir(tmp_path / "v1"), "resnet18", "v1")
    old_champion = store.get_bytes(CHAMPION_KEY)
    folder = make_version_dir(tmp_path / "v2", tag="v2", auc=0.95)
    uploaded: list[str] = []

    def stop_server_after_two_uploads(key: str, status: str) -> None:
        uploaded.append(key)
        if len(uploaded) == 2:
            s3_server.stop()

    with pytest.raises(StoreError, match="cannot reach endpoint"):
        publish_version(store, folder, "resnet18", "v2", progress=stop_server_after_two_uploads)
    s3_server.restart()

    assert store.get_bytes(CHAMPION_KEY) == old_champion  # the pointer never moved
    assert store.list("models/resnet18/v2/") == sorted(uploaded)
    rows = {r["version"]: r for r in list_versions(store)}
    assert rows["v1"]["is_champion"] and not rows["v2"]["complete"]
    with pytest.raises(RegistryError, match="incomplete .*re-run publish"):
        resolve_model(store, "resnet18/v2", tmp_path / "dl")

    result = publish_version(store, folder, "resnet18", "v2")
    assert result["status"] == "published"
    assert sorted(f"models/resnet18/v2/{rel}" for rel in result["skipped"]) == sorted(uploaded)
    assert sorted(result["uploaded"] + result["skipped"]) == VERSION_FILES
    assert read_champion(store)["version"] == "v2" and read_champion(store)["metrics"]["val"]["macro_auc"] == 0.95
    path, _ = resolve_model(store, "champion", tmp_path / "dl")
    assert path.read_bytes() == (folder / "model.onnx").read_bytes()


def test_new_version_name_is_a_utc_timestamp() -> None:
    assert new_version_name(dt.datetime(2026, 11, 26, 15, 30, 0, tzinfo=dt.timezone.utc)) == "20261126T153000Z"
    assert new_version_name(dt.datetime(2026, 11, 26, 15, 30, 0)) == "20261126T153000Z"  # naive = UTC
    plus_two = dt.timezone(dt.timedelta(hours=2))
    assert new_version_name(dt.datetime(2026, 11, 26, 17, 30, 0, tzinfo=plus_two)) == "20261126T153000Z"
    assert len(new_version_name()) == 16


def test_cli_publish_list_show(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store_dir = str(tmp_path / "cli-store")
    folder = make_version_dir(tmp_path / "v1")
    assert cli_main(["publish", "--version-dir", str(folder), "--model-name", "resnet18", "--version", "v1",
                     "--store", store_dir]) == 0
    out = capsys.readouterr().out
    assert "published: resnet18/v1" in out and "6 file(s) uploaded" in out and "champion: now resnet18/v1" in out

    assert cli_main(["models", "list", "--store", store_dir]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["model", "version", "published_at", "val_auc", "val_bacc", "test_auc", "test_bacc"]
    assert table[1].split()[:2] == ["*", "resnet18"] and "0.910" in table[1]
    assert cli_main(["models", "list", "--json", "--set", f"store.uri={store_dir}"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["version"] == "v1"

    assert cli_main(["models", "show", "--store", store_dir]) == 0
    shown = capsys.readouterr().out
    assert "resnet18/v1  (champion)" in shown and sha256_file(folder / "model.onnx") in shown
    assert cli_main(["models", "show", "v7", "--store", store_dir]) == 1
    assert "no version v7" in capsys.readouterr().err


def test_cli_publish_takes_name_and_version_from_the_onnx_metadata(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    store_dir = str(tmp_path / "cli-store")
    bare = make_version_dir(tmp_path / "bare")  # no metadata: the model name must be given
    assert cli_main(["publish", "--version-dir", str(bare), "--store", store_dir]) == 1
    assert "no model name: pass --model-name" in capsys.readouterr().err

    def with_metadata(folder: Path, **props: str) -> Path:
        model = onnx.load(folder / "model.onnx")
        for key, value in props.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(model, folder / "model.onnx")
        return folder

    exported = with_metadata(make_version_dir(tmp_path / "exported", "b", challenger="custom_cnn"),
                             model_name="custom_cnn", version="v9")
    assert cli_main(["publish", "--version-dir", str(exported), "--store", store_dir]) == 0
    assert "published: custom_cnn/v9" in capsys.readouterr().out
    assert read_champion(open_store(StoreConfig(uri=store_dir)))["version"] == "v9"
    # An option wins over the metadata; export's "unversioned" placeholder falls back to a timestamp version.
    unversioned = with_metadata(make_version_dir(tmp_path / "unversioned", "c"), model_name="custom_cnn",
                                version="unversioned")
    assert cli_main(["publish", "--version-dir", str(unversioned), "--model-name", "resnet18", "--no-champion",
                     "--store", store_dir]) == 0
    published = capsys.readouterr().out.split()[1]
    assert published.startswith("resnet18/") and len(published.split("/")[1]) == 16
