#!/usr/bin/env bash
# The main job, end to end on this machine: .venv, sample pollution data, then -- in the Docker image
# when an engine answers (built here), else from .venv -- train, serve, and print a forecast.
#   bash local_test/demo.sh            (NO_DOCKER=1 forces the .venv path)
# The server listens on 127.0.0.1:${PORT:-8080} and is stopped at the end; plots go to local_test/plots/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
port=${PORT:-8080}
"$repo/scripts/bootstrap.sh"
rm -rf "$here/test_dir/input/data"
"$repo/.venv/bin/python" -m sagemaker_deepar.training.sample_data --out "$here/test_dir/input/data"
mode=--no-docker
if [ -z "${NO_DOCKER:-}" ] && docker info >/dev/null 2>&1; then
  echo "== building the image (scripts/build_image.sh)"
  "$repo/scripts/build_image.sh" > "$here/build.log" 2>&1 || { tail -20 "$here/build.log"; exit 1; }
  mode=sagemaker-deepar:latest
fi
echo "== training (local_test/run_local.sh train $mode)"
"$here/run_local.sh" train $mode 2> "$here/train.log" | grep -E "final_loss|test RMSE|test mean_wQuantileLoss" \
  || { tail -20 "$here/train.log"; exit 1; }
echo "== serving on 127.0.0.1:$port (local_test/run_local.sh serve $mode)"
PORT=$port "$here/run_local.sh" serve $mode > "$here/serve.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/ping" || true)
  [ "$code" = 200 ] && break
  kill -0 "$server" 2>/dev/null || { tail -20 "$here/serve.log"; exit 1; }
  sleep 0.2
done
[ "$code" = 200 ] || { echo "server did not become ready" >&2; tail -20 "$here/serve.log"; exit 1; }
echo "== forecast (python -m local_test.predict)"
(cd "$repo" && .venv/bin/python -m local_test.predict --url "http://127.0.0.1:$port" --series 2 --plot-dir "$here/plots")
