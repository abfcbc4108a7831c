#!/bin/sh
# Entrypoint of the medpipe image (docker/Dockerfile): refuse placeholder secrets and an invalid Fernet key
# (docker/check_env.py names each bad variable), then run the airflow subcommand given as arguments.
#   docker run medpipe-airflow:latest scheduler   ->   airflow scheduler
# Commands that are not airflow subcommands run as given, unchecked: the official Helm chart starts every
# component as `bash -c "exec airflow ..."`, and the KubernetesExecutor runs each task as `python -m
# airflow.sdk.execution_time.execute_workload ...`; their secrets come from Kubernetes Secrets, which
# check_env.py (written for docker/.env) does not describe.
set -e
case "$1" in bash|python) exec "$@" ;; esac
python /opt/medpipe/docker/check_env.py
exec airflow "$@"
