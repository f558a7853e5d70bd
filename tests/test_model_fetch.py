"""`serve` outside SageMaker: DEEPAR_MODEL_URL (issue #25, item 1).

Black-box: `container/serve` on the host with an empty /opt/ml, the model in a moto server bucket
(AWS_ENDPOINT_URL), or behind a small S3 stand-in that streams slowly or answers 500s (to see that
/ping waits for the model and that requests are retried). In process (unit tier): the settings, the
key checks and local paths."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
import requests

from sagemaker_deepar.errors import UserError
from sagemaker_deepar.serving.model_fetch import MARKER, ModelFetchError, _inside, fetch_model
from sagemaker_deepar.serving.server_config import ModelSource

from .conftest import SERVE, Server, entrypoint_env, series
from .helpers import free_port

BUCKET = "models"


def tarball_of(model_root: Path) -> bytes:
    """model.tar.gz as a training job writes it: the model folder's files at the top level."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for path in sorted((model_root / "model").iterdir()):
            archive.add(path, arcname=path.name)
    return out.getvalue()


def evil_tarball() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        data = b"owned"
        info = tarfile.TarInfo("../outside.txt")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def s3(env: dict):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env["AWS_REGION"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture(scope="module")
def bucket(moto_env, torch_model) -> dict:
    """The model as a tarball, as an unpacked folder, and some broken objects."""
    client = s3(moto_env)
    client.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": moto_env["AWS_REGION"]})
    client.put_object(Bucket=BUCKET, Key="deepar/model.tar.gz", Body=tarball_of(torch_model))
    for path in (torch_model / "model").rglob("*"):
        if path.is_file():
            key = f"unpacked/{path.relative_to(torch_model / 'model').as_posix()}"
            client.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())
    client.put_object(Bucket=BUCKET, Key="corrupt/model.tar.gz", Body=b"\x1f\x8b not really gzip" * 50)
    client.put_object(Bucket=BUCKET, Key="evil/model.tar.gz", Body=evil_tarball())
    empty = io.BytesIO()
    with tarfile.open(fileobj=empty, mode="w:gz") as archive:
        info = tarfile.TarInfo("README.txt")
        info.size = 2
        archive.addfile(info, io.BytesIO(b"hi"))
    client.put_object(Bucket=BUCKET, Key="nomodel/model.tar.gz", Body=empty.getvalue())
    return moto_env


def aws_env(env: dict, **extra: str) -> dict:
    names = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION")
    return {**{name: env[name] for name in names}, **extra}


def serve_fails(root: Path, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    """`container/serve` that must stop by itself (the fetch failed); its exit status and log."""
    port = free_port()
    return subprocess.run(
        [sys.executable, str(SERVE)],
        env=entrypoint_env(root, DEEPAR_BIND_HOST="127.0.0.1", SAGEMAKER_BIND_TO_PORT=str(port), **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def forecast_ok(server: Server) -> None:
    response = server.post({"instances": [series(n=30)], "configuration": {"num_samples": 10}})
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"][0]["mean"]) == 6


# ---------------------------------------------------------------- through container/serve


@pytest.mark.parametrize("url", [f"s3://{BUCKET}/deepar/model.tar.gz", f"s3://{BUCKET}/unpacked"])
def test_serve_fetches_the_model_from_s3(bucket, tmp_path, url):
    root = tmp_path / "opt_ml"
    server = Server(root, **aws_env(bucket, DEEPAR_MODEL_URL=url))
    try:
        server.wait_ready()
        forecast_ok(server)
        assert (root / "model" / "deepar-metadata.json").is_file()
        assert (root / "model" / MARKER).read_text().strip() == url
        assert not [p for p in root.iterdir() if p.name.startswith(".model-fetch-")], "staging left behind"
        assert "fetched the model from " + url in server.output(tail=None)
    finally:
        server.stop()


@pytest.mark.parametrize(
    "url, reason",
    [
        (f"s3://{BUCKET}/missing/model.tar.gz", "no such object"),
        (f"s3://{BUCKET}/missing-folder", f"no object s3://{BUCKET}/missing-folder and no objects under"),
        ("s3://no-such-bucket/model.tar.gz", "no such bucket"),
        (f"s3://{BUCKET}/corrupt/model.tar.gz", "not a readable model.tar.gz"),
        (f"s3://{BUCKET}/evil/model.tar.gz", "not a readable model.tar.gz: | ../outside.txt"),
        (f"s3://{BUCKET}/nomodel/model.tar.gz", "holds no model trained by this container"),
        ("ftp://host/model.tar.gz", "unsupported scheme 'ftp'"),
        ("s3://bucket-only", "must name an object or folder inside the bucket"),
    ],
)
def test_a_bad_model_url_fails_the_start_with_a_named_reason(bucket, tmp_path, url, reason):
    root = tmp_path / "opt_ml"
    result = serve_fails(root, **aws_env(bucket, DEEPAR_MODEL_URL=url))
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert f"DEEPAR_MODEL_URL={url}" in last or f"DEEPAR_MODEL_URL='{url}'" in last, last
    assert all(part.strip() in last for part in reason.split("|")), last
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "outside.txt").exists()
    assert not (root / "model").exists() or not any((root / "model").iterdir())


def test_an_unreachable_endpoint_fails_after_the_retries(tmp_path):
    url = f"s3://{BUCKET}/deepar/model.tar.gz"
    dead = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    result = serve_fails(
        tmp_path / "opt_ml",
        AWS_ENDPOINT_URL=dead,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION="eu-west-1",
        DEEPAR_MODEL_URL=url,
        DEEPAR_MODEL_FETCH_ATTEMPTS="3",
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert f"DEEPAR_MODEL_URL={url}" in last and "unreachable after 3 attempt(s)" in last and dead in last, last
    assert time.monotonic() - started < 60


class FakeS3:
    """Just enough S3 (HEAD and GET of one object, path-style) to stream slowly or fail on purpose."""

    def __init__(self, body: bytes, fail_first: int = 0, seconds: float = 0.0):
        self.body, self.fail_first, self.seconds = body, fail_first, seconds
        self.requests: list[str] = []
        self.body_sent_at: float | None = None
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _answer(self, with_body: bool) -> None:
                fake.requests.append(f"{self.command} {self.path}")
                if len(fake.requests) <= fake.fail_first:
                    self.send_response(500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(fake.body)))
                self.send_header("Content-Type", "application/gzip")
                self.end_headers()
                if not with_body:
                    return
                pieces = 20
                step = -(-len(fake.body) // pieces)
                for start in range(0, len(fake.body), step):
                    self.wfile.write(fake.body[start : start + step])
                    self.wfile.flush()
                    time.sleep(fake.seconds / pieces)
                fake.body_sent_at = time.monotonic()

            def do_HEAD(self) -> None:
                self._answer(with_body=False)

            def do_GET(self) -> None:
                self._answer(with_body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> "FakeS3":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def fake_env(fake: FakeS3, **extra: str) -> dict:
    return dict(
        AWS_ENDPOINT_URL=fake.url,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_REGION="eu-west-1",
        DEEPAR_MODEL_URL=f"s3://{BUCKET}/deepar/model.tar.gz",
        **extra,
    )


def test_ping_is_never_200_before_the_model_is_in_place(torch_model, tmp_path):
    with FakeS3(tarball_of(torch_model), seconds=3.0) as fake:
        server = Server(tmp_path / "opt_ml", **fake_env(fake))
        try:
            ok_at, seen = None, []
            deadline = time.monotonic() + 120
            while ok_at is None and time.monotonic() < deadline:
                assert server.process.poll() is None, server.output()
                try:
                    seen.append(requests.get(server.url + "/ping", timeout=5).status_code)
                except requests.ConnectionError:
                    seen.append(0)
                if seen[-1] == 200:
                    ok_at = time.monotonic()
                time.sleep(0.05)
            assert ok_at is not None, server.output()
            assert fake.body_sent_at is not None and ok_at > fake.body_sent_at
            assert seen.count(0) > 10  # polled all through the slow download, never answered 200 then
            forecast_ok(server)
        finally:
            server.stop()


def test_server_errors_are_retried_then_the_model_loads(torch_model, tmp_path):
    with FakeS3(tarball_of(torch_model), fail_first=2) as fake:
        server = Server(tmp_path / "opt_ml", **fake_env(fake, DEEPAR_MODEL_FETCH_ATTEMPTS="3"))
        try:
            server.wait_ready()
            forecast_ok(server)
        finally:
            server.stop()
        assert fake.requests == ["GET /models/deepar/model.tar.gz"] * 3


def test_server_errors_beyond_the_attempts_fail_the_start(torch_model, tmp_path):
    with FakeS3(tarball_of(torch_model), fail_first=100) as fake:
        result = serve_fails(tmp_path / "opt_ml", **fake_env(fake, DEEPAR_MODEL_FETCH_ATTEMPTS="2"))
    assert result.returncode == 1
    assert len(fake.requests) == 2, fake.requests
    last = result.stderr.strip().splitlines()[-1]
    assert "DEEPAR_MODEL_URL=s3://models/deepar/model.tar.gz" in last and "500" in last, last


def test_without_the_variable_nothing_changes(server):
    """The SageMaker path: the model was put in place by the platform, no marker, no fetch."""
    assert requests.get(server.url + "/ping", timeout=5).status_code == 200
    assert "fetched the model" not in server.output(tail=None)


# ---------------------------------------------------------------- in process


def source(url: str, **env: str) -> ModelSource:
    found = ModelSource.from_env({"DEEPAR_MODEL_URL": url, **env})
    assert found is not None
    return found


@pytest.mark.unit
def test_settings_name_the_variable():
    assert ModelSource.from_env({}) is None
    assert ModelSource.from_env({"DEEPAR_MODEL_URL": "  "}) is None
    s3_source = source("s3://b/a/model.tar.gz")
    assert (s3_source.bucket, s3_source.key, s3_source.attempts) == ("b", "a/model.tar.gz", 5)
    assert source("/models/m", DEEPAR_MODEL_FETCH_ATTEMPTS="2").attempts == 2
    for env, message in [
        ({"DEEPAR_MODEL_URL": "models/m"}, "DEEPAR_MODEL_URL='models/m': a local model path must be absolute"),
        ({"DEEPAR_MODEL_URL": "https://x/m.tar.gz"}, "unsupported scheme 'https'"),
        ({"DEEPAR_MODEL_URL": "s3://b/"}, "must name an object or folder"),
        ({"DEEPAR_MODEL_URL": "s3://b/k", "DEEPAR_MODEL_FETCH_ATTEMPTS": "0"}, "DEEPAR_MODEL_FETCH_ATTEMPTS='0'"),
        ({"DEEPAR_MODEL_URL": "s3://b/k", "SAGEMAKER_MULTI_MODEL": "true"}, "multi-model endpoint"),
    ]:
        with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
            ModelSource.from_env(env)


@pytest.mark.unit
@pytest.mark.parametrize("relative", ["../x", "a/../../x", "/etc/passwd", "a\\..\\x", ""])
def test_folder_keys_that_leave_the_model_folder_are_refused(tmp_path, relative):
    with pytest.raises(ModelFetchError, match="would be written outside"):
        _inside(source("s3://b/m/"), tmp_path, relative, "m/" + relative)


@pytest.mark.unit
def test_local_tarball_and_folder(tmp_path):
    model = tmp_path / "trained" / "model"
    model.mkdir(parents=True)
    (model / "deepar-metadata.json").write_text("{}")
    with tarfile.open(tmp_path / "model.tar.gz", "w:gz") as archive:
        archive.add(model / "deepar-metadata.json", arcname="deepar-metadata.json")
    target = tmp_path / "opt_ml" / "model"
    # an empty metadata file is not a usable model: the contract's own message, behind the URL
    with pytest.raises(ModelFetchError, match=r"DEEPAR_MODEL_URL=.*model.tar.gz: not a usable model"):
        fetch_model(source(str(tmp_path / "model.tar.gz")), target)
    assert not target.exists() or not any(target.iterdir())
    with pytest.raises(ModelFetchError, match="no such file or folder"):
        fetch_model(source(str(tmp_path / "absent")), target)


@pytest.mark.unit
def test_a_folder_holding_another_model_is_never_overwritten(tmp_path, torch_model_files):
    target = tmp_path / "opt_ml" / "model"
    target.mkdir(parents=True)
    (target / "mounted.bin").write_text("theirs")
    with pytest.raises(ModelFetchError, match=r"already holds files \(mounted.bin\)"):
        fetch_model(source(f"file://{torch_model_files}"), target)
    assert (target / "mounted.bin").read_text() == "theirs"
    (target / "mounted.bin").unlink()
    fetch_model(source(f"file://{torch_model_files}"), target)  # empty: fetched
    (target / "stale.bin").write_text("from the first fetch")
    fetch_model(source(str(torch_model_files)), target)  # a restart: the previous fetch is replaced
    assert not (target / "stale.bin").exists() and (target / "deepar-metadata.json").is_file()


@pytest.fixture
def torch_model_files(tmp_path) -> Iterator[Path]:
    """A model folder with valid metadata, made in process (the unit tier trains nothing)."""
    from sagemaker_deepar.contract import ModelArtifact

    folder = tmp_path / "model-src"
    folder.mkdir()
    artifact = ModelArtifact(backend="torch", freq="h", prediction_length=6, context_length=12, likelihood="student-t")
    artifact.write(folder)
    (folder / "predictor").mkdir()
    (folder / "predictor" / "weights.bin").write_bytes(os.urandom(16))
    yield folder
