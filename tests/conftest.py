"""Helpers that build temporary /opt/ml trees and run the real entrypoints in subprocesses."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional

import pytest

from .helpers import free_port, moto_server

REPO = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- CI: a skip is a failure
# Tests skip when something they need is missing (Docker, nginx, Java, .venv-sdk, ...). On a laptop that
# is a convenience; in CI (CI set, as .ci/run does) it would hide an untested feature, so every skip, from
# any test, fixture or marker, is turned into a failure here, once, instead of in each test (#23 "Also").


def ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _as_ci_failure(report: pytest.TestReport | pytest.CollectReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped under CI={os.environ['CI']}, where nothing may be skipped: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    if ci():
        _as_ci_failure(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    outcome = yield  # a module skipped as a whole (pytest.skip(allow_module_level=True), importorskip)
    if ci():
        _as_ci_failure(outcome.get_result())


TRAIN = REPO / "container" / "train"

TINY = {  # a few seconds per run on 2 cores
    "time_freq": "H",
    "prediction_length": "6",
    "context_length": "12",
    "epochs": "2",
    "num_cells": "8",
    "num_layers": "1",
    "mini_batch_size": "16",
    "num_batches_per_epoch": "3",
    "num_eval_samples": "20",
    "seed": "1",
}


def series(n: int = 60, start: str = "2024-01-01 00:00:00", offset: float = 10.0, **extra: Any) -> dict:
    import math

    return {"start": start, "target": [round(offset + 5 * math.sin(i / 4) + (i % 3), 3) for i in range(n)], **extra}


def write_jsonl(path: Path, records: Iterable[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


@dataclass
class OptMl:
    root: Path

    def config(self, name: str, payload: Any) -> None:
        path = self.root / "input" / "config" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(payload if isinstance(payload, str) else json.dumps(payload))

    def hyperparameters(self, **overrides: Any) -> dict:
        params = {**TINY, **{k: v for k, v in overrides.items() if v is not None}}
        for k in [k for k, v in overrides.items() if v is None]:
            params.pop(k, None)
        self.config("hyperparameters.json", params)
        return params

    def channel(self, name: str, records: Iterable[Any], filename: str = "data.json") -> Path:
        return write_jsonl(self.root / "input" / "data" / name / filename, records)

    def channels(self, **content_types: Optional[str]) -> None:
        self.config(
            "inputdataconfig.json",
            {
                name: ({"ContentType": ct} if ct else {}) | {"TrainingInputMode": "File"}
                for name, ct in content_types.items()
            },
        )

    @property
    def failure(self) -> Optional[str]:
        path = self.root / "output" / "failure"
        return path.read_text() if path.exists() else None

    @property
    def metrics(self) -> dict:
        return json.loads((self.root / "output" / "data" / "metrics.json").read_text())

    @property
    def metadata(self) -> dict:
        return json.loads((self.root / "model" / "deepar-metadata.json").read_text())


@pytest.fixture
def opt_ml(tmp_path: Path) -> OptMl:
    root = tmp_path / "opt_ml"
    root.mkdir()
    return OptMl(root)


def entrypoint_env(root: Path, **extra: str) -> dict:
    """The environment an entrypoint runs in: this process's, with SAGEMAKER_BASE_DIR at ``root``. mlflow
    settings come only from ``extra``: mlflow's ``set_tracking_uri`` in an in-process test exports
    MLFLOW_TRACKING_URI, and a training job started later must not track into that test's store."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env = {**inherited, "SAGEMAKER_BASE_DIR": str(root), "PYTHONUNBUFFERED": "1", **extra}
    env.pop("TRAINING_JOB_NAME", None)
    return env


def run_train(opt_ml: OptMl, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TRAIN)],
        env=entrypoint_env(opt_ml.root, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def standard_job(opt_ml: OptMl, with_test: bool = True, n_series: int = 4, **hyperparameters: Any) -> None:
    opt_ml.hyperparameters(**hyperparameters)
    records = [series(offset=10 + 3 * i, cat=[i % 2]) for i in range(n_series)]
    opt_ml.channel("train", [{**r, "target": r["target"][:-6]} for r in records])
    if with_test:
        opt_ml.channel("test", records)
    opt_ml.channels(train="application/jsonlines", **({"test": "application/jsonlines"} if with_test else {}))


# ---------------------------------------------------------------- serving

SERVE = REPO / "container" / "serve"


def train_model(root: Path, backend: str, features: bool) -> Path:
    """Train a tiny model into ``root/model`` through the real entrypoint."""
    m = OptMl(root)
    m.hyperparameters(backend=backend, epochs="1", prediction_length="6", context_length="12")
    records = [series(n=48, offset=10 + i) for i in range(4)]
    if features:
        records = [
            {**r, "cat": [i % 2], "dynamic_feat": [[float(t % 24) for t in range(48)]]} for i, r in enumerate(records)
        ]
    m.channel("train", records)
    m.channels(train=None)
    result = run_train(m)
    assert result.returncode == 0, result.stderr[-3000:]
    return root


class Server:
    """`container/serve` in a subprocess on a free loopback port."""

    def __init__(self, root: Path, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # An unnamed temporary file: test runs write nothing into the model folder or the checkout.
        self.log = tempfile.TemporaryFile("w+")
        self.process = subprocess.Popen(
            [sys.executable, str(SERVE)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=entrypoint_env(root, DEEPAR_BIND_HOST="127.0.0.1", SAGEMAKER_BIND_TO_PORT=str(self.port), **env),
        )

    def wait_ready(self, timeout: float = 120) -> list[int]:
        """Poll /ping until 200; return every status seen on the way."""
        import time

        import requests

        seen, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.output()
            try:
                seen.append(requests.get(self.url + "/ping", timeout=5).status_code)
            except (
                requests.ConnectionError,
                requests.Timeout,
            ):  # a worker importing torch can hold the GIL for seconds
                time.sleep(0.05)
                continue
            if seen[-1] == 200:
                return seen
            time.sleep(0.05)
        raise AssertionError(f"server not ready after {timeout} s: {self.output()}")

    def post(self, body, content_type: str = "application/json", path: str = "/invocations", **headers):
        import requests

        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        return requests.post(self.url + path, data=data, headers={"Content-Type": content_type, **headers}, timeout=120)

    def output(self, tail: Optional[int] = 5000) -> str:
        """The server's log so far: its last ``tail`` characters, or all of it with ``tail=None``."""
        self.log.flush()
        self.log.seek(0)
        text = self.log.read()
        return text[-tail:] if tail else text

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.log.close()


@pytest.fixture(scope="session")
def feature_model(tmp_path_factory) -> Path:
    """torch model with cat (cardinality [2]) and one dynamic feature; prediction_length 6."""
    return train_model(tmp_path_factory.mktemp("feature_model"), "torch", features=True)


@pytest.fixture(scope="session")
def mxnet_model(tmp_path_factory) -> Path:
    return train_model(tmp_path_factory.mktemp("mxnet_model"), "mxnet", features=False)


@pytest.fixture(scope="session")
def torch_model(tmp_path_factory) -> Path:
    return train_model(tmp_path_factory.mktemp("torch_model"), "torch", features=False)


@contextmanager
def running_server(root: Path, **env: str) -> Iterator["Server"]:
    s = Server(root, **env)
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def server(torch_model):
    with running_server(torch_model) as s:
        yield s


@pytest.fixture(scope="module")
def feature_server(feature_model):
    with running_server(feature_model) as s:
        yield s


@contextmanager
def running_mlflow(root: Path, *options: str, timeout: float = 180) -> Iterator[str]:
    """``python -m mlflow_local`` (the README's command: SQLite store, artifacts under ``root``) on a free
    port; yields the URI it prints and stops it by its PID (it stops the server's process group)."""
    import queue
    import threading
    import time

    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow_local", "--root", str(root), "--port", "0", *options],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in process.stdout], daemon=True).start()  # type: ignore[union-attr]
    uri, deadline = None, time.monotonic() + timeout
    try:
        while uri is None and time.monotonic() < deadline and process.poll() is None:
            try:
                line = lines.get(timeout=1)
            except queue.Empty:
                continue
            if line.startswith("MLFLOW_TRACKING_URI="):
                uri = line.strip().split("=", 1)[1]
        assert uri, f"mlflow_local did not print its URI (exit status {process.poll()})"
        yield uri
    finally:
        process.terminate()
        process.wait(timeout=30)


# The SageMaker SDK side (.venv-sdk) driving the image: tests/test_sagemaker_local.py, tests/test_evaluation.py
IMAGE = os.environ.get("DEEPAR_IMAGE", "sagemaker-deepar:latest")
SDK_PYTHON = REPO / ".venv-sdk" / "bin" / "python"


def containers_of(image: str) -> set[str]:
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"ancestor={image}"], capture_output=True, text=True)
    return set(out.stdout.split())


_SUMMARY_COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected)\b")


def run_nested_pytest(python: Path, test_file: str, env: dict, timeout: float = 600) -> int:
    """A pytest suite run by another environment's Python (.venv-sdk): it must pass with at least one test
    passed and none skipped, failed or deselected, read from the child's summary line, not only its exit
    status (a child whose tests all skip exits 0; #23 "Also"). Returns the number passed."""
    result = subprocess.run(
        [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest", str(test_file)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    summary = [line for line in result.stdout.splitlines() if line.strip()][-1]
    counts = {
        kind.rstrip("s") if kind.startswith("error") else kind: int(n) for n, kind in _SUMMARY_COUNT.findall(summary)
    }
    passed = counts.pop("passed", 0)
    assert passed > 0 and not counts, f"{test_file}: expected only passed tests, the summary says {summary!r}"
    return passed


@pytest.fixture
def sdk_ready():
    missing = [
        what
        for what, ok in [
            (
                "a Docker engine with the image",
                subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode == 0
                if shutil.which("docker")
                else False,
            ),
            ("docker-compose", shutil.which("docker-compose") is not None),
            (".venv-sdk (scripts/bootstrap.sh)", SDK_PYTHON.exists()),
        ]
        if not ok
    ]
    if missing:
        pytest.skip(f"not available: {', '.join(missing)}")
    before = containers_of(IMAGE)
    yield
    leftover = containers_of(IMAGE) - before  # local mode leaves its containers and network behind
    if leftover:
        subprocess.run(["docker", "rm", "-f", *leftover], capture_output=True)
    subprocess.run(["docker", "network", "rm", "sagemaker-local"], capture_output=True)


# ---------------------------------------------------------------- AWS APIs on loopback (ingestion tests)

MOTO_REGION = "eu-west-1"


@pytest.fixture
def offline_aws(monkeypatch) -> Iterator[None]:
    """In-process moto for every AWS call the test makes: throwaway credentials, us-east-1, and no
    AWS_ENDPOINT_URL (which would send boto3 past the mock)."""
    from moto import mock_aws

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    for name in ("AWS_DEFAULT_REGION", "AWS_REGION"):
        monkeypatch.setenv(name, "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with mock_aws():
        yield


@pytest.fixture
def buckets(monkeypatch, offline_aws):
    """In-process moto S3 with the serverless stack's input and output buckets, and the batch function's
    environment without a model or an inference configuration (the forecaster is the test's to set)."""
    import boto3

    from serverless.handlers import forecasting

    monkeypatch.setenv("OUTPUT_BUCKET", "out-bucket")
    monkeypatch.delenv("FORECAST_MODEL", raising=False)
    monkeypatch.delenv("DEEPAR_INFERENCE_CONFIG", raising=False)
    forecasting._cached.clear()
    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="in-bucket")
    s3.create_bucket(Bucket="out-bucket")
    yield s3
    forecasting._cached.clear()


@pytest.fixture(scope="module")
def moto_env():
    """moto server on a free loopback port; the environment that points boto3 and the AWS CLI at it."""
    with moto_server(MOTO_REGION) as variables:
        env = {**os.environ, **variables, "INGESTION_IAM_WAIT": "5"}
        env.pop("AWS_PROFILE", None)
        yield env
