"""DAG integrity: the DAG files parse without errors and have the structure the pipeline relies on."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DAGS_FOLDER = REPO_ROOT / "dags"
RETRAIN_EDGES = {
    ("start", "validate"), ("validate", "cache"),
    ("cache", "train_custom_cnn"), ("cache", "train_resnet18"),
    ("train_custom_cnn", "evaluate_custom_cnn"), ("train_resnet18", "evaluate_resnet18"),
    ("evaluate_custom_cnn", "ensemble"), ("evaluate_resnet18", "ensemble"), ("ensemble", "summarize"),
    ("summarize", "gate"),
    ("gate", "gate_passed"), ("gate_passed", "export"), ("export", "publish"), ("publish", "record"),
}
MODELS = ("custom_cnn", "resnet18")


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS_FOLDER))


def test_no_import_errors_and_both_dags_present(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert {"medpipe_retrain", "medpipe_score", "medpipe_inbox"} <= set(dagbag.dag_ids)


@pytest.mark.parametrize("dag_id", ["medpipe_retrain", "medpipe_score", "medpipe_inbox"])
def test_every_dag_has_docs_tags_no_catchup_and_retrying_tasks(dagbag, dag_id: str) -> None:
    dag = dagbag.dags[dag_id]
    assert dag.doc_md and dag_id in dag.doc_md
    assert "medpipe" in dag.tags
    assert dag.catchup is False
    assert dag.fileloc.endswith(f"{dag_id}.py"), "a DAG file is named after its dag_id"
    for t in dag.tasks:
        assert t.retries >= 2, t.task_id
        assert t.retry_exponential_backoff > 0 and t.max_retry_delay <= timedelta(minutes=30), t.task_id


def test_retrain_dependencies(dagbag) -> None:
    dag = dagbag.dags["medpipe_retrain"]
    edges = {(up, t.task_id) for t in dag.tasks for up in t.upstream_task_ids}
    assert RETRAIN_EDGES <= edges, RETRAIN_EDGES - edges
    # The two models train side by side: neither waits for the other.
    assert "train_resnet18" not in dag.get_task("train_custom_cnn").get_flat_relative_ids(upstream=True)
    assert "train_custom_cnn" not in dag.get_task("train_resnet18").get_flat_relative_ids(upstream=True)
    assert dag.get_task("gate_passed").task_type in ("_ShortCircuitDecoratedOperator", "ShortCircuitOperator")
    # A rejected challenger skips export and publish, but its run is still recorded.
    assert dag.get_task("gate_passed").ignore_downstream_trigger_rules is False
    assert dag.get_task("record").trigger_rule == "none_failed"
    assert dag.schedule == "@weekly" and dag.max_active_runs == 1


def test_retrain_has_one_task_per_medpipe_stage_in_stage_order(dagbag) -> None:
    """The DAG is built from medpipe.stages.STAGES, as `medpipe run` is: the same stages, in the same order."""
    from medpipe.stages import stage_task_ids

    dag = dagbag.dags["medpipe_retrain"]
    plumbing = {"gate_passed"}  # Airflow's short-circuit between the gate's decision and export; not a stage
    ordered = [t.task_id for t in dag.topological_sort() if t.task_id not in plumbing]
    assert sorted(ordered) == sorted(stage_task_ids(MODELS))
    position = {task_id: i for i, task_id in enumerate(ordered)}
    expected = stage_task_ids(MODELS)
    for earlier, later in zip(expected, expected[1:]):  # per-model chains may interleave; stages may not
        if earlier.split("_")[0] != later.split("_")[0]:
            assert position[earlier] < position[later] or earlier.startswith("train_"), (earlier, later)


def test_gpu_tasks_use_the_gpu_pool_and_queue(dagbag) -> None:
    retrain, score, inbox = (dagbag.dags[d] for d in ("medpipe_retrain", "medpipe_score", "medpipe_inbox"))
    gpu_tasks = [retrain.get_task("train_custom_cnn"), retrain.get_task("train_resnet18"), score.get_task("score"),
                 inbox.get_task("score_batch")]
    for t in gpu_tasks:
        assert (t.pool, t.pool_slots, t.queue) == ("gpu", 1, "default"), t.task_id
    cpu_tasks = [t for t in retrain.tasks + score.tasks + inbox.tasks if t not in gpu_tasks]
    assert all(t.pool != "gpu" for t in cpu_tasks)


def test_publish_updates_the_champion_asset_that_schedules_scoring(dagbag) -> None:
    publish = dagbag.dags["medpipe_retrain"].get_task("publish")
    assert [a.uri for a in publish.outlets] == ["medpipe://champion/"]
    assert [link.name for link in publish.operator_extra_links] == ["Model page"]
    score = dagbag.dags["medpipe_score"]
    assert [a.uri for a in score.schedule] == ["medpipe://champion/"]


def test_params_have_working_defaults(dagbag) -> None:
    params = dagbag.dags["medpipe_retrain"].params
    assert Path(params["data_root"]) == REPO_ROOT / "sample_data" / "mammo-ddsm-sample"
    assert Path(params["config"]) == REPO_ROOT / "configs" / "sample.yaml"
    assert Path(params["data_root"]).is_dir() and Path(params["config"]).is_file()
    assert params["overrides"] == []
    assert Path(dagbag.dags["medpipe_score"].params["input"]).is_dir()
    inbox = dagbag.dags["medpipe_inbox"]  # no MEDPIPE_INBOX here: manual runs only, the inbox given as a param
    assert inbox.params["inbox"] == "" and inbox.params["rescore"] is False and inbox.schedule is None


def test_schedule_and_queue_come_from_the_environment(tmp_path: Path) -> None:
    """A fresh interpreter with the deployment variables set parses them into the DAG."""
    code = (
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"b = DagBag(dag_folder={str(DAGS_FOLDER)!r})\n"
        "assert not b.import_errors, b.import_errors\n"
        "d = b.get_dag('medpipe_retrain')\n"
        "print(d.schedule, d.get_task('train_resnet18').queue, d.get_task('train_resnet18').pool, "
        "d.params['data_root'])\n"
    )
    env = {**__import__("os").environ, "MEDPIPE_RETRAIN_SCHEDULE": "0 3 * * 1", "MEDPIPE_GPU_QUEUE": "gpu",
           "MEDPIPE_GPU_POOL": "a100", "MEDPIPE_DATA_ROOT": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == f"0 3 * * 1 gpu a100 {tmp_path}"


TRAIN_TASKS = {f"train_{model}" for model in MODELS}


@pytest.mark.parametrize("dag_id", ["medpipe_retrain", "medpipe_score", "medpipe_inbox"])
def test_every_task_and_run_has_a_timeout(dagbag, dag_id: str) -> None:
    """No task may hang forever on its pool slot: training gets 12 h a try, every other task 2 h, a run 48 h."""
    dag = dagbag.dags[dag_id]
    assert dag.dagrun_timeout == timedelta(hours=48)
    for t in dag.tasks:
        expected = timedelta(hours=12) if t.task_id in TRAIN_TASKS else timedelta(hours=2)
        assert t.execution_timeout == expected, t.task_id
    assert TRAIN_TASKS <= set(dag.task_ids) or dag_id != "medpipe_retrain"


def _parse_in_subprocess(env: dict[str, str], code: str) -> subprocess.CompletedProcess:
    """Parse the DAG folder in a fresh interpreter with `env` added to this one's environment, then run `code`."""
    prelude = (
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"b = DagBag(dag_folder={str(DAGS_FOLDER)!r})\n"
    )
    return subprocess.run([sys.executable, "-c", prelude + code], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=120)


def test_timeouts_come_from_the_environment() -> None:
    code = (
        "assert not b.import_errors, b.import_errors\n"
        "r, s = b.get_dag('medpipe_retrain'), b.get_dag('medpipe_score')\n"
        "m = lambda td: int(td.total_seconds() // 60)\n"
        "print(m(r.get_task('train_resnet18').execution_timeout), m(r.get_task('validate').execution_timeout),"
        " m(r.get_task('publish').execution_timeout), m(s.get_task('score').execution_timeout),"
        " m(r.dagrun_timeout), m(s.dagrun_timeout))\n"
    )
    env = {"MEDPIPE_TRAIN_TIMEOUT_MIN": "90", "MEDPIPE_TASK_TIMEOUT_MIN": "15", "MEDPIPE_DAGRUN_TIMEOUT_MIN": "300"}
    out = _parse_in_subprocess(env, code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "90 15 15 15 300 300"


@pytest.mark.parametrize(("env", "message"), [
    ({"MEDPIPE_TRAIN_TIMEOUT_MIN": "12h"}, "MEDPIPE_TRAIN_TIMEOUT_MIN='12h': expected a whole number of minutes"),
    ({"MEDPIPE_TASK_TIMEOUT_MIN": "0"}, "MEDPIPE_TASK_TIMEOUT_MIN='0': expected a whole number of minutes from 1"),
    ({"MEDPIPE_DAGRUN_TIMEOUT_MIN": "-5"}, "MEDPIPE_DAGRUN_TIMEOUT_MIN='-5'"),
    ({"MEDPIPE_TRAIN_TIMEOUT_MIN": "99999999"}, "MEDPIPE_TRAIN_TIMEOUT_MIN='99999999'"),
    ({"MEDPIPE_DAGRUN_TIMEOUT_MIN": "60"}, "MEDPIPE_DAGRUN_TIMEOUT_MIN=60 is shorter than the longest task timeout"),
    ({"MEDPIPE_TASK_RETRIES": "two"}, "MEDPIPE_TASK_RETRIES='two': expected a whole number from 0"),
])
def test_bad_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str) -> None:
    from medpipe_plugin import settings

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=re.escape(message)):
        settings.dagrun_timeout()  # reads all three timeouts
        settings.task_retries()


def test_a_bad_timeout_is_an_import_error_of_every_dag() -> None:
    """A bad value breaks every DAG file at parse time (shown in the UI), with the message naming the variable."""
    code = "print(' | '.join(e.strip().splitlines()[-1] for e in b.import_errors.values()))\n"
    out = _parse_in_subprocess({"MEDPIPE_TRAIN_TIMEOUT_MIN": "12h"}, code)
    assert out.returncode == 0, out.stderr
    errors = out.stdout.strip().splitlines()[-1]
    assert errors.count("ValueError: MEDPIPE_TRAIN_TIMEOUT_MIN='12h': expected a whole number of minutes") == 3, errors


def _task_bodies(path: Path) -> list[ast.FunctionDef]:
    tree = ast.parse(path.read_text())
    return [n for n in tree.body if isinstance(n, ast.FunctionDef)
            and any("task" in ast.unparse(d) for d in n.decorator_list)]


@pytest.mark.parametrize("name", ["medpipe_retrain.py", "medpipe_score.py", "medpipe_inbox.py"])
def test_dag_files_import_medpipe_only_inside_tasks(name: str) -> None:
    """Parsing a DAG file must stay cheap: at module level only the stage list and the model names (medpipe.stages
    and medpipe.config_training, which import no torch: checked below), no other medpipe module and no torch."""
    tree = ast.parse((DAGS_FOLDER / name).read_text())
    top_imports = [ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    allowed = {"from medpipe.stages import STAGES", "from medpipe.config_training import MODEL_NAMES"}
    assert not [i for i in top_imports if i not in allowed and ("medpipe." in i.replace("medpipe_plugin", "")
                                                             or "torch" in i)]
    assert _task_bodies(DAGS_FOLDER / name) or name == "medpipe_retrain.py", "no @task functions found"


def test_the_stage_list_imports_no_torch() -> None:
    code = "import sys, medpipe.stages; heavy = {'torch', 'onnx', 'onnxruntime', 'sklearn'} & set(sys.modules); " \
           "print(sorted(heavy)); sys.exit(1 if heavy else 0)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_inbox_is_polled_when_one_is_set(tmp_path: Path) -> None:
    code = "d = b.get_dag('medpipe_inbox')\nprint(d.schedule, d.params['inbox'])\n"
    out = _parse_in_subprocess({"MEDPIPE_INBOX": str(tmp_path), "MEDPIPE_INBOX_POLL_MIN": "5"}, code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == f"0:05:00 {tmp_path}"


def test_training_on_several_gpus_holds_as_many_pool_slots(dagbag) -> None:
    """$MEDPIPE_GPUS_PER_MODEL=2: each train task takes 2 `gpu` slots and asks its stage for 2 GPUs (the stage
    then leases them and launches torchrun: tests/test_distributed.py checks that command); the default is 1."""
    for model in MODELS:
        task = dagbag.dags["medpipe_retrain"].get_task(f"train_{model}")
        assert task.pool_slots == 1 and "gpus" not in task.op_kwargs
    code = (
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"b = DagBag(dag_folder={str(DAGS_FOLDER)!r})\n"
        "assert not b.import_errors, b.import_errors\n"
        "d = b.get_dag('medpipe_retrain')\n"
        "for m in ('custom_cnn', 'resnet18'):\n"
        "    t = d.get_task('train_' + m)\n"
        "    print(t.pool, t.pool_slots, list(t.op_args), t.op_kwargs)\n"
        "print(d.get_task('evaluate_resnet18').pool_slots)\n"
    )
    env = {**os.environ, "MEDPIPE_GPUS_PER_MODEL": "2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-3:] == [
        "gpu 2 ['train', 'custom_cnn'] {'gpus': 2}", "gpu 2 ['train', 'resnet18'] {'gpus': 2}", "1"]
    env["MEDPIPE_GPUS_PER_MODEL"] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "MEDPIPE_GPUS_PER_MODEL='0'" in out.stderr + out.stdout
