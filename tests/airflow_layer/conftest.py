"""Real Airflow for the tests of dags/ and plugins/: AIRFLOW_HOME in a temp folder, the repo's dags/ and plugins/, a migrated SQLite DB.

Airflow reads its configuration when it is first imported, so the environment is set when this conftest is
imported, before any test module imports airflow. `airflow db migrate` and the `gpu` pool run once per session
through the real CLI.

Why this folder is not called tests/airflow: the test folders are packages named after their folder (tests/ itself
is not one), and a package named `airflow` would shadow Airflow itself for the whole session.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="medpipe-airflow-test-"))
atexit.register(shutil.rmtree, AIRFLOW_HOME, True)  # also when every test here was deselected

if "airflow.configuration" in sys.modules:  # too late: Airflow already read another AIRFLOW_HOME
    raise RuntimeError("tests/airflow_layer/conftest.py must be imported before airflow; something imported it earlier")

os.environ.update({
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(REPO_ROOT / "dags"),
    "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO_ROOT / "plugins"),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
    # The API app signs its tokens with this; a fresh random one per session (nothing to keep secret here).
    "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(64),
})
# Deployment settings of the developer's shell must not leak into the tests: every test passes its own.
for _name in [n for n in os.environ if n.startswith("MEDPIPE_")]:
    del os.environ[_name]

GPU_POOL_SLOTS = 2


def airflow_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """Run the real `airflow` CLI of this venv against the test AIRFLOW_HOME; raises with its output on failure."""
    proc = subprocess.run([sys.executable, "-m", "airflow", *args], env=os.environ.copy(), capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"airflow {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session", autouse=True)
def airflow_db() -> Path:
    """A migrated metadata DB and the `gpu` pool the training tasks need."""
    import airflow  # noqa: F401  (initialising Airflow puts plugins/ on sys.path: tests import medpipe_plugin)

    airflow_cli("db", "migrate")
    airflow_cli("pools", "set", "gpu", str(GPU_POOL_SLOTS), "GPU slots (one per GPU)")
    return AIRFLOW_HOME


@pytest.fixture(scope="session")
def admin_password(airflow_db: Path) -> str:
    """Password of the simple auth manager's `admin` (generated into AIRFLOW_HOME when an API app starts)."""
    passwords = json.loads((airflow_db / "simple_auth_manager_passwords.json.generated").read_text())
    return passwords["admin"]
