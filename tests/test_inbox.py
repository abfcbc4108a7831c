"""The inbox: only complete batches (their _READY marker) are scored, each once per model version, a folder still
being written is never touched, a rerun scores nothing twice, and an S3 inbox works like a local one."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import pytest

from medpipe.config import StoreConfig
from medpipe.export import export_onnx
from medpipe.inbox import READY_MARKER, InboxError, open_inbox, pending_batches, ready_batches, score_batch
from medpipe.store import LocalStore
from medpipe_testdata import write_dataset
from shipping_fixtures import TrainedRun
from shipping_fixtures import trained_run  # noqa: F401


@pytest.fixture(scope="module")
def model(trained_run: TrainedRun) -> Path:  # noqa: F811
    return export_onnx(trained_run.checkpoints["custom_cnn"], trained_run.cache_dir, trained_run.cfg,
                       trained_run.work / "inbox-model" / "model.onnx", trained_run.metrics["custom_cnn"], "v1")


def _batch(inbox: Path, name: str, ready: bool, seed: int) -> Path:
    """A batch folder of a few real PNGs (one corrupt), with its _READY marker written last when `ready`."""
    data = write_dataset(inbox / f".{name}-src", per_class={"val": 1}, splits=("val",), size=32, seed=seed)
    folder = inbox / name
    shutil.copytree(data / "val", folder)
    shutil.rmtree(data)
    (folder / "broken.png").write_bytes(b"not a png")
    if ready:
        (folder / READY_MARKER).write_text("")
    return folder


def _rows(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode())))


def test_complete_batches_are_scored_once_per_version(model: Path, trained_run: TrainedRun, tmp_path: Path) -> None:  # noqa: F811
    inbox_dir, store = tmp_path / "inbox", LocalStore(tmp_path / "store")
    _batch(inbox_dir, "2026-12-01", ready=True, seed=1)
    _batch(inbox_dir, "2026-12-02", ready=True, seed=2)
    writing = _batch(inbox_dir, "2026-12-03", ready=False, seed=3)  # still being written: no marker
    inbox = open_inbox(str(inbox_dir), trained_run.cfg.store)
    assert ready_batches(inbox) == ["2026-12-01", "2026-12-02"]
    assert pending_batches(inbox, store, "custom_cnn", "v1") == ["2026-12-01", "2026-12-02"]

    first = score_batch(inbox, "2026-12-01", model, "custom_cnn", "v1", store, trained_run.cfg, tmp_path / "w1")
    assert first.status == "scored" and first.prefix == "scores/custom_cnn/v1/2026-12-01/"
    rows = _rows(store.get_bytes(first.prefix + "predictions.csv"))
    errors = _rows(store.get_bytes(first.prefix + "errors.csv"))
    assert len(rows) == 3 and [e["path"] for e in errors] == ["broken.png"]  # every input in exactly one of them
    assert first.summary["files"] == 4 and first.summary["errors"] == 1
    assert sum(first.summary["predicted"].values()) == 3  # the batch's predicted-class distribution
    assert set(first.summary["mean"]) >= {"prob_normal", "prob_benign", "prob_cancer"}
    assert abs(sum(first.summary["mean"][f"prob_{c}"] for c in ("normal", "benign", "cancer")) - 1) < 1e-4

    again = score_batch(inbox, "2026-12-01", model, "custom_cnn", "v1", store, trained_run.cfg, tmp_path / "w2")
    assert again.status == "already scored" and again.summary["scored"] == 3
    assert pending_batches(inbox, store, "custom_cnn", "v1") == ["2026-12-02"]
    # A new champion leaves scored batches alone unless rescoring is asked for.
    assert pending_batches(inbox, store, "resnet18", "v2") == ["2026-12-02"]
    assert pending_batches(inbox, store, "resnet18", "v2", rescore=True) == ["2026-12-01", "2026-12-02"]
    with pytest.raises(InboxError, match="no _READY marker"):
        score_batch(inbox, writing.name, model, "custom_cnn", "v1", store, trained_run.cfg, tmp_path / "w3")
    assert not store.list("scores/custom_cnn/v1/2026-12-03/")


def test_an_s3_inbox_is_downloaded_and_scored(model: Path, trained_run: TrainedRun, tmp_path: Path,  # noqa: F811
                                               s3_server) -> None:
    local = tmp_path / "inbox"
    _batch(local, "b1", ready=True, seed=4)
    s3_cfg = s3_server.store_config(prefix="inbox")
    inbox = open_inbox(s3_cfg.uri, s3_cfg)
    for path in sorted(p for p in local.rglob("*") if p.is_file() and not p.name.startswith(".")):
        inbox.put_file(path.relative_to(local).as_posix(), path)
    store = LocalStore(tmp_path / "store")
    assert ready_batches(inbox) == ["b1"]
    result = score_batch(inbox, "b1", model, "custom_cnn", "v1", store, trained_run.cfg, tmp_path / "work")
    assert result.status == "scored" and len(_rows(store.get_bytes(result.prefix + "predictions.csv"))) == 3
    assert result.summary["inbox"] == inbox.uri("b1")


def test_a_missing_inbox_is_named(trained_run: TrainedRun, tmp_path: Path) -> None:  # noqa: F811
    with pytest.raises(InboxError, match="does not exist"):
        open_inbox(str(tmp_path / "nowhere"), StoreConfig(uri=str(tmp_path)))
    with pytest.raises(InboxError, match="MEDPIPE_INBOX"):
        open_inbox("", StoreConfig(uri=str(tmp_path)))


def test_a_batch_is_checked_for_drift_against_the_models_training_reference(
        model: Path, trained_run: TrainedRun, tmp_path: Path) -> None:  # noqa: F811
    """With a training reference (write_reference: the cached training images, the model's val probabilities) a
    batch like the training data stays under the PSI threshold and a batch of inverted images is flagged; a batch
    too small to judge, and a model without a reference, say so instead."""
    import json

    import numpy as np
    from PIL import Image

    from medpipe.data.cache import build_cache
    from medpipe.drift import write_reference

    source = write_dataset(tmp_path / "ref-src", per_class={"train": 60, "val": 40}, size=40, seed=21)
    cache = build_cache(source, trained_run.cfg)
    val_csv = tmp_path / "val.csv"
    from medpipe.score import score_folder  # the model's val probabilities: scored like any folder

    score_folder(model, source / "val", val_csv, trained_run.cfg)
    reference = json.loads(write_reference(cache, val_csv, tmp_path / "ref.json").read_text())
    assert set(reference["features"]) == {"mean_intensity", "contrast", "top_probability"}

    inbox_dir, store = tmp_path / "inbox", LocalStore(tmp_path / "store")
    like = write_dataset(tmp_path / "like-src", per_class={"val": 40}, splits=("val",), size=40, seed=31)
    shutil.copytree(like / "val", inbox_dir / "like")
    shutil.copytree(like / "val", inbox_dir / "inverted")
    for path in (inbox_dir / "inverted").rglob("*.png"):
        Image.fromarray(255 - np.asarray(Image.open(path))).save(path)
    _batch(inbox_dir, "small", ready=True, seed=5)
    for name in ("like", "inverted"):
        (inbox_dir / name / READY_MARKER).write_text("")
    inbox = open_inbox(str(inbox_dir), trained_run.cfg.store)
    results = {name: score_batch(inbox, name, model, "custom_cnn", "v1", store, trained_run.cfg,
                                 tmp_path / f"w-{name}", reference=reference) for name in ("like", "inverted", "small")}
    assert results["like"].summary["drift"]["drifted"] is False, results["like"].summary["drift"]
    assert results["inverted"].summary["drift"]["drifted"] is True
    assert "mean_intensity" in results["inverted"].summary["drift"]["drifted_features"]
    assert results["small"].summary["drift"] == {"available": False,
                                                 "reason": "3 scored images; drift needs at least 100"}
    stored = json.loads(store.get_bytes(results["inverted"].prefix + "summary.json"))
    assert stored["drift"]["psi"] == results["inverted"].summary["drift"]["psi"]
    plain = score_batch(inbox, "like", model, "custom_cnn", "v2", store, trained_run.cfg, tmp_path / "w-plain")
    assert plain.summary["drift"] == {"available": False,
                                      "reason": "the model was published without a training reference"}
