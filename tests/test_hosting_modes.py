"""The other SageMaker hosting modes (docs/hosting-modes.md): asynchronous inference takes bodies far
above the real-time 6 MB through `container/serve` and keeps /ping answering during a long forecast;
serverless inference runs one worker with request threads chosen from the memory available."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import orjson
import pytest
import requests

from sagemaker_deepar.serving.front import nginx_conf
from sagemaker_deepar.serving.server_config import ServerConfig, serverless_threads

from . import test_image as image_tests
from .conftest import running_server
from .helpers import free_port, gunicorn_workers
from .test_image import docker

# The image tests' fixtures: the image (skipped without Docker on a laptop, failed under CI=true), container cleanup.
image = image_tests.image
container_names = image_tests.container_names


def config_with_memory(monkeypatch, memory_gb: float, **env: str) -> ServerConfig:
    monkeypatch.setattr("sagemaker_deepar.serving.server_config.available_memory_gb", lambda: memory_gb)
    return ServerConfig.from_env(env)


@pytest.mark.unit
def test_async_mode_allows_1_gb_bodies_and_an_hour(monkeypatch, tmp_path):
    config = config_with_memory(monkeypatch, 16, DEEPAR_HOSTING_MODE="async")
    assert config.max_payload_bytes == 1024 * 2**20 and config.max_response_bytes == 1024 * 2**20
    assert config.request_timeout == 3600 and config.streams_bodies and not config.batch_mode
    conf = nginx_conf(config, tmp_path, tmp_path / "sock")
    assert f"client_max_body_size {2**30};" in conf and "proxy_read_timeout 3635s;" in conf
    # Explicit settings still win, up to the async maximum.
    explicit = config_with_memory(
        monkeypatch,
        16,
        DEEPAR_HOSTING_MODE="async",
        SAGEMAKER_MODEL_SERVER_TIMEOUT="900",
        SAGEMAKER_MAX_PAYLOAD_IN_MB="500",
    )
    assert (explicit.request_timeout, explicit.max_payload_bytes) == (900, 500 * 2**20)
    with pytest.raises(Exception, match="between 1 and 1024"):
        config_with_memory(monkeypatch, 16, DEEPAR_HOSTING_MODE="async", SAGEMAKER_MAX_PAYLOAD_IN_MB="2048")
    with pytest.raises(Exception, match="between 1 and 100"):  # real-time and batch keep their limit
        config_with_memory(monkeypatch, 16, SAGEMAKER_MAX_PAYLOAD_IN_MB="200")
    with pytest.raises(Exception, match="DEEPAR_HOSTING_MODE='lambda' must be one of realtime, async, serverless"):
        config_with_memory(monkeypatch, 16, DEEPAR_HOSTING_MODE="lambda")


@pytest.mark.unit
@pytest.mark.parametrize("memory_gb, threads", [(1, 2), (2, 6), (3, 10), (4, 14), (5, 16), (6, 16)])
def test_serverless_runs_one_worker_with_threads_from_the_memory(monkeypatch, memory_gb, threads):
    config = config_with_memory(monkeypatch, memory_gb, DEEPAR_HOSTING_MODE="serverless")
    assert (config.workers, config.threads) == (1, threads) == (1, serverless_threads(memory_gb))
    assert config.max_payload_bytes == 4 * 2**20 and config.request_timeout == 60
    # Without the mode, workers follow the CPUs and the memory (1.5 GB each): 6 GB on 8 CPUs makes 4.
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    assert config_with_memory(monkeypatch, memory_gb).workers == min(8, max(1, int(memory_gb // 1.5)))


def test_serverless_mode_through_container_serve(torch_model: Path):
    with running_server(torch_model, DEEPAR_HOSTING_MODE="serverless") as server:
        assert len(gunicorn_workers(server.process.pid)) == 1
        startup = server.output(tail=None)  # the first line: under load nginx logs much while the master loads
        assert "1 worker(s) x " in startup and "body limit 4 MB, serverless hosting" in startup
        too_large = server.post(b"x" * (4 * 2**20 + 1))
        assert too_large.status_code == 413 and "4 MB" in too_large.json()["error"]


def async_body(lines: int, points: int, padding: int = 0) -> bytes:
    """JSON Lines instances; ``padding`` bytes of an unused field per line (records may carry any other field)."""
    target = [round(10 + (i % 24) / 3, 2) for i in range(points)]
    record = {"start": "2024-01-01 00:00:00", "target": target, **({"note": "x" * padding} if padding else {})}
    return (orjson.dumps(record) + b"\n") * lines


def test_async_mode_holds_no_json_value_above_the_document_limit(torch_model: Path):
    """#23 item 13: a body whose first line is not JSON was joined whole in memory (async: up to 1 GB).
    Now a whole JSON document is read only up to DEEPAR_MAX_DOCUMENT_MB (413 above it), and a longer JSON
    Lines line is skipped unread and answered with its own error line. 1 MB here, to keep the test small."""
    env = {
        "DEEPAR_HOSTING_MODE": "async",
        "DEEPAR_MAX_DOCUMENT_MB": "1",
        "DEEPAR_INFERENCE_CONFIG": '{"num_samples": 20}',
    }
    instance = {"start": "2024-01-01 00:00:00", "target": [round(10 + (i % 24) / 3, 2) for i in range(300)]}
    with running_server(torch_model, **env) as server:
        pretty = json.dumps({"instances": [instance] * 600}, indent=1)  # not JSON Lines: its first line is "{"
        assert len(pretty) > 2**20
        for body in (pretty, json.dumps({"instances": [instance] * 600})):  # pretty, and one 1.2 MB line
            too_large = server.post(body)
            assert too_large.status_code == 413, too_large.text[:300]
            assert "larger than 1 MB (DEEPAR_MAX_DOCUMENT_MB)" in too_large.json()["error"]
        small = server.post(json.dumps({"instances": [instance] * 3}, indent=1))
        assert small.status_code == 200 and len(small.json()["predictions"]) == 3, small.text[:300]
        long_line = {**instance, "note": "x" * (2 * 2**20)}
        lines = b"".join(orjson.dumps(r) + b"\n" for r in (instance, long_line, instance))
        answer = server.post(lines, content_type="application/jsonlines", Accept="application/jsonlines")
        assert answer.status_code == 200, answer.text[:300]
        first, second, third = (json.loads(line) for line in answer.text.splitlines())
        assert len(first["mean"]) == len(third["mean"]) == 6
        assert second == {
            "error": "line 2: longer than 1 MB (DEEPAR_MAX_DOCUMENT_MB): not read; send one series per line below that size"
        }
        assert "Traceback" not in server.output(tail=None)


def test_async_mode_answers_bodies_far_above_6_mb_and_ping_stays_up(torch_model: Path):
    env = {"DEEPAR_HOSTING_MODE": "async", "DEEPAR_INFERENCE_CONFIG": json.dumps({"num_samples": 100})}
    with running_server(torch_model, **env) as server:
        # 120 MB: 20x the real-time limit and above batch transform's 100 MB. Mostly padding: this proves
        # the transport (nginx, gunicorn, the spooled body, the line reader), not the forecasting speed.
        big = async_body(lines=120, points=1000, padding=2**20)
        assert len(big) > 120 * 2**20
        answer = server.post(big, content_type="application/jsonlines", Accept="application/jsonlines")
        assert answer.status_code == 200, answer.text[:500]
        predictions = [json.loads(line) for line in answer.text.splitlines()]
        assert len(predictions) == 120 and all(len(p["mean"]) == 6 for p in predictions)

        # A long forecast (many series): /ping answers within SageMaker's 2 s while it runs.
        many = async_body(lines=2000, points=200)
        result: dict = {}

        def forecast() -> None:
            result["response"] = server.post(many, content_type="application/jsonlines")
            result["done"] = time.monotonic()

        worker = threading.Thread(target=forecast)
        worker.start()
        pings = []
        while worker.is_alive():
            started = time.monotonic()
            status = requests.get(server.url + "/ping", timeout=2).status_code
            pings.append((status, time.monotonic() - started, time.monotonic()))
            time.sleep(0.2)
        worker.join()
        assert result["response"].status_code == 200, result["response"].text[:500]
        assert len(result["response"].text.splitlines()) == 2000
        during = [(status, seconds) for status, seconds, at in pings if at < result["done"]]
        assert len(during) >= 3, pings  # the forecast took long enough to prove something
        assert all(status == 200 and seconds < 2 for status, seconds in during), during


def test_serverless_image_reads_the_memory_limit_of_its_container(image, torch_model: Path, container_names):
    """`docker run --memory=1g` as a 1 GB serverless endpoint: the image sees its cgroup limit, not the host's."""
    name = f"deepar-test-{uuid.uuid4().hex[:8]}"
    container_names.append(name)
    port = free_port()
    docker(
        "run", "-d", "--name", name, "--memory=1g", "-e", "DEEPAR_HOSTING_MODE=serverless",
        "-p", f"127.0.0.1:{port}:8080", "-v", f"{torch_model}:/opt/ml:ro", image, "serve",
        check=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.2)
    logs = docker("logs", name)
    assert "1 worker(s) x 2 threads" in logs.stdout + logs.stderr, logs.stdout[-2000:] + logs.stderr[-2000:]
    assert requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).status_code == 200
