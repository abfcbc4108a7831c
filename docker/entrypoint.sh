#!/bin/sh
# Entrypoint of the medpipe image (docker/Dockerfile): refuse placeholder secrets and an invalid Fernet key
# (docker/check_env.py names each bad variable), then run the airflow subcommand given as arguments.
#   docker run medpipe-airflow:latest scheduler   ->   airflow scheduler
set -e
python /opt/medpipe/docker/check_env.py
exec airflow "$@"
