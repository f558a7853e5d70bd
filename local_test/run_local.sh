#!/usr/bin/env bash
# Run the container's train or serve job against local_test/test_dir, which mirrors /opt/ml.
#   local_test/run_local.sh train --no-docker   # the venv path (scripts/bootstrap.sh makes .venv)
#   local_test/run_local.sh serve --no-docker   # serves local_test/test_dir/model on 127.0.0.1:8080
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
usage() { echo "usage: $0 train|serve --no-docker" >&2; exit 2; }
[ $# -ge 1 ] || usage
job=$1; shift
case "$job" in train|serve) ;; *) usage ;; esac
no_docker=false
for arg in "$@"; do
  case "$arg" in
    --no-docker) no_docker=true ;;
    *) usage ;;
  esac
done
test_dir="$here/test_dir"
if [ "$job" = train ] && [ ! -d "$test_dir/input/data/train" ]; then
  "$repo/.venv/bin/python" -m sagemaker_deepar.sample_data --out "$test_dir/input/data"
fi
if ! $no_docker; then
  echo "error: the Docker path is not available yet; use --no-docker" >&2
  exit 2
fi
if [ "$job" = train ]; then
  # A fresh local run: old model, outputs and checkpoints would otherwise be resumed or mixed in.
  rm -rf "$test_dir/model" "$test_dir/output" "$test_dir/checkpoints"
fi
export SAGEMAKER_BASE_DIR="$test_dir"
# Outside a container, listen on loopback only.
[ "$job" = serve ] && export DEEPAR_BIND_HOST=${DEEPAR_BIND_HOST:-127.0.0.1}
exec "$repo/.venv/bin/python" "$repo/container/$job"
