"""Serving processes and containers as the tests and the benchmarks start and inspect them."""

from __future__ import annotations

import subprocess
from pathlib import Path

from awsinfra.clients import free_port

__all__ = ["children", "free_port", "gunicorn_workers", "serve_container_args"]


def children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def gunicorn_workers(serve_pid: int) -> list[int]:
    """Worker pids of the gunicorn master that `container/serve` started (nginx's processes excluded)."""
    for child in children(serve_pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"gunicorn" in cmdline:
            return children(child)
    return []


def serve_container_args(image: str, model_root: Path, port: int, name: str, *options: str) -> list[str]:
    """The ``docker`` arguments that start ``image``'s `serve` detached as ``name``, with ``model_root`` as
    a read-only /opt/ml (as SageMaker mounts it) and port 8080 published on loopback ``port``;
    ``options`` go before the image (``-e K=V``, ``--memory``)."""
    return [
        "run", "-d", "--name", name, "-p", f"127.0.0.1:{port}:8080", "-v", f"{model_root}:/opt/ml:ro",
        *options, image, "serve",
    ]  # fmt: skip
