#!/usr/bin/env bash
# Create or refresh the dev environment in .venv (pinned: pyproject.toml + requirements.lock).
# Re-running is cheap: nothing is installed when the pins have not changed since the last run.
# TORCH_INDEX_URL (optional): a CPU wheel index for torch, e.g. PyTorch's .../whl/cpu, so pip does not
# pull the multi-GB CUDA build from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
  echo "error: Python 3.11 is required (mxnet 1.9.1 and the pinned stack); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
stamp=.venv/.bootstrap-stamp
want=$(cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  extra=()
  [ -n "${TORCH_INDEX_URL:-}" ] && extra+=(--extra-index-url "$TORCH_INDEX_URL")
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "${extra[@]}" -c requirements.lock -e ".[dev]"
  echo "$want" > "$stamp"
fi
# The SageMaker SDKs (clients of the image, as in a user's notebook) need numpy >= 1.26, which the
# container's stack (mxnet: numpy < 1.24) cannot share: SDK v2 lives in .venv-sdk, v3 in .venv-sdk3.
sdk_env() {  # sdk_env VENV LOCKFILE
  [ -x "$1/bin/python" ] || "$PYTHON" -m venv "$1"
  local want
  want=$(cat "$2" pyproject.toml | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$1/.bootstrap-stamp" 2>/dev/null)" != "$want" ]; then
    "$1/bin/python" -m pip install -q --upgrade pip
    "$1/bin/python" -m pip install -q -r "$2"
    # Our stdlib/numpy modules (sagemaker_deepar.contract, .report, evaluation/) without the container's stack.
    "$1/bin/python" -m pip install -q --no-deps -e .
    echo "$want" > "$1/.bootstrap-stamp"
  fi
}
sdk_env .venv-sdk evaluation/requirements.lock
sdk_env .venv-sdk3 evaluation/requirements-v3.lock
