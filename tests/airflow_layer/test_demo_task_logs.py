"""The demo's DAG runs leave task logs the UI can show, with medpipe's INFO lines in them (issue #12 item 8).

Plain `airflow dags test` writes no task log files, so the UI showed empty logs for the demo's runs. The demo now
runs its DAGs through scripts/airflow_logged_runs.sh (an API server for the Execution API + `dags test
--use-executor`, INFO by default). This test uses that same script, unchanged, on a one-task DAG whose task logs
through medpipe's gate logger at INFO, then reads the task's log back through the API server's task-log endpoint
(what the UI's Logs tab calls). The medpipe DAGs themselves would take minutes to train here; what this checks
is the path every task log of the demo takes, at the demo's own level. About 1 minute on 2 cores.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
REASON = "gate FAILED for custom_cnn: macro_auc 0.61 < minimum 0.8"

_DAG = f'''
import logging
from airflow.sdk import dag, task


@dag(dag_id="demo_log_probe", schedule=None, catchup=False)
def demo_log_probe():
    @task
    def gate():
        logging.getLogger("medpipe.gate").info({REASON!r})  # an INFO line, as medpipe.gate logs its decision

    gate()


demo_log_probe()
'''

# Runs in the script's shell, while its API server is up: the task log as the UI's Logs tab fetches it.
_READ_LOG = r'''
import json, os, sys, urllib.request
home, base = os.environ["AIRFLOW_HOME"], os.environ["MEDPIPE_DEMO_API_URL"]
password = json.load(open(os.path.join(home, "simple_auth_manager_passwords.json.generated")))["admin"]
request = urllib.request.Request(base + "/auth/token", json.dumps({"username": "admin", "password": password}).encode(),
                                 {"Content-Type": "application/json"})
token = json.load(urllib.request.urlopen(request))["access_token"]
def get(path):
    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}", "Accept": "application/json"})
    return json.load(urllib.request.urlopen(req))
run_id = get("/api/v2/dags/demo_log_probe/dagRuns")["dag_runs"][0]["dag_run_id"]
quoted = urllib.request.quote(run_id, safe="")
print(json.dumps(get(f"/api/v2/dags/demo_log_probe/dagRuns/{quoted}/taskInstances/gate/logs/1")))
'''


def test_the_demos_dag_runs_leave_task_logs_with_medpipe_info_lines(tmp_path: Path) -> None:
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "demo_log_probe.py").write_text(_DAG)
    (tmp_path / "plugins").mkdir()
    env = {k: v for k, v in os.environ.items()
           if k not in ("AIRFLOW__LOGGING__LOGGING_LEVEL", "AIRFLOW__API_AUTH__JWT_SECRET")}  # the script's defaults
    env.update({"AIRFLOW_HOME": str(tmp_path / "home"), "AIRFLOW__CORE__DAGS_FOLDER": str(dags),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(tmp_path / "plugins"), "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    script = (f"set -euo pipefail\nsource {REPO_ROOT / 'scripts' / 'airflow_logged_runs.sh'}\n"
              "airflow db migrate > \"$AIRFLOW_HOME/db-migrate.log\"\nstart_execution_api\n"
              "run_dag demo_log_probe '{}' \"$AIRFLOW_HOME/run.log\" || { tail -n 40 \"$AIRFLOW_HOME/run.log\"; exit 1; }\n"
              f"python - <<'EOF'\n{_READ_LOG}\nEOF\n")
    Path(tmp_path / "home").mkdir()
    proc = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    files = list((tmp_path / "home" / "logs" / "dag_id=demo_log_probe").glob("run_id=*/task_id=gate/attempt=1.log"))
    assert len(files) == 1 and REASON in files[0].read_text(), "no task log file, or the INFO line is not in it"
    served = proc.stdout.strip().splitlines()[-1]
    assert REASON in served and '"medpipe.gate"' in served, served[:2000]
