"""`python -m ecs local` with the image (issue #25, item 4): replicas behind one nginx on one port, scaled
1 -> 2 -> 1 under a bounded request loop with no failed request, `--down` removing every container;
the image's `serve` with DEEPAR_MODEL_URL (a mounted model.tar.gz). Skips without Docker or the
image (DEEPAR_IMAGE), never under CI=true."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
import threading
import time
import uuid
from functools import partial

import pytest
import requests

from devtools.serving import free_port

from .conftest import IMAGE, series
from .helpers import run_module


@pytest.fixture(scope="module")
def image() -> str:
    ok = (
        shutil.which("docker")
        and subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode == 0
    )
    if not ok:
        if os.environ.get("CI"):
            pytest.fail(f"required in CI: a Docker engine with {IMAGE}")
        pytest.skip(f"not available: a Docker engine with {IMAGE}")
    return IMAGE


ecs = partial(run_module, "ecs", os.environ)


def labelled(name: str) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=deepar.ecs.local={name}"], capture_output=True, text=True
    )
    return out.stdout.split()


def replicas(name: str) -> list[str]:
    out = subprocess.run(
        [
            "docker", "ps", "--format", "{{.Names}}",
            "--filter", f"label=deepar.ecs.local={name}", "--filter", "label=deepar.ecs.role=replica",
        ],
        capture_output=True, text=True,
    )  # fmt: skip
    return sorted(out.stdout.split())


@pytest.fixture
def set_name(image) -> str:
    name = f"ecs-test-{uuid.uuid4().hex[:6]}"
    yield name
    leftover = labelled(name)
    if leftover:
        subprocess.run(["docker", "rm", "-f", *leftover], capture_output=True)
    subprocess.run(["docker", "network", "rm", f"{name}-net"], capture_output=True)


class RequestLoop:
    """Forecast requests from 4 threads until stopped (at most ``limit`` seconds); every answer counted."""

    def __init__(self, url: str, limit: float = 240):
        self.url, self.deadline = url, time.monotonic() + limit
        self.ok, self.failures = 0, []
        self.stop = threading.Event()
        self.lock = threading.Lock()
        body = json.dumps({"instances": [series(n=30)], "configuration": {"num_samples": 10}})
        self.threads = [threading.Thread(target=self.run, args=(body,), daemon=True) for _ in range(4)]

    def run(self, body: str) -> None:
        session = requests.Session()
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            try:
                response = session.post(
                    self.url + "/invocations", data=body, headers={"Content-Type": "application/json"}, timeout=60
                )
                good = response.status_code == 200 and "predictions" in response.json()
                problem = "" if good else f"{response.status_code} {response.text[:200]}"
            except (requests.RequestException, ValueError) as error:
                problem = f"{type(error).__name__}: {error}"
            with self.lock:
                if problem:
                    self.failures.append(problem)
                else:
                    self.ok += 1

    def __enter__(self) -> "RequestLoop":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=90)


def test_scale_1_2_1_under_load_fails_no_request_and_down_removes_everything(torch_model, set_name):
    port = free_port()
    model = str(torch_model / "model")
    started = ecs(
        "local", "--replicas", "1", "--model", model, "--image", IMAGE, "--name", set_name, "--port", str(port)
    )
    assert started.returncode == 0, started.stderr[-3000:]
    url = started.stdout.strip().splitlines()[-1]
    assert url == f"http://127.0.0.1:{port}"
    assert requests.get(url + "/ping", timeout=5).status_code == 200
    assert len(replicas(set_name)) == 1

    with RequestLoop(url) as load:
        time.sleep(2)
        up = ecs("local", "--replicas", "2", "--name", set_name)  # model, image and port: the set's
        assert up.returncode == 0, up.stderr[-3000:]
        assert up.stdout.strip().splitlines()[-1] == url
        assert len(replicas(set_name)) == 2
        time.sleep(2)
        during_two = load.ok
        down = ecs("local", "--replicas", "1", "--name", set_name)
        assert down.returncode == 0, down.stderr[-3000:]
        assert len(replicas(set_name)) == 1
        time.sleep(2)
    assert load.failures == [], load.failures[:5]
    assert load.ok > during_two > 20  # requests flowed all along, through both scale steps

    # the replica kept is the newest one; it is health-checked by Docker on /ping
    (kept,) = replicas(set_name)
    assert kept == f"{set_name}-replica-2"
    health = subprocess.run(
        ["docker", "inspect", "--format", "{{json .Config.Healthcheck.Test}}", kept], capture_output=True, text=True
    ).stdout
    assert "/opt/program/container/healthcheck" in health

    removed = ecs("local", "--down", "--name", set_name)
    assert removed.returncode == 0, removed.stderr
    assert labelled(set_name) == []
    networks = subprocess.run(
        ["docker", "network", "ls", "-q", "--filter", f"label=deepar.ecs.local={set_name}"],
        capture_output=True,
        text=True,
    )
    assert networks.stdout.split() == []


def test_a_replica_that_cannot_start_is_named_and_removed(tmp_path, set_name):
    broken = tmp_path / "model.tar.gz"
    broken.write_bytes(b"not a tarball")
    result = ecs(
        "local", "--replicas", "1", "--model", str(broken), "--image", IMAGE, "--name", set_name,
        "--port", str(free_port()),
    )  # fmt: skip
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: replica {set_name}-replica-1 exited with code 1 before /ping said 200")
    assert "DEEPAR_MODEL_URL=/model/model.tar.gz: not a readable model.tar.gz" in line
    assert replicas(set_name) == []


@pytest.mark.parametrize(
    "args, message",
    [
        (("--replicas", "1", "--model", "/nonexistent/model"), "--model /nonexistent/model: no such folder"),
        (("--replicas", "0", "--model", "."), "--replicas N (at least 1) is required"),
        (("--replicas", "2"), "--model DIR is required: no replica of"),
    ],
)
def test_bad_local_input_is_one_line(args, message, set_name):
    result = ecs("local", "--name", set_name, *args)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert message in line, line


def test_the_image_fetches_its_model_from_a_mounted_tarball(torch_model, image, tmp_path):
    """DEEPAR_MODEL_URL in the image itself (a file URL: the S3 path is covered on the host against moto)."""
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as out:
        for path in sorted((torch_model / "model").iterdir()):
            out.add(path, arcname=path.name)
    port, name = free_port(), f"ecs-fetch-{uuid.uuid4().hex[:6]}"
    run = [
        "docker", "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080",
        "-v", f"{archive}:/model/model.tar.gz:ro", "-e", "DEEPAR_MODEL_URL=file:///model/model.tar.gz",
        image, "serve",
    ]  # fmt: skip
    subprocess.run(run, check=True, capture_output=True)
    try:
        deadline, status = time.monotonic() + 120, 0
        while time.monotonic() < deadline and status != 200:
            try:
                status = requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code
            except requests.RequestException:
                time.sleep(0.2)
        logs = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
        assert status == 200, logs.stderr[-2000:]
        assert "fetched the model from file:///model/model.tar.gz" in logs.stderr + logs.stdout
        forecast = requests.post(f"http://127.0.0.1:{port}/invocations", json={"instances": [series(n=30)]}, timeout=60)
        assert forecast.status_code == 200 and len(forecast.json()["predictions"][0]["mean"]) == 6
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True)
