#!/usr/bin/env bash
# README command 1: set everything up, then run the main job — the retraining DAG and the scoring DAG in a
# project-local Airflow (SQLite, local object store) on the bundled sample — and print where everything is.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
exec bash scripts/airflow_demo.sh
