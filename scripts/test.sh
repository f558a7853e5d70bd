#!/usr/bin/env bash
# The test command (README): builds .venv if needed, builds the Docker image when an engine
# answers, then runs the whole suite. Extra arguments go to pytest, e.g. `scripts/test.sh -k serve -x`.
# Image tests skip without Docker, except under CI=true, where they fail.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
if docker info >/dev/null 2>&1; then
  scripts/build_image.sh "${DEEPAR_IMAGE:-sagemaker-deepar:latest}"
fi
exec .venv/bin/python -m pytest "$@"
