#!/usr/bin/env bash
# Run the container's train or serve job against local_test/test_dir, which mirrors /opt/ml.
#   local_test/run_local.sh train [IMAGE]        # docker run IMAGE train, test_dir mounted at /opt/ml
#   local_test/run_local.sh serve [IMAGE]        # docker run IMAGE serve, published on 127.0.0.1:${PORT:-8080}
#   local_test/run_local.sh train|serve --no-docker   # the same jobs from .venv (scripts/bootstrap.sh)
# IMAGE defaults to sagemaker-deepar:latest (scripts/build_image.sh). Sample data is generated when missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
usage() { echo "usage: $0 train|serve [IMAGE] [--no-docker]" >&2; exit 2; }
[ $# -ge 1 ] || usage
job=$1; shift
case "$job" in train|serve) ;; *) usage ;; esac
no_docker=false
image=sagemaker-deepar:latest
for arg in "$@"; do
  case "$arg" in
    --no-docker) no_docker=true ;;
    -*) usage ;;
    *) image=$arg ;;
  esac
done
test_dir="$here/test_dir"
port=${PORT:-8080}
if [ "$job" = train ]; then
  if [ ! -d "$test_dir/input/data/train" ]; then
    "$repo/.venv/bin/python" -m sagemaker_deepar.training.sample_data --out "$test_dir/input/data"
  fi
  # A fresh local run: old model, outputs and checkpoints would otherwise be resumed or mixed in.
  rm -rf "$test_dir/model" "$test_dir/output" "$test_dir/checkpoints"
fi
if $no_docker; then
  export SAGEMAKER_BASE_DIR="$test_dir"
  # Outside a container, listen on loopback only.
  [ "$job" = serve ] && export DEEPAR_BIND_HOST=${DEEPAR_BIND_HOST:-127.0.0.1} SAGEMAKER_BIND_TO_PORT=$port
  exec "$repo/.venv/bin/python" "$repo/container/$job"
fi
command -v docker >/dev/null || { echo "error: docker not found; use --no-docker" >&2; exit 1; }
docker image inspect "$image" >/dev/null 2>&1 || { echo "error: image $image not found; build it with scripts/build_image.sh" >&2; exit 1; }
if [ "$job" = train ]; then
  # Run as the calling user so the model and outputs in test_dir stay yours.
  exec docker run --rm --user "$(id -u):$(id -g)" -e HOME=/tmp -v "$test_dir:/opt/ml" "$image" train
fi
exec docker run --rm -p "127.0.0.1:$port:8080" -v "$test_dir:/opt/ml:ro" "$image" serve
