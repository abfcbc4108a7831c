"""The KubernetesExecutor path, tested on the object (there is no cluster here): the retraining DAG built with the
pod overrides on gives its train task the pod a GPU node needs, every other task the work volume only, and with
them off nothing changes. Also the Helm values for the official chart, and the image entrypoint they rely on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from medpipe_testdata import REPO_ROOT

VALUES = REPO_ROOT / "deploy" / "k8s" / "values.yaml"
WORK_ROOT = "/srv/medpipe/work"
K8S_ENV = {
    "MEDPIPE_K8S": "1",
    "MEDPIPE_WORK_ROOT": WORK_ROOT,
    "MEDPIPE_K8S_WORK_PVC": "medpipe-work",
    "MEDPIPE_K8S_GPU_NODE_SELECTOR": json.dumps({"nvidia.com/gpu.present": "true", "pool": "h200"}),
    "MEDPIPE_K8S_GPU_TOLERATIONS": json.dumps([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                                               {"key": "dedicated", "operator": "Equal", "value": "gpu",
                                                "effect": "NoExecute", "tolerationSeconds": 60}]),
    "MEDPIPE_K8S_GPU_CPU": "6",
    "MEDPIPE_K8S_GPU_MEMORY": "48Gi",
}


def _dags() -> Any:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO_ROOT / "dags"))
    assert bag.import_errors == {}
    return bag


def _pod(task: Any) -> dict[str, Any]:
    """The task's pod_override as the Kubernetes API receives it (camelCase keys, no None fields)."""
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(task.executor_config["pod_override"])


@pytest.fixture
def k8s_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in K8S_ENV.items():
        monkeypatch.setenv(name, value)


def test_the_train_task_gets_gpus_gpu_nodes_and_the_work_volume(k8s_env: None) -> None:
    retrain = _dags().get_dag("medpipe_retrain")
    pod = _pod(retrain.get_task("train_resnet18"))
    [container] = pod["spec"]["containers"]
    assert container["name"] == "base"  # the KubernetesExecutor merges into, and runs, the container of this name
    assert container["resources"] == {"limits": {"nvidia.com/gpu": "1"}, "requests": {"cpu": "6", "memory": "48Gi"}}
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.present": "true", "pool": "h200"}
    assert pod["spec"]["tolerations"] == json.loads(K8S_ENV["MEDPIPE_K8S_GPU_TOLERATIONS"])
    assert pod["spec"]["volumes"] == [
        {"name": "medpipe-work", "persistentVolumeClaim": {"claimName": "medpipe-work"}},
        {"name": "dshm", "emptyDir": {"medium": "Memory"}},
    ]
    assert container["volumeMounts"] == [{"name": "medpipe-work", "mountPath": WORK_ROOT},
                                         {"name": "dshm", "mountPath": "/dev/shm"}]
    assert "image" not in container and "args" not in container  # those stay the template's / the executor's


def test_cpu_tasks_get_the_work_volume_and_no_gpu(k8s_env: None) -> None:
    dags = _dags()
    retrain = dags.get_dag("medpipe_retrain")
    gpu_tasks = {t.task_id for t in retrain.tasks if t.pool == "gpu"}
    assert gpu_tasks == {"train_custom_cnn", "train_resnet18"}
    for task in retrain.tasks:
        if task.task_id in gpu_tasks:
            continue
        pod = _pod(task)
        [container] = pod["spec"]["containers"]
        assert container == {"name": "base", "volumeMounts": [{"name": "medpipe-work", "mountPath": WORK_ROOT}]}, task
        assert set(pod["spec"]) == {"containers", "volumes"}, task.task_id  # no node selector, no tolerations
    # The scoring DAGs' GPU tasks are GPU pods too.
    for dag_id, task_id in (("medpipe_score", "score"), ("medpipe_inbox", "score_batch")):
        pod = _pod(dags.get_dag(dag_id).get_task(task_id))
        assert pod["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpu": "1"}, dag_id


def test_the_pod_override_survives_dag_serialization(k8s_env: None) -> None:
    """The scheduler sees the serialized DAG, not the Python object: the override must make the round trip."""
    from airflow.serialization.serialized_objects import DagSerialization

    retrain = _dags().get_dag("medpipe_retrain")
    restored = DagSerialization.from_dict(DagSerialization.to_dict(retrain))
    assert _pod(restored.get_task("train_resnet18")) == _pod(retrain.get_task("train_resnet18"))


def test_a_task_with_more_gpu_slots_asks_for_that_many_gpus_and_resources(k8s_env: None) -> None:
    from kubernetes.client import ApiClient

    from medpipe_plugin import k8s

    pod = ApiClient().sanitize_for_serialization(k8s.executor_config(gpus=2)["pod_override"])
    assert pod["spec"]["containers"][0]["resources"] == {"limits": {"nvidia.com/gpu": "2"},
                                                         "requests": {"cpu": "12", "memory": "96Gi"}}


def test_with_the_switch_off_no_task_has_an_executor_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in K8S_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MEDPIPE_K8S", "0")
    dags = _dags()
    for dag_id in ("medpipe_retrain", "medpipe_score", "medpipe_inbox"):
        assert all(not t.executor_config for t in dags.get_dag(dag_id).tasks), dag_id
    monkeypatch.delenv("MEDPIPE_K8S")  # unset: follows the executor, here the test's LocalExecutor
    assert all(not t.executor_config for t in _dags().get_dag("medpipe_retrain").tasks)


@pytest.mark.parametrize(("name", "value", "message"), [
    ("MEDPIPE_K8S", "maybe", "MEDPIPE_K8S='maybe': expected 1 or 0"),
    ("MEDPIPE_K8S_WORK_PVC", "", "MEDPIPE_K8S_WORK_PVC is not set"),
    ("MEDPIPE_K8S_GPU_NODE_SELECTOR", "gpu=true", "MEDPIPE_K8S_GPU_NODE_SELECTOR='gpu=true' is not JSON"),
    ("MEDPIPE_K8S_GPU_NODE_SELECTOR", '{"gpu": true}', "MEDPIPE_K8S_GPU_NODE_SELECTOR: label values must be strings"),
    ("MEDPIPE_K8S_GPU_TOLERATIONS", '{"key": "x"}',
     "MEDPIPE_K8S_GPU_TOLERATIONS='{\"key\": \"x\"}': expected a JSON list"),
    ("MEDPIPE_K8S_GPU_TOLERATIONS", '[{"taint": "x"}]',
     "MEDPIPE_K8S_GPU_TOLERATIONS: {'taint': 'x'} is not a toleration"),
    ("MEDPIPE_K8S_GPU_MEMORY", "32 GB", "MEDPIPE_K8S_GPU_MEMORY='32 GB': expected a Kubernetes quantity"),
])
def test_a_bad_setting_is_an_error_naming_it(k8s_env: None, monkeypatch: pytest.MonkeyPatch, name: str, value: str,
                                             message: str) -> None:
    from medpipe_plugin import k8s

    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError) as info:
        k8s.executor_config(gpus=1)
    assert str(info.value).startswith(message), str(info.value)


def test_the_helm_values_run_the_image_with_the_kubernetes_executor_and_the_medpipe_settings() -> None:
    values = yaml.safe_load(VALUES.read_text())
    assert values["executor"] == "KubernetesExecutor"
    assert set(values["images"]["airflow"]) >= {"repository", "tag"}
    env = {item["name"]: item["value"] for item in values["env"]}
    assert env["MEDPIPE_K8S"] == "1" and env["MEDPIPE_K8S_WORK_PVC"] and env["MEDPIPE_WORK_ROOT"].startswith("/")
    json.loads(env["MEDPIPE_K8S_GPU_NODE_SELECTOR"]) and json.loads(env["MEDPIPE_K8S_GPU_TOLERATIONS"])
    assert env["MEDPIPE_STORE_URI"].startswith("s3://") and env["MEDPIPE_AWS_CONN_ID"] == "medpipe_s3"
    # The S3 connection comes from a Kubernetes Secret, never from this file.
    [conn] = [s for s in values["secret"] if s["envName"] == "AIRFLOW_CONN_MEDPIPE_S3"]
    assert set(conn) == {"envName", "secretName", "secretKey"}
    assert not {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AIRFLOW_CONN_MEDPIPE_S3"} & set(env)
    # The migration job also creates the pool the GPU tasks wait in.
    job = " ".join(values["migrateDatabaseJob"]["args"])
    assert "airflow db migrate" in job and "airflow pools set gpu" in job


def test_the_entrypoint_runs_the_charts_and_the_executors_commands_as_given(tmp_path: Path) -> None:
    """The chart starts components as `bash -c "exec airflow ..."` and the KubernetesExecutor runs a task as
    `python -m airflow.sdk.execution_time.execute_workload ...`: neither may become `airflow bash` or
    `airflow python`."""
    import shutil
    import subprocess

    if not shutil.which("sh"):
        pytest.skip("no sh")
    script = (REPO_ROOT / "docker" / "entrypoint.sh").read_text().replace("/opt/medpipe/docker/check_env.py",
                                                                          str(tmp_path / "check_env.py"))
    (tmp_path / "check_env.py").write_text("print('checked')\n")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for tool in ("airflow", "python"):
        (fake_bin / tool).write_text(f"#!/bin/sh\necho {tool} \"$@\"\n")
        (fake_bin / tool).chmod(0o755)
    entry = tmp_path / "entrypoint.sh"
    entry.write_text(script)
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin"}

    def run(*args: str) -> str:
        return subprocess.run(["sh", str(entry), *args], env=env, capture_output=True, text=True, timeout=30).stdout

    assert run("scheduler") == "python " + str(tmp_path / "check_env.py") + "\nairflow scheduler\n"
    assert run("bash", "-c", "echo chart") == "chart\n"
    assert run("python", "-m", "airflow.sdk.execution_time.execute_workload") == (
        "python -m airflow.sdk.execution_time.execute_workload\n")
