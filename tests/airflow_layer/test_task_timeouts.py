"""A training task past its execution_timeout: Airflow stops it, `last.pt` holds its last finished epoch, and the
retry resumes from there instead of starting over.

Airflow 3's task runner wraps a task's `execute` in `airflow.sdk.execution_time.timeout.timeout` (SIGALRM, then
AirflowTaskTimeout raised in the task's code); this test wraps medpipe's train stage, which `train_<model>` runs,
in that same context manager, with seconds instead of the DAG's minutes.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from medpipe.config import load_config
from medpipe.stages import run_stage, start_run
from medpipe_testdata import write_dataset

# Many short epochs, so that the timeout lands while training runs.
SLOW = ["data.image_size=32", "train.epochs=400", "train.patience=400", "train.batch_size=8", "train.device=cpu",
        "models.names=[custom_cnn]", "augment.enabled=false", "evaluate.splits=[val]"]


def _last_epoch(path: Path) -> int:
    import torch

    return int(torch.load(path, map_location="cpu", weights_only=False)["progress"]["epoch"])


def test_a_timed_out_training_keeps_last_pt_and_its_retry_resumes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from airflow.sdk.exceptions import AirflowTaskTimeout
    from airflow.sdk.execution_time.timeout import timeout

    cfg = load_config(None, [*SLOW, f"data.cache_dir={tmp_path / 'cache'}"])
    run = start_run(tmp_path / "run", cfg, write_dataset(tmp_path / "data", per_class=4, size=32))
    run_stage("validate", run, cfg)
    run_stage("cache", run, cfg)
    last = run.checkpoint("custom_cnn", "last")

    with pytest.raises(AirflowTaskTimeout), timeout(6):  # the first try
        run_stage("train", run, cfg, "custom_cnn")
    assert last.is_file() and not run.history_path("custom_cnn").exists()
    first = _last_epoch(last)
    assert first >= 1

    with caplog.at_level(logging.INFO, logger="medpipe"), pytest.raises(AirflowTaskTimeout), timeout(8):  # the retry
        run_stage("train", run, cfg, "custom_cnn")
    assert f"resuming custom_cnn from epoch {first}" in caplog.text
    assert _last_epoch(last) > first
    assert not [p.name for p in last.parent.iterdir() if p.suffix == ".tmp" or p.name.startswith(".")]


PROBE_DAG = """
import time
from datetime import datetime, timedelta

from airflow.sdk import dag, task


@task(execution_timeout=timedelta(seconds=2), retries=0)
def hangs() -> None:
    time.sleep(120)


@dag(dag_id="medpipe_timeout_probe", schedule=None, start_date=datetime(2025, 1, 1), catchup=False)
def medpipe_timeout_probe() -> None:
    hangs()


medpipe_timeout_probe()
"""


def test_airflow_stops_a_task_past_its_execution_timeout(tmp_path: Path) -> None:
    """The mechanism itself, through Airflow's task runner (`dag.test()`): a try past its timeout fails in seconds."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.dagbag import BundleDagBag, sync_bag_to_db

    (tmp_path / "medpipe_timeout_probe.py").write_text(PROBE_DAG)
    # dag.test() runs only serialized DAGs of a configured bundle; register the probe under the test's bundle.
    DagBundlesManager().sync_bundles_to_db()
    bag = BundleDagBag(dag_folder=str(tmp_path), bundle_path=tmp_path, bundle_name="dags-folder")
    assert bag.import_errors == {}
    sync_bag_to_db(bag, "dags-folder", None)
    started = time.monotonic()
    run = bag.dags["medpipe_timeout_probe"].test()
    assert time.monotonic() - started < 90
    [ti] = run.get_task_instances()
    assert str(ti.state) == "failed"
    assert 2 <= ti.duration < 30, ti.duration  # stopped at its timeout, not at the end of its 120 s sleep
