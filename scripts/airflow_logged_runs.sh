# Sourced by scripts/airflow_demo.sh (and tests/airflow_layer/test_demo_task_logs.py): run a DAG once, from the
# command line, so that its task logs end up where the Airflow UI reads them.
#
# Why not plain `airflow dags test`: it runs every task inside its own process and writes no task log files, so
# the UI showed empty task logs for the demo's runs (and "the reasons are in the gate log" did not hold there).
# `airflow dags test --use-executor` hands the tasks to the configured executor (LocalExecutor), whose
# supervisor writes each try's log to $AIRFLOW_HOME/logs/dag_id=…/run_id=…/task_id=…/attempt=N.log, the files
# the API server serves to the UI. Those task processes talk to the Execution API, which lives in the API
# server: start_execution_api starts one on a free loopback port for the duration of the script (stopped on
# exit), with a JWT secret shared by the server and the tasks.
#
# Level: INFO unless AIRFLOW__LOGGING__LOGGING_LEVEL says otherwise, so medpipe's INFO lines (the gate's
# decision and every reason, what each stage wrote) are in the task logs.
# Needs: AIRFLOW_HOME (migrated), the airflow CLI and python on PATH.

: "${AIRFLOW__LOGGING__LOGGING_LEVEL:=INFO}"
export AIRFLOW__LOGGING__LOGGING_LEVEL

_medpipe_api_pid=""

stop_execution_api() {
  if [[ -n "$_medpipe_api_pid" ]]; then
    kill -TERM -- "-$_medpipe_api_pid" 2>/dev/null || true  # its own process group (setsid): workers included
    for _ in $(seq 1 20); do kill -0 "$_medpipe_api_pid" 2>/dev/null || break; sleep 0.5; done
    _medpipe_api_pid=""
  fi
}

start_execution_api() {
  local port
  port="$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
  if [[ -z "${AIRFLOW__API_AUTH__JWT_SECRET:-}" ]]; then
    AIRFLOW__API_AUTH__JWT_SECRET="$(python -c 'import secrets; print(secrets.token_urlsafe(48))')"
  fi
  export AIRFLOW__API_AUTH__JWT_SECRET
  export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="http://127.0.0.1:$port/execution/"
  export MEDPIPE_DEMO_API_URL="http://127.0.0.1:$port"
  setsid airflow api-server --host 127.0.0.1 --port "$port" > "$AIRFLOW_HOME/api-server.log" 2>&1 < /dev/null &
  _medpipe_api_pid=$!
  trap stop_execution_api EXIT
  for _ in $(seq 1 120); do
    if python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' \
        "$MEDPIPE_DEMO_API_URL/api/v2/monitor/health" 2>/dev/null; then
      return 0
    fi
    kill -0 "$_medpipe_api_pid" 2>/dev/null || break
    sleep 1
  done
  tail -n 30 "$AIRFLOW_HOME/api-server.log" >&2
  echo "error: the Airflow API server (Execution API for the tasks) did not start; log: $AIRFLOW_HOME/api-server.log" >&2
  return 1
}

# run_dag DAG_ID CONF_JSON LOG_FILE: one run through the executor; its console output goes to LOG_FILE.
run_dag() {
  airflow dags test "$1" --use-executor --conf "$2" > "$3" 2>&1
}
