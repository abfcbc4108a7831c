"""KubernetesExecutor pod overrides for the medpipe tasks: GPUs, GPU nodes, and the shared work volume.

Under the KubernetesExecutor every task runs in its own pod, made from the pod template (the official Helm
chart's, or `[kubernetes_executor] pod_template_file`) merged with the task's
`executor_config={"pod_override": V1Pod}`. What medpipe adds there:

- every task: the work volume (a ReadWriteMany PVC, `MEDPIPE_K8S_WORK_PVC`) at `MEDPIPE_WORK_ROOT`, because each
  task reads what the one before wrote there (a pod's own disk vanishes with the pod);
- GPU tasks (training, evaluation, ensemble, scoring; pool `gpu`): `nvidia.com/gpu: N` (N = the task's GPU pool
  slots) as a limit, CPU and memory requests, a node selector and tolerations for the GPU nodes, and a memory
  /dev/shm (NCCL and torch's shared-memory tensors need more than the container runtime's 64 MiB default).

The container is named "base": the executor merges the override into the template's container of that name and
runs the task there. Built only when the executor is Kubernetes (first of `[core] executor`) or MEDPIPE_K8S=1;
MEDPIPE_K8S=0 turns it off. Local and Celery deployments get no executor_config at all.

| variable                      | meaning                                           | default                            |
|-------------------------------|---------------------------------------------------|------------------------------------|
| MEDPIPE_K8S                   | 1 / 0: build pod overrides or not                 | on under the KubernetesExecutor    |
| MEDPIPE_K8S_WORK_PVC          | PVC (ReadWriteMany) mounted at MEDPIPE_WORK_ROOT  | none: required when on             |
| MEDPIPE_K8S_GPU_NODE_SELECTOR | JSON object: node labels of the GPU nodes         | {}                                 |
| MEDPIPE_K8S_GPU_TOLERATIONS   | JSON list of {key, operator, value, effect}       | tolerate nvidia.com/gpu:NoSchedule |
| MEDPIPE_K8S_GPU_CPU           | CPU request of a GPU task, per GPU                | 4                                  |
| MEDPIPE_K8S_GPU_MEMORY        | memory request of a GPU task, per GPU             | 32Gi                               |
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from medpipe_plugin import settings

__all__ = ["enabled", "executor_config", "gpu_node_selector", "gpu_tolerations", "pod_placement", "work_pvc"]

BASE_CONTAINER = "base"  # the name the KubernetesExecutor looks for in the template and the override
WORK_VOLUME = "medpipe-work"
_QUANTITY = re.compile(r"\d+(\.\d+)?(m|k|M|G|T|Ki|Mi|Gi|Ti)?")  # a Kubernetes resource quantity, as we use them
_QUANTITY_SPLIT = re.compile(r"(\d+(?:\.\d+)?)(.*)")
_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}
_DEFAULT_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def enabled() -> bool:
    """MEDPIPE_K8S=1/0 if set, else whether the (default) executor is the KubernetesExecutor."""
    switch = os.environ.get("MEDPIPE_K8S", "").strip().lower()
    if switch in ("1", "true", "yes"):
        return True
    if switch in ("0", "false", "no"):
        return False
    if switch:
        raise ValueError(f"MEDPIPE_K8S={switch!r}: expected 1 or 0 (or unset: on under the KubernetesExecutor)")
    from airflow.sdk import conf

    executors = conf.get("core", "executor", fallback="") or ""
    first = executors.split(",")[0].strip()  # Airflow 3: a list; the first is the default of every task
    return first.split(".")[-1].split(":")[-1] == "KubernetesExecutor"


def _json_env(name: str, default: Any, kind: type) -> Any:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name}={raw!r} is not JSON: {exc.msg}") from exc
    if not isinstance(value, kind):
        raise ValueError(f"{name}={raw!r}: expected a JSON {'object' if kind is dict else 'list'}")
    return value


def gpu_node_selector() -> dict[str, str]:
    """Node labels a GPU task's pod must match (MEDPIPE_K8S_GPU_NODE_SELECTOR), e.g.
    {"nvidia.com/gpu.present": "true"}."""
    value = _json_env("MEDPIPE_K8S_GPU_NODE_SELECTOR", {}, dict)
    bad = {k: v for k, v in value.items() if not isinstance(v, str)}
    if bad:
        raise ValueError(f"MEDPIPE_K8S_GPU_NODE_SELECTOR: label values must be strings, got {bad}")
    return value


def gpu_tolerations() -> list[dict[str, Any]]:
    """Tolerations of a GPU task's pod (MEDPIPE_K8S_GPU_TOLERATIONS); default: the usual nvidia.com/gpu taint."""
    value = _json_env("MEDPIPE_K8S_GPU_TOLERATIONS", _DEFAULT_TOLERATIONS, list)
    for item in value:
        if not isinstance(item, dict) or not set(item) <= _TOLERATION_KEYS:
            raise ValueError(f"MEDPIPE_K8S_GPU_TOLERATIONS: {item!r} is not a toleration; allowed keys: "
                             f"{sorted(_TOLERATION_KEYS)}")
    return value


def work_pvc() -> str:
    """The PersistentVolumeClaim holding MEDPIPE_WORK_ROOT; without one, pods would not see each other's files."""
    name = os.environ.get("MEDPIPE_K8S_WORK_PVC", "").strip()
    if not name:
        raise ValueError("MEDPIPE_K8S_WORK_PVC is not set: under the KubernetesExecutor every task runs in its own "
                         "pod, and they share the run folder through a ReadWriteMany PVC mounted at MEDPIPE_WORK_ROOT")
    return name


def _quantity(name: str, default: str, gpus: int) -> str:
    """The env quantity for one GPU, times the task's GPUs (so a 2-GPU task asks for twice the CPU and memory)."""
    value = os.environ.get(name, "").strip() or default
    if not _QUANTITY.fullmatch(value):
        raise ValueError(f"{name}={value!r}: expected a Kubernetes quantity such as 4, 500m, 32Gi")
    number, unit = _QUANTITY_SPLIT.fullmatch(value).groups()  # type: ignore[union-attr]
    total = float(number) * gpus
    return f"{int(total) if total.is_integer() else total}{unit}"


def executor_config(gpus: int = 0) -> dict[str, Any] | None:
    """{"pod_override": V1Pod} for a task with `gpus` GPUs (0: a CPU task), or None when pod overrides are off."""
    if not enabled():
        return None
    from kubernetes.client import models as k8s

    if gpus < 0:
        raise ValueError(f"gpus={gpus}: a task has 0 or more GPUs")
    volumes = [k8s.V1Volume(name=WORK_VOLUME,
                            persistent_volume_claim=k8s.V1PersistentVolumeClaimVolumeSource(claim_name=work_pvc()))]
    mounts = [k8s.V1VolumeMount(name=WORK_VOLUME, mount_path=settings.work_root())]
    container = k8s.V1Container(name=BASE_CONTAINER, volume_mounts=mounts)
    spec = k8s.V1PodSpec(containers=[container], volumes=volumes)
    if gpus:
        container.resources = k8s.V1ResourceRequirements(
            requests={"cpu": _quantity("MEDPIPE_K8S_GPU_CPU", "4", gpus),
                      "memory": _quantity("MEDPIPE_K8S_GPU_MEMORY", "32Gi", gpus)},
            limits={"nvidia.com/gpu": str(gpus)})  # extended resources: the limit is the request
        volumes.append(k8s.V1Volume(name="dshm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory")))
        mounts.append(k8s.V1VolumeMount(name="dshm", mount_path="/dev/shm"))
        spec.node_selector = gpu_node_selector() or None
        spec.tolerations = [k8s.V1Toleration(**{_snake(k): v for k, v in t.items()}) for t in gpu_tolerations()]
    return {"pod_override": k8s.V1Pod(spec=spec)}


def pod_placement(gpus: int = 0) -> dict[str, Any]:
    """Operator arguments: {"executor_config": ...} when pod overrides are on, else {} (nothing changes)."""
    config = executor_config(gpus)
    return {"executor_config": config} if config is not None else {}


def _snake(key: str) -> str:
    """tolerationSeconds -> toleration_seconds (the client's attribute names)."""
    return re.sub(r"(?<!^)([A-Z])", r"_\1", key).lower()
