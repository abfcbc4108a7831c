#!/usr/bin/env bash
# Create (or reuse) the virtual environment and install medpipe with pinned versions.
#   VENV     where the venv lives (default: .venv in the repo)
#   DEV=1    also install the test tools (pytest, moto server, playwright)
# The venv is reused when it was built from the same requirements/constraints (hash stamp inside it).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
reqs=requirements.txt
[ "${DEV:-0}" = 1 ] && reqs=requirements-dev.txt
stamp=$(cat requirements.txt "$reqs" constraints.txt pyproject.toml | sha256sum | cut -c1-16)
if [ -f "$VENV/.medpipe-stamp" ] && [ "$(cat "$VENV/.medpipe-stamp")" = "$stamp" ]; then
  echo "venv $VENV is up to date"
else
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # constraints.txt pins every transitive dependency (Airflow's published constraint files cannot be fetched here).
  "$VENV/bin/python" -m pip install -q -r "$reqs" -c constraints.txt
  echo "$stamp" > "$VENV/.medpipe-stamp"
fi
"$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e . 2>/dev/null \
  || "$VENV/bin/python" -m pip install -q --no-deps -e .
