#!/usr/bin/env bash
# The test command (README): builds .venv if needed, then runs the whole suite.
# Extra arguments go to pytest, e.g. `scripts/test.sh -k serve -x`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/python -m pytest "$@"
