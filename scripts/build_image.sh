#!/usr/bin/env bash
# Build the image: the base image (offline when it cannot be pulled), then `docker build`.
#   scripts/build_image.sh [TAG]          (default: sagemaker-deepar:latest)
# Behind a TLS-intercepting proxy or offline, it passes what pip uses on this machine into the
# build: the CA bundle named by PIP_CERT (into docker/ca/) and the wheels in PIP_FIND_LINKS (into
# docker/wheels/, e.g. the CPU build of torch). Set TORCH_INDEX_URL to override the torch index.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-sagemaker-deepar:latest}
docker/build_base_image.sh
if [ -n "${PIP_FIND_LINKS:-}" ] && [ -d "$PIP_FIND_LINKS" ]; then
  find "$PIP_FIND_LINKS" -maxdepth 1 -name '*.whl' -exec cp -u {} docker/wheels/ \;
fi
if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ]; then
  cp "$PIP_CERT" docker/ca/build-host-ca.crt
fi
torch_index=${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}
if [ -z "${TORCH_INDEX_URL+set}" ] && ls docker/wheels/torch-*.whl >/dev/null 2>&1; then
  torch_index=""  # a local torch wheel: do not reach for an index that may be unreachable
fi
docker build --network host --build-arg TORCH_INDEX_URL="$torch_index" -t "$tag" .
docker image inspect "$tag" --format "built {{index .RepoTags 0}}: {{.Size}} bytes"
