"""Several GPU boxes with Celery, checked statically (no Docker engine here): the head box's compose override
publishes what remote GPU workers connect to, and a GPU box's environment template names every setting
docker/check_env.py demands, refused while a placeholder is left and accepted once they are filled in."""

from __future__ import annotations

import importlib.util
import re
from typing import Any

import yaml

from medpipe_testdata import REPO_ROOT

DOCKER = REPO_ROOT / "docker"


def _check_env() -> Any:
    spec = importlib.util.spec_from_file_location("medpipe_check_env", DOCKER / "check_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _gpu_box_env() -> dict[str, str]:
    lines = (DOCKER / "gpu-box.env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def test_the_head_override_publishes_postgres_redis_and_the_minio_api() -> None:
    head = yaml.safe_load((DOCKER / "compose.head.yaml").read_text())["services"]
    base = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    published = {name: [p.rsplit(":", 1)[-1] for p in service["ports"]] for name, service in head.items()}
    assert published == {"postgres": ["5432"], "redis": ["6379"], "minio": ["9000"]}
    assert set(head) <= set(base)


def test_a_gpu_box_env_has_every_setting_the_worker_needs_and_only_placeholders() -> None:
    check_env = _check_env()
    env = _gpu_box_env()
    assert set(check_env.SECRETS) | set(check_env.URL_PASSWORDS) <= set(env)
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor" and env["MEDPIPE_GPU_QUEUE"] == "gpu"
    hosts = {re.sub(r".*@|.*//", "", v).split(":")[0] for k, v in env.items() if "://" in v and "s3://" not in v}
    assert hosts == {"medpipe-head"}
    # The same base settings as the head's services (compose.yaml's x-airflow-common), so tasks behave the same.
    common = yaml.safe_load((DOCKER / "compose.yaml").read_text())["x-airflow-common"]["environment"]
    for name in ("MEDPIPE_WORK_ROOT", "MEDPIPE_DATA_ROOT", "MEDPIPE_SCORE_INBOX", "MEDPIPE_GPU_QUEUE"):
        assert env[name] == common[name], name
    refused = check_env.problems(env)
    assert len(refused) == len(check_env.SECRETS) + len(check_env.URL_PASSWORDS), refused
    from cryptography.fernet import Fernet

    filled = {k: v.replace("change-me", "s3cr3t-Value") for k, v in env.items()}
    filled["AIRFLOW__CORE__FERNET_KEY"] = Fernet.generate_key().decode()
    assert check_env.problems(filled) == []
