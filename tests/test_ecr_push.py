"""build_and_push_to_ecr.sh against moto server (ECR and STS APIs) and a local registry standing in for ECR.

A small image (the base image, re-tagged) is pushed so the test exercises the script, not the disk.
Skipped without Docker, the AWS CLI or docker-registry on a laptop; under CI=true those fail instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
import requests

from .conftest import REPO, free_port

SCRIPT = REPO / "build_and_push_to_ecr.sh"
BIN = Path(sys.executable).parent
NAME, TAG = "deepar-push-test", "t1"


def require(condition: bool, what: str) -> None:
    if not condition:
        pytest.skip(f"{what} not available")


@pytest.fixture(scope="module")
def moto_url():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    require(shutil.which("docker-registry") is not None, "docker-registry (Debian package)")
    require(subprocess.run(["docker", "info"], capture_output=True).returncode == 0, "a Docker engine")
    root = tmp_path_factory.mktemp("registry")
    port = free_port()
    config = root / "config.yml"
    config.write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root / 'data'}\nhttp:\n  addr: 127.0.0.1:{port}\n"
    )
    process = subprocess.Popen(
        ["docker-registry", "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if requests.get(url + "/v2/", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.1)
    yield f"127.0.0.1:{port}"
    process.terminate()
    process.wait(timeout=30)


@pytest.fixture(scope="module")
def small_image():
    base = "debian:bookworm-slim"
    require(subprocess.run(["docker", "image", "inspect", base], capture_output=True).returncode == 0, f"image {base}")
    subprocess.run(["docker", "tag", base, f"{NAME}:{TAG}"], check=True)
    yield f"{NAME}:{TAG}"
    subprocess.run(["docker", "rmi", f"{NAME}:{TAG}"], capture_output=True)


def script_env(tmp_path: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return {
        **env,
        "PATH": f"{BIN}:{env['PATH']}",
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "DOCKER_CONFIG": str(tmp_path / "docker"),
        **extra,
    }


def creds(moto_url: str) -> dict:
    return {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "eu-west-1",
        "AWS_ENDPOINT_URL": moto_url,
    }


def test_push_creates_the_repository_and_prints_the_uri(tmp_path, moto_url, registry, small_image):
    env = script_env(tmp_path, **creds(moto_url), ECR_REGISTRY=registry)
    first = subprocess.run(["bash", str(SCRIPT), NAME, TAG], env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.strip() == f"{registry}/{NAME}:{TAG}"
    assert f"created ECR repository {NAME} (scan on push)" in first.stderr
    ecr = boto3.client(
        "ecr",
        endpoint_url=moto_url,
        region_name="eu-west-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    [repo] = ecr.describe_repositories(repositoryNames=[NAME])["repositories"]
    assert repo["imageScanningConfiguration"]["scanOnPush"] is True
    assert TAG in requests.get(f"http://{registry}/v2/{NAME}/tags/list", timeout=10).json()["tags"]

    again = subprocess.run(["bash", str(SCRIPT), NAME, TAG], env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "created ECR repository" not in again.stderr
    assert len(ecr.describe_repositories()["repositories"]) == 1


def test_missing_credentials_is_one_clear_line(tmp_path, moto_url, registry, small_image):
    env = script_env(tmp_path, AWS_REGION="eu-west-1", AWS_ENDPOINT_URL=moto_url, ECR_REGISTRY=registry)
    result = subprocess.run(["bash", str(SCRIPT), NAME, TAG], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: no usable AWS credentials")


def test_missing_aws_cli_is_reported(tmp_path):
    """A PATH with docker and the one tool the script runs before its check, never an AWS CLI (so the test
    runs, instead of skipping, where one is installed system-wide)."""
    docker, dirname, bash = shutil.which("docker"), shutil.which("dirname"), shutil.which("bash")
    require(docker is not None, "docker")
    assert dirname is not None and bash is not None
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in (docker, dirname):
        (tools / Path(tool).name).symlink_to(tool)
    env = script_env(tmp_path, PATH=str(tools))
    result = subprocess.run([bash, str(SCRIPT), NAME], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "the AWS CLI is not installed" in result.stderr
