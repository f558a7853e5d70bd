#!/usr/bin/env bash
# Build (or take) the image and push it to Amazon ECR; prints the full image URI.
#   ./build_and_push_to_ecr.sh IMAGE_NAME [TAG]
# Account and region come from your AWS credentials/config (AWS_PROFILE, AWS_REGION, ...).
# The image IMAGE_NAME:TAG is built with scripts/build_image.sh unless it already exists
# (set REBUILD=1 to rebuild). The repository is created when missing, with scan on push.
# Test hooks: AWS_ENDPOINT_URL points the AWS CLI at another endpoint (moto server), and
# ECR_REGISTRY overrides the registry host (a local registry instead of *.dkr.ecr.*.amazonaws.com).
set -euo pipefail
die() { echo "error: $*" >&2; exit 1; }
[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: $0 IMAGE_NAME [TAG]"
name=$1
tag=${2:-latest}
here=$(cd "$(dirname "$0")" && pwd)
command -v docker >/dev/null || die "docker is not installed"
command -v aws >/dev/null || die "the AWS CLI is not installed (pip install awscli, or AWS CLI v2)"
docker info >/dev/null 2>&1 || die "no Docker engine answers (start dockerd, or scripts/ensure_docker.sh on Debian)"

region=${AWS_REGION:-${AWS_DEFAULT_REGION:-$(aws configure get region 2>/dev/null || true)}}
[ -n "$region" ] || die "no AWS region: set AWS_REGION or run aws configure"
# AWS CLI v1 reads neither AWS_REGION nor (before 1.29) AWS_ENDPOINT_URL: pass both explicitly.
aws_cli() { aws --region "$region" ${AWS_ENDPOINT_URL:+--endpoint-url "$AWS_ENDPOINT_URL"} "$@"; }

account=$(aws_cli sts get-caller-identity --query Account --output text 2>/tmp/ecr-push-sts.err) \
  || die "no usable AWS credentials: $(tail -1 /tmp/ecr-push-sts.err) (configure them: aws configure, AWS_PROFILE or AWS_ACCESS_KEY_ID)"
registry=${ECR_REGISTRY:-$account.dkr.ecr.$region.amazonaws.com}
uri="$registry/$name:$tag"

if [ -n "${REBUILD:-}" ] || ! docker image inspect "$name:$tag" >/dev/null 2>&1; then
  "$here/scripts/build_image.sh" "$name:$tag" >&2
fi

if ! aws_cli ecr describe-repositories --repository-names "$name" >/dev/null 2>&1; then
  aws_cli ecr create-repository --repository-name "$name" \
      --image-scanning-configuration scanOnPush=true >/dev/null 2>/tmp/ecr-push-create.err \
    || die "cannot create ECR repository $name: $(tail -1 /tmp/ecr-push-create.err) (needs ecr:CreateRepository)"
  echo "created ECR repository $name (scan on push)" >&2
fi
aws_cli ecr get-login-password 2>/tmp/ecr-push-login.err \
  | docker login --username AWS --password-stdin "$registry" >/dev/null 2>>/tmp/ecr-push-login.err \
  || die "cannot log in to $registry: $(tail -1 /tmp/ecr-push-login.err) (needs ecr:GetAuthorizationToken)"
docker tag "$name:$tag" "$uri"
docker push "$uri" >&2 || die "docker push $uri failed (needs ecr:InitiateLayerUpload, ecr:PutImage, ...)"
echo "$uri"
