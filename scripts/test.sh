#!/usr/bin/env bash
# Set up the environment with the test tools and run the whole test suite (README command 2).
# Extra arguments go to pytest, e.g. scripts/test.sh -m "not e2e" or scripts/test.sh tests/test_config.py
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=1 bash scripts/setup_env.sh
VENV=${VENV:-.venv}
# The end-to-end UI test drives Debian's Chromium (playwright's own browser download is not used).
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "could not install chromium: the e2e UI test will be skipped"
fi
exec "$VENV/bin/python" -m pytest "$@"
