#!/usr/bin/env bash
# The test command (README). Two tiers:
#   scripts/test.sh --fast   in-process unit tests only (pytest -m unit): no subprocesses, no Docker, < 2 minutes
#   scripts/test.sh          what CI runs: ruff (lint + format check), mypy and the docs site, then the whole suite, black-box
#                            tests through the real entrypoints and the image included
# Both build .venv if needed; the full run builds the Docker image when an engine answers. Extra arguments
# go to pytest, e.g. `scripts/test.sh -k serve -x`. Image tests skip without Docker, except under CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."
fast=0
if [ "${1:-}" = "--fast" ]; then
  fast=1
  shift
fi
scripts/bootstrap.sh
if [ "$fast" = 1 ]; then
  exec .venv/bin/python -m pytest -m unit -q "$@"
fi
.venv/bin/python -m ruff check .
.venv/bin/python -m ruff format --check .
.venv/bin/python -m mypy
# The documentation site (docs/, mkdocs.yml): strict, so a broken link or a page missing from nav fails.
NO_MKDOCS_2_WARNING=1 .venv/bin/python -m mkdocs build --strict --quiet --site-dir "$(mktemp -d)"
if docker info >/dev/null 2>&1; then
  scripts/build_image.sh "${DEEPAR_IMAGE:-sagemaker-deepar:latest}"
fi
exec .venv/bin/python -m pytest "$@"
