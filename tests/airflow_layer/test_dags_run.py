"""The DAGs end to end with `dag.test()`: real Airflow, real training on tiny images, a real S3 server on loopback.

One scenario, in order, because each step needs the state the previous one left in the store:
1. a first retraining run publishes a champion, the ensemble (gate.candidates), the publish task carries the
   "Model page" link, and the run is recorded (runs/<run_id>/record.json);
2. a second run trains with learning rate 0 (untrained models): the gate fails, export and publish are
   skipped, the champion stays what it was, and the rejected run is recorded with the gate's reasons;
3. the scoring DAG scores a folder with that champion and uploads predictions + errors to the store.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import pytest

from medpipe_testdata import write_dataset
from shipping_fixtures import trained_run  # noqa: F401

REPO_ROOT = Path(__file__).resolve().parents[2]
PUBLISH_TASKS = {"export", "publish"}
# A few seconds of CPU training that passes the DEFAULT gate (macro AUC >= 0.80, balanced accuracy >= 0.55, cancer
# recall >= 0.40, beats the baseline) with margin. The synthetic classes are balanced, so no class weights and no
# weighted sampling: after a dozen steps they make a model answer one class whatever it ranks (balanced accuracy
# 1/3 despite AUC 1.0). Shared with test_e2e_standalone.py.
FAST_TRAINING = ["data.image_size=32", "train.epochs=3", "train.batch_size=8", "train.patience=5", "train.device=cpu",
                 "train.class_weights=none", "train.weighted_sampling=false", "augment.enabled=false",
                 "models.resnet18.weights=none"]
# Learning rate 1e-12 everywhere (ResNet-18 has its own head/backbone rates; the config takes no rate of 0): no
# float32 weight moves, both models stay at their random init.
UNTRAINED = ["train.lr=1e-12", "models.resnet18.head_lr=1e-12", "models.resnet18.backbone_lr=1e-12"]


def _fast_overrides(endpoint_url: str) -> list[str]:
    return [*FAST_TRAINING, "export.parity_images=8", "score.provider=cpu",
            f"store.endpoint_url={endpoint_url}", "store.max_attempts=2"]


def _dags() -> dict[str, Any]:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    assert bag.import_errors == {}
    return bag.dags


def _states(dag_run) -> dict[str, str]:
    return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances()}


def _xcoms(dag_run, task_id: str) -> dict[str, Any]:
    from sqlalchemy import select

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        rows = session.scalars(select(XComModel).where(
            XComModel.dag_id == dag_run.dag_id, XComModel.run_id == dag_run.run_id, XComModel.task_id == task_id))
        return {row.key: XComModel.deserialize_value(row) for row in rows}


def _champion_event_extras() -> list[dict[str, Any]]:
    """The extra of every champion Asset event in the metadata DB, oldest first."""
    from sqlalchemy import select

    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from medpipe_plugin.settings import CHAMPION_ASSET

    with create_session() as session:
        rows = session.scalars(select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
                               .where(AssetModel.uri == CHAMPION_ASSET.uri).order_by(AssetEvent.id))
        return [dict(row.extra or {}) for row in rows]


def test_the_scoring_run_takes_the_version_its_triggering_events_announce() -> None:
    """The newest champion event's model wins; a manual run (no events) or events without it use the pointer."""
    from datetime import datetime, timezone

    from airflow.sdk.execution_time.comms import AssetEventDagRunReferenceResult
    from airflow.sdk.execution_time.context import TriggeringAssetEventsAccessor
    from medpipe_plugin.dag_common import announced_model
    from medpipe_plugin.settings import CHAMPION_ASSET

    def event(extra: dict[str, Any]) -> AssetEventDagRunReferenceResult:
        return AssetEventDagRunReferenceResult(
            asset={"name": CHAMPION_ASSET.name, "uri": CHAMPION_ASSET.uri, "extra": {}}, extra=extra,
            source_task_id="publish", source_dag_id="medpipe_retrain", source_run_id="r", source_map_index=-1,
            source_aliases=[], timestamp=datetime.now(timezone.utc))

    first = {"model_name": "resnet18", "version": "v1", "sha256": "a" * 64}
    second = {"model_name": "custom_cnn", "version": "v2", "sha256": "b" * 64}
    events = TriggeringAssetEventsAccessor.build([event(first), event(second)])
    assert announced_model(events) == second
    assert announced_model(TriggeringAssetEventsAccessor.build([event(first), event({})])) == first
    assert announced_model(TriggeringAssetEventsAccessor.build([event({})])) is None
    assert announced_model(TriggeringAssetEventsAccessor.build([])) is None and announced_model(None) is None


def _read_csv(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode())))


@pytest.fixture
def no_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    # A failing task would otherwise wait minutes for its retries; here a failure must fail the test at once.
    monkeypatch.setenv("MEDPIPE_TASK_RETRIES", "0")


def test_retrain_publishes_then_gates_a_worse_model_and_scoring_uses_the_champion(
        no_retries, s3_server, tmp_path: Path) -> None:
    from medpipe.registry import list_versions, read_champion
    from medpipe.run_record import list_run_records
    from medpipe.store import open_store
    from medpipe_plugin.settings import run_folder_name

    dags = _dags()
    data = write_dataset(tmp_path / "data", per_class=8, size=32)
    store = open_store(s3_server.store_config(prefix="medpipe"))
    conf = {"data_root": str(data), "config": "", "store_uri": store.uri(), "work_root": str(tmp_path / "work"),
            "overrides": [*_fast_overrides(s3_server.endpoint_url), "gate.candidates=[ensemble]"]}

    # Only the ensemble may be the challenger: the DAG exports both networks as one graph and publishes it.
    first = dags["medpipe_retrain"].test(run_conf=conf)
    assert str(first.state) == "success", _states(first)
    assert set(_states(first).values()) == {"success"}
    champion = read_champion(store)
    published = _xcoms(first, "publish")
    assert champion is not None and published["return_value"]["status"] == "published"
    assert champion["model_name"] == "ensemble"
    assert (champion["model_name"], champion["version"]) == (published["return_value"]["model_name"],
                                                             published["return_value"]["version"])
    assert published["_link_ModelPageLink"] == f"/medpipe/models/{champion['model_name']}/{champion['version']}"
    # The champion Asset event names the version it announces (the scoring run it triggers scores that one).
    assert _champion_event_extras()[-1] == {key: champion[key] for key in ("model_name", "version", "sha256")}
    version_prefix = f"models/{champion['model_name']}/{champion['version']}/"
    stored = {k.removeprefix(version_prefix) for k in store.list(version_prefix)}
    assert {"model.onnx", "metrics.json", "gate.json", "model_card.md", "config.yaml", "manifest.json"} <= stored
    assert any(name.startswith("plots/") and name.endswith("_roc.png") for name in stored)
    [first_record] = list_run_records(store)[0]
    assert (first_record.status, first_record.dag_id, first_record.dag_run_id) == ("passed", "medpipe_retrain",
                                                                                   first.run_id)
    assert first_record.published == first_record.champion_after == {k: champion[k] for k in ("model_name", "version")}

    worse = dags["medpipe_retrain"].test(run_conf={**conf, "overrides": conf["overrides"] + UNTRAINED})
    states = _states(worse)
    assert str(worse.state) == "success", states
    assert {t: states[t] for t in ("gate", "gate_passed")} == {"gate": "success", "gate_passed": "success"}
    assert {states[t] for t in PUBLISH_TASKS} == {"skipped"}
    decision = _xcoms(worse, "gate")["return_value"]
    assert decision["passed"] is False
    assert decision["reasons"] and any(not check["passed"] for check in decision["checks"])
    assert any(check["name"] == "not_worse_than_champion" for check in decision["checks"])
    assert read_champion(store) == champion
    assert len(list_versions(store)) == 1
    assert states["record"] == "success"  # a rejected run is recorded too
    newest, older = list_run_records(store)[0]
    assert older == first_record and newest.status == "rejected" and newest.published is None
    assert newest.gate["reasons"] == decision["reasons"] and newest.dag_run_id == worse.run_id
    assert newest.champion_before == newest.champion_after == first_record.champion_after

    inbox = write_dataset(tmp_path / "inbox", per_class={"val": 2}, splits=("val",), size=32, seed=7)
    (inbox / "val" / "broken.png").write_bytes(b"not a png")
    scored = dags["medpipe_score"].test(run_conf={
        "input": str(inbox), "config": "", "store_uri": store.uri(), "work_root": str(tmp_path / "work"),
        "overrides": [f"store.endpoint_url={s3_server.endpoint_url}", "score.provider=cpu"]})
    assert str(scored.state) == "success", _states(scored)
    assert _xcoms(scored, "resolve_champion")["return_value"]["source"] == "champion pointer"  # a manual run
    prefix = f"scores/{run_folder_name(scored.run_id)}/"
    assert store.list(prefix) == [prefix + "predictions.csv", prefix + "predictions.errors.csv"]
    rows = _read_csv(store.get_bytes(prefix + "predictions.csv"))
    assert len(rows) == 6 and {r["model_version"] for r in rows} == {champion["version"]}
    assert {r["predicted"] for r in rows} <= {"normal", "benign", "cancer"}
    errors = _read_csv(store.get_bytes(prefix + "predictions.errors.csv"))
    assert [e["path"] for e in errors] == ["val/broken.png"]


def test_invalid_dataset_fails_the_run_at_validation(tmp_path: Path) -> None:
    """Bad data fails at once (AirflowFailException: no retries, even with the default retries=2)."""
    from medpipe_plugin.settings import run_folder_name

    data = write_dataset(tmp_path / "data", per_class=2, splits=("train",), size=32)  # no val split
    dag_run = _dags()["medpipe_retrain"].test(run_conf={
        "data_root": str(data), "config": "", "store_uri": str(tmp_path / "store"),
        "work_root": str(tmp_path / "work"), "overrides": ["data.image_size=32", "models.resnet18.weights=none"]})
    states = _states(dag_run)
    assert str(dag_run.state) == "failed"
    assert states["validate"] == "failed"
    assert {states[t] for t in ("cache", "train_resnet18", "gate", "publish")} == {"upstream_failed"}
    assert (tmp_path / "work" / run_folder_name(dag_run.run_id) / "validation" / "validation.md").is_file()
    assert not (tmp_path / "store").exists()


def _relative_files(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


def test_the_dag_and_the_cli_make_the_same_run_folder(no_retries, tmp_path: Path) -> None:
    """One stage list behind both: `medpipe run --ship` and a DAG run on the same data and settings write the same
    files (relative paths: every stage's timing, the export, the run record) and equal summaries."""
    from medpipe.cli import main
    from medpipe_plugin.settings import run_folder_name

    data = write_dataset(tmp_path / "data", per_class=6, size=32)
    settings = [*FAST_TRAINING, "export.parity_images=8", "evaluate.splits=[val]",
                "gate.min_metrics={macro_auc: 0.0}", "gate.must_beat_baseline=false"]
    dag_run = _dags()["medpipe_retrain"].test(run_conf={
        "data_root": str(data), "config": "", "store_uri": str(tmp_path / "dag-store"),
        "work_root": str(tmp_path / "work"), "overrides": settings})
    assert str(dag_run.state) == "success", _states(dag_run)
    dag_folder = tmp_path / "work" / run_folder_name(dag_run.run_id)

    cli_folder = tmp_path / "cli-run"
    sets = [arg for setting in [*settings, f"data.cache_dir={tmp_path / 'cli-cache'}"] for arg in ("--set", setting)]
    cli_store = ["--set", f"store.uri={tmp_path / 'cli-store'}"]
    assert main(["run", "--ship", "--data", str(data), "--out", str(cli_folder), *sets, *cli_store]) == 0

    assert _relative_files(dag_folder) == _relative_files(cli_folder)
    dag_summary = json.loads((dag_folder / "summary.json").read_text())
    assert dag_summary == json.loads((cli_folder / "summary.json").read_text())
    assert set(dag_summary["models"]) == {"custom_cnn", "resnet18", "ensemble"}
    dag_record, cli_record = (json.loads((f / "record.json").read_text()) for f in (dag_folder, cli_folder))
    assert dag_record["stage_seconds"].keys() == cli_record["stage_seconds"].keys()
    assert (dag_record["dag_id"], cli_record["dag_id"]) == ("medpipe_retrain", None)
    assert dag_record["models"] == cli_record["models"] and dag_record["status"] == cli_record["status"] == "passed"


def test_the_inbox_dag_scores_each_complete_batch_once(no_retries, trained_run, tmp_path: Path) -> None:  # noqa: F811
    """Two complete batches are scored by one mapped task each; a folder without _READY is left alone; a second
    run finds nothing to do."""
    import shutil

    from medpipe.export import export_onnx
    from medpipe.registry import publish_version
    from medpipe.store import LocalStore

    store = LocalStore(tmp_path / "store")
    release = tmp_path / "release"
    export_onnx(trained_run.checkpoints["custom_cnn"], trained_run.cache_dir, trained_run.cfg,
                release / "model.onnx", trained_run.metrics["custom_cnn"], "v1")
    shutil.copyfile(trained_run.metrics["custom_cnn"], release / "metrics.json")
    publish_version(store, release, "custom_cnn", "v1", promote=True)  # a bare export: no gate.json
    inbox = tmp_path / "inbox"
    for name, ready in (("b1", True), ("b2", True), ("b3-writing", False)):
        data = write_dataset(tmp_path / f"src-{name}", per_class={"val": 1}, splits=("val",), size=32)
        shutil.copytree(data / "val", inbox / name)
        if ready:
            (inbox / name / "_READY").write_text("")
    conf = {"inbox": str(inbox), "rescore": False, "config": "", "store_uri": str(store.root),
            "work_root": str(tmp_path / "work"), "overrides": ["score.provider=cpu"]}

    first = _dags()["medpipe_inbox"].test(run_conf=conf)
    assert str(first.state) == "success", _states(first)
    assert [item["batch"] for item in _xcoms(first, "find_batches")["return_value"]] == ["b1", "b2"]
    for batch in ("b1", "b2"):
        prefix = f"scores/custom_cnn/v1/{batch}/"
        assert sorted(store.list(prefix)) == [prefix + n for n in ("errors.csv", "predictions.csv", "summary.json")]
        assert len(_read_csv(store.get_bytes(prefix + "predictions.csv"))) == 3
    assert not store.list("scores/custom_cnn/v1/b3-writing/")

    second = _dags()["medpipe_inbox"].test(run_conf=conf)
    assert str(second.state) == "success", _states(second)
    assert _xcoms(second, "find_batches")["return_value"] == []
