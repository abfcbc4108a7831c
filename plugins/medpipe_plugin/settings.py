"""Deployment settings shared by the medpipe DAGs and the Models page, read from the environment.

Every value has a default that works from a fresh clone (the bundled sample, a store under AIRFLOW_HOME), so
`airflow standalone` or `airflow dags test` run without any setup; a real deployment sets the environment
variables below (docker/compose.yaml does).

| variable                     | meaning                                             | default                          |
|------------------------------|-----------------------------------------------------|----------------------------------|
| MEDPIPE_DATA_ROOT            | dataset root (train/val[/test]/<class>/*)            | bundled sample_data/mammo-ddsm-sample |
| MEDPIPE_CONFIG               | YAML config file ("" = packaged defaults)           | configs/sample.yaml of the repo  |
| MEDPIPE_STORE_URI            | model store: a directory or s3://bucket/prefix      | $AIRFLOW_HOME/medpipe/store      |
| MEDPIPE_STORE_ENDPOINT_URL   | S3-compatible endpoint (MinIO)                      | none (AWS)                       |
| MEDPIPE_AWS_CONN_ID          | Airflow connection of the S3 store (aws.py)         | medpipe_s3 ("none": AWS chain)   |
| MEDPIPE_WORK_ROOT            | per-run working folders, shared by all workers      | $AIRFLOW_HOME/medpipe/work       |
| MEDPIPE_SCORE_INBOX          | folder the scoring DAG scores by default            | bundled sample's val split       |
| MEDPIPE_RETRAIN_SCHEDULE     | cron/preset for retraining ("none" = manual only)   | @weekly                          |
| MEDPIPE_GPU_QUEUE            | Celery queue of the GPU workers                     | default                          |
| MEDPIPE_GPU_POOL             | Airflow pool limiting concurrent GPU tasks          | gpu                              |
| MEDPIPE_GPUS_PER_MODEL       | GPUs (pool slots) per training task; >1: torchrun   | 1                                |
| MEDPIPE_TASK_RETRIES         | retries per task (exponential backoff)              | 2                                |
| MEDPIPE_TRAIN_TIMEOUT_MIN    | execution_timeout of a training task (GPU), minutes | 720 (12 h)                       |
| MEDPIPE_TASK_TIMEOUT_MIN     | execution_timeout of every other task, minutes      | 120 (2 h)                        |
| MEDPIPE_DAGRUN_TIMEOUT_MIN   | dagrun_timeout of both DAGs, minutes                | 2880 (48 h)                      |
"""

from __future__ import annotations

import hashlib
import os
import re
from datetime import datetime, timedelta
from pathlib import Path

from airflow.sdk import Asset

__all__ = [
    "CHAMPION_ASSET",
    "REPO_ROOT",
    "config_overrides",
    "config_path",
    "dagrun_timeout",
    "data_root",
    "gpu_pool",
    "gpu_queue",
    "inbox",
    "inbox_schedule",
    "model_version",
    "retrain_schedule",
    "run_dir",
    "run_folder_name",
    "score_inbox",
    "store_endpoint_url",
    "store_uri",
    "task_retries",
    "task_timeout",
    "train_timeout",
    "work_root",
]

# plugins/medpipe_plugin/settings.py -> the repository (or image) root holding dags/, plugins/, sample_data/.
REPO_ROOT = Path(__file__).resolve().parents[2]
SAMPLE_DATA = REPO_ROOT / "sample_data" / "mammo-ddsm-sample"

# Updated by the retraining DAG's publish task; the scoring DAG is scheduled on it.
CHAMPION_ASSET = Asset(name="medpipe_champion", uri="medpipe://champion", group="medpipe")

_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def _airflow_home() -> Path:
    return Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow").expanduser()


def data_root() -> str:
    """Dataset root the retraining DAG reads by default."""
    return os.environ.get("MEDPIPE_DATA_ROOT") or str(SAMPLE_DATA)


def config_path() -> str:
    """Config file the DAGs load by default; "" means the packaged defaults."""
    env = os.environ.get("MEDPIPE_CONFIG")
    return env if env is not None else str(REPO_ROOT / "configs" / "sample.yaml")


def store_uri() -> str:
    """Model store URI (a local directory or s3://bucket/prefix)."""
    return os.environ.get("MEDPIPE_STORE_URI") or str(_airflow_home() / "medpipe" / "store")


def store_endpoint_url() -> str | None:
    """S3-compatible endpoint URL (MinIO), or None for AWS / a local store."""
    return os.environ.get("MEDPIPE_STORE_ENDPOINT_URL") or None


def work_root() -> str:
    """Folder holding one working folder per DAG run; every worker must see the same folder."""
    return os.environ.get("MEDPIPE_WORK_ROOT") or str(_airflow_home() / "medpipe" / "work")


def score_inbox() -> str:
    """Folder the scoring DAG scores when triggered by a new champion."""
    return os.environ.get("MEDPIPE_SCORE_INBOX") or str(SAMPLE_DATA / "val")


def inbox() -> str:
    """Where new batches arrive for medpipe_inbox: a folder or s3://bucket/prefix; "" = no inbox (manual runs)."""
    return os.environ.get("MEDPIPE_INBOX", "").strip()


def inbox_schedule() -> timedelta | None:
    """How often medpipe_inbox looks for new batches (MEDPIPE_INBOX_POLL_MIN, default 10); None without an inbox."""
    minutes = _env_int("MEDPIPE_INBOX_POLL_MIN", 10, 1, 24 * 60, " of minutes")
    return timedelta(minutes=minutes) if inbox() else None


def retrain_schedule() -> str | None:
    """Cron expression or preset for retraining; "none" (or empty) disables the schedule."""
    value = os.environ.get("MEDPIPE_RETRAIN_SCHEDULE", "@weekly").strip()
    return None if value.lower() in ("", "none") else value


def gpu_queue() -> str:
    """Executor queue for GPU tasks (Celery: the queue the GPU workers listen on)."""
    return os.environ.get("MEDPIPE_GPU_QUEUE") or "default"


def gpu_pool() -> str:
    """Airflow pool that caps how many GPU tasks run at once (one slot per GPU)."""
    return os.environ.get("MEDPIPE_GPU_POOL") or "gpu"


def _env_int(name: str, default: int, low: int, high: int, unit: str = "") -> int:
    """A whole number from the environment variable `name`, in [low, high]; a bad value is an error naming it."""
    value = os.environ.get(name, "").strip() or str(default)
    if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:
        raise ValueError(f"{name}={value!r}: expected a whole number{unit} from {low} to {high}")
    return int(value)


def gpus_per_model() -> int:
    """GPUs each training task holds (`pool_slots`) and trains one model on with torchrun + DDP when above 1.

    An environment setting, not a DAG param: Airflow fixes a task's pool_slots when it parses the DAG file, so a
    per-run value could not reserve the slots its training would use.
    """
    return _env_int("MEDPIPE_GPUS_PER_MODEL", 1, 1, 64, " of GPUs")


def task_retries() -> int:
    """How often a failed task is retried (with exponential backoff); 0 makes failures final at once."""
    return _env_int("MEDPIPE_TASK_RETRIES", 2, 0, 100)


# Timeouts, in minutes. There is no "off": a task without a timeout that hangs (a stuck GPU, an NFS mount or an
# endpoint that never answers) holds its pool slot forever, and with max_active_runs=1 the DAG with it.
_MAX_TIMEOUT_MIN = 30 * 24 * 60  # 30 days: a larger number is a typo (seconds given as minutes?)


def _timeout(name: str, default_min: int) -> timedelta:
    return timedelta(minutes=_env_int(name, default_min, 1, _MAX_TIMEOUT_MIN, " of minutes"))


def train_timeout() -> timedelta:
    """execution_timeout of a training task: the longest one try may train before Airflow stops it.

    A stopped try keeps the last.pt of its last finished epoch, and its retry resumes from there.
    """
    return _timeout("MEDPIPE_TRAIN_TIMEOUT_MIN", 12 * 60)


def task_timeout() -> timedelta:
    """execution_timeout of every task but training (validation, caching, evaluation, export, scoring, uploads)."""
    return _timeout("MEDPIPE_TASK_TIMEOUT_MIN", 2 * 60)


def dagrun_timeout() -> timedelta:
    """dagrun_timeout of both DAGs: a run still going after this is failed, its unfinished tasks stopped.

    It must leave room for the longest task (training): a shorter one would fail every run before its training
    may end, which is refused here rather than discovered a week later.
    """
    run_limit = _timeout("MEDPIPE_DAGRUN_TIMEOUT_MIN", 48 * 60)  # default: 3 training tries of 12 h, and the rest
    longest = max(train_timeout(), task_timeout())
    if run_limit < longest:
        raise ValueError(f"MEDPIPE_DAGRUN_TIMEOUT_MIN={run_limit // timedelta(minutes=1)} is shorter than the "
                         f"longest task timeout ({longest // timedelta(minutes=1)} min, MEDPIPE_TRAIN_TIMEOUT_MIN / "
                         "MEDPIPE_TASK_TIMEOUT_MIN): every run would be failed before its tasks may finish")
    return run_limit


def run_folder_name(run_id: str) -> str:
    """A folder/key name for a DAG run: run ids hold ':' and '+', which we keep out of paths and keys."""
    name = _UNSAFE_CHARS.sub("_", run_id).strip("._")
    if not name:
        raise ValueError(f"run id {run_id!r} has no usable characters for a folder name")
    return name


def model_version(run_id: str, run_after: datetime) -> str:
    """The registry version a run publishes: sortable by time, unique per run, the same on every retry.

    Example: ``20260105T030000-1a2b3c`` (the run's start time in UTC + a digest of the run id, because two
    runs can start in the same second, e.g. a scheduled one and a manual one).
    """
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:6]
    return f"{run_after.strftime('%Y%m%dT%H%M%S')}-{digest}"


def run_dir(work_root: str | Path, run_id: str) -> Path:
    """The working folder of one DAG run: every task of the run writes below it, so a retry rewrites its own files."""
    return Path(work_root) / run_folder_name(run_id)


def config_overrides(work_root: str | Path, store: str, extra: list[str]) -> list[str]:
    """`section.key=value` overrides a DAG run applies on top of its config file.

    The decoded-image cache goes under the work root because every worker must find it (a worker's home
    folder is not shared), the store is the run's `store_uri` param, and the run's own `overrides` come last,
    so they win.
    """
    overrides = [f"data.cache_dir={Path(work_root) / 'cache'}", f"store.uri={store}"]
    if store_endpoint_url():
        overrides.append(f"store.endpoint_url={store_endpoint_url()}")
    return overrides + [str(o) for o in extra]
