#!/usr/bin/env bash
# Installs what the tests need, checks the import layers and lint, then runs the whole suite
# (model tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAY_AUTH_MODE=disabled HF_HUB_OFFLINE=1
# The layer contract in pyproject.toml (README "Layout"), then lint, then the tests.
.venv/bin/lint-imports --no-cache
.venv/bin/ruff check --quiet .
set +e
.venv/bin/python -m pytest "$@"
status=$?
set -e
# pytest exits 5 when no test was collected (e.g. a -m filter matching nothing): not a failure.
if [ "$status" -eq 5 ]; then exit 0; fi
exit "$status"
