"""The tests' helpers: the serving ones live in devtools.serving, which the benchmarks (bench/) import
too; the ones here only tests use (running a client package's CLI, a boto3 client on moto server)."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Iterator, Mapping

from devtools.serving import children, free_port, gunicorn_workers, serve_container_args

__all__ = [
    "children",
    "StubHandler",
    "free_port",
    "gunicorn_workers",
    "http_stub",
    "moto_client",
    "moto_server",
    "run_module",
    "serve_container_args",
]

REPO = Path(__file__).resolve().parent.parent


def run_module(module: str, env: Mapping[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m <module> <args>`` from the checkout's root with ``env`` (PYTHONPATH: this checkout),
    stdout and stderr captured as text."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def moto_client(env: Mapping[str, str], service: str, region: str = "") -> Any:
    """A boto3 client of ``service`` on the moto server ``env`` names (``AWS_ENDPOINT_URL``, and
    ``AWS_REGION`` unless ``region`` is given), with moto's test credentials."""
    import boto3

    return boto3.client(
        service,
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=region or env["AWS_REGION"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@contextlib.contextmanager
def moto_server(region: str) -> Iterator[dict[str, str]]:
    """moto server on a free loopback port, from an empty account; the variables that point boto3 and
    the AWS CLI at it (``AWS_ENDPOINT_URL``, moto's test credentials, ``region``)."""
    import requests
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    try:
        # moto keeps its state per process, not per server: start each module from an empty account.
        requests.post(f"http://127.0.0.1:{port}/moto-api/reset", timeout=10).raise_for_status()
        yield {
            "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": region,
            "AWS_DEFAULT_REGION": region,
        }
    finally:
        server.stop()


class StubHandler(BaseHTTPRequestHandler):
    """The handler of a stand-in HTTP service (a serving container, a proxy): ``request_body`` reads the
    request, ``answer`` writes one response; requests are not logged."""

    def request_body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def answer(self, status: int, body: bytes, headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def http_stub(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """``handler`` served on a free loopback port by a background thread; its base URL. Stopped on exit."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
