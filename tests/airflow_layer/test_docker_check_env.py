"""docker/check_env.py and docker/minio/create-bucket.sh, run for real: a copied .env.example must not start.

compose's `${VAR:?}` guards refuse only unset or empty variables, so the containers check the values they got.
The environments here are built from compose.yaml's x-airflow-common environment interpolated with a .env, the
way compose would, so the script is tested against exactly the variables compose hands the containers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKER = REPO_ROOT / "docker"
CHECK = DOCKER / "check_env.py"
_VAR = re.compile(r"\$\$|\$\{([A-Z0-9_]+)(?::?([-?])([^}]*))?\}")
VALID_FERNET = "Jm3XgqZCtEGTgE1hvXhZ5oakWqTp5KOGYl-yIxkGH2w="  # 32 url-safe base64 bytes (not a deployed key)


def _env_example() -> dict[str, str]:
    pairs = [line.split("=", 1) for line in (DOCKER / ".env.example").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return {k.strip(): v.strip() for k, v in pairs}


def _dotenv(**overrides: str) -> dict[str, str]:
    """docker/.env as a careful operator fills it in: every change-me replaced (then the overrides)."""
    env = {k: (f"s3cr3t-{k.lower().replace('_', '-')}" if v == "change-me" else v) for k, v in _env_example().items()}
    env["AIRFLOW_FERNET_KEY"] = VALID_FERNET
    env.update(overrides)
    return env


def _container_env(dotenv: dict[str, str]) -> dict[str, str]:
    """What compose hands an Airflow container: x-airflow-common's environment, interpolated with `dotenv`."""
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())

    def interpolate(value: str) -> str:
        def one(match: re.Match) -> str:
            if match.group(0) == "$$":
                return "$"
            name, kind, default = match.groups()
            value = dotenv.get(name, "")
            if kind == "-" and not value:
                return default
            if kind == "?" and not value:
                raise AssertionError(f"compose would refuse: {name} unset ({default})")
            return value
        return _VAR.sub(one, str(value))

    return {k: interpolate(v) for k, v in compose["x-airflow-common"]["environment"].items()}


def _run(env: dict[str, str]) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return subprocess.run([sys.executable, str(CHECK)], env={**base, **env}, capture_output=True, text=True,
                          timeout=60)


def test_a_filled_in_env_starts() -> None:
    result = _run(_container_env(_dotenv()))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_the_copied_example_is_refused_naming_every_secret() -> None:
    result = _run(_container_env(_env_example()))
    assert result.returncode == 1
    for name in ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY",
                 "AWS_SECRET_ACCESS_KEY", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "AIRFLOW__CELERY__RESULT_BACKEND",
                 "AIRFLOW__CELERY__BROKER_URL"):
        assert name in result.stderr, name
    for source in ("AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY", "MEDPIPE_S3_SECRET_KEY",
                   "POSTGRES_PASSWORD", "REDIS_PASSWORD"):
        assert f"{source} in docker/.env" in result.stderr, source
    assert "s3cr3t" not in result.stderr


@pytest.mark.parametrize("source, variable", [
    ("AIRFLOW_JWT_SECRET", "AIRFLOW__API_AUTH__JWT_SECRET"),
    ("AIRFLOW_API_SECRET_KEY", "AIRFLOW__API__SECRET_KEY"),
    ("MEDPIPE_S3_SECRET_KEY", "AWS_SECRET_ACCESS_KEY"),
    ("AIRFLOW_FERNET_KEY", "AIRFLOW__CORE__FERNET_KEY"),
    ("POSTGRES_PASSWORD", "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"),
    ("REDIS_PASSWORD", "AIRFLOW__CELERY__BROKER_URL"),
])
@pytest.mark.parametrize("placeholder", ["change-me", "CHANGE-ME", " changeme "])
def test_one_placeholder_is_refused_by_name(source: str, variable: str, placeholder: str) -> None:
    result = _run(_container_env(_dotenv(**{source: placeholder})))
    assert result.returncode == 1
    problems = [line for line in result.stderr.splitlines() if line.startswith("medpipe: refusing to start:")]
    assert problems and all(variable in line or source in line for line in problems), result.stderr
    assert any(variable in line and source in line for line in problems)


@pytest.mark.parametrize("variable", ["AIRFLOW__API_AUTH__JWT_SECRET", "AWS_SECRET_ACCESS_KEY",
                                      "AIRFLOW__CORE__FERNET_KEY"])
def test_an_empty_or_missing_secret_is_refused(variable: str) -> None:
    env = _container_env(_dotenv())
    assert _run({**env, variable: ""}).returncode == 1
    env.pop(variable)
    result = _run(env)
    assert result.returncode == 1 and variable in result.stderr


def test_an_empty_url_password_is_refused() -> None:
    env = _container_env(_dotenv())
    env["AIRFLOW__CELERY__BROKER_URL"] = "redis://@redis:6379/0"
    result = _run(env)
    assert result.returncode == 1 and "AIRFLOW__CELERY__BROKER_URL" in result.stderr


@pytest.mark.parametrize("key, why", [
    ("not-a-fernet-key", "44 url-safe base64"),
    (VALID_FERNET[:-2] + "=", "44 url-safe base64"),                       # 31 bytes
    (VALID_FERNET.replace("-", "+"), "44 url-safe base64"),                # standard, not url-safe, alphabet
    ("A" * 44, "44 url-safe base64"),                                      # no padding: not 32 bytes
    (VALID_FERNET + "," + "short", "key 2 of 2"),                          # rotation list with a bad old key
])
def test_an_invalid_fernet_key_is_refused(key: str, why: str) -> None:
    result = _run(_container_env(_dotenv(AIRFLOW_FERNET_KEY=key)))
    assert result.returncode == 1
    assert "AIRFLOW__CORE__FERNET_KEY" in result.stderr and "not a valid Fernet key" in result.stderr
    assert why in result.stderr


def test_fernet_keys_from_cryptography_and_rotation_lists_are_accepted() -> None:
    fernet = pytest.importorskip("cryptography.fernet")
    new, old = fernet.Fernet.generate_key().decode(), fernet.Fernet.generate_key().decode()
    for key in (new, f"{new},{old}"):
        result = _run(_container_env(_dotenv(AIRFLOW_FERNET_KEY=key)))
        assert result.returncode == 0, result.stderr
    fernet.Fernet(VALID_FERNET)  # the test's own constant is a real key


# --- minio-init: the MinIO passwords never reach the Airflow containers, so its script checks them ---

@pytest.fixture()
def fake_mc(tmp_path: Path) -> Path:
    """An `mc` that records its calls and succeeds: create-bucket.sh runs without MinIO."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    mc = bin_dir / "mc"
    mc.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path}/mc.log"\necho medpipe-rw\n')
    mc.chmod(0o755)
    return bin_dir


def _create_bucket(bin_dir: Path, **env: str) -> subprocess.CompletedProcess:
    base = {"MINIO_ROOT_USER": "minio-admin", "MINIO_ROOT_PASSWORD": "root-s3cr3t", "MINIO_BUCKET": "medpipe",
            "MEDPIPE_S3_ACCESS_KEY": "medpipe", "MEDPIPE_S3_SECRET_KEY": "user-s3cr3t",
            "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    script = DOCKER / "minio" / "create-bucket.sh"
    return subprocess.run(["sh", str(script)], env={**base, **env}, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(not shutil.which("sh"), reason="needs a POSIX sh")
@pytest.mark.parametrize("variable", ["MINIO_ROOT_PASSWORD", "MEDPIPE_S3_SECRET_KEY"])
def test_minio_init_refuses_placeholders_before_touching_minio(fake_mc: Path, variable: str) -> None:
    result = _create_bucket(fake_mc, **{variable: "change-me"})
    assert result.returncode == 1 and variable in result.stderr
    assert not (fake_mc.parent / "mc.log").exists(), "refused before any mc call"


@pytest.mark.skipif(not shutil.which("sh"), reason="needs a POSIX sh")
def test_minio_init_runs_with_real_secrets(fake_mc: Path) -> None:
    result = _create_bucket(fake_mc)
    assert result.returncode == 0, result.stderr
    assert "mc mb" not in result.stderr and "mb --ignore-existing local/medpipe" in (fake_mc.parent / "mc.log").read_text()
