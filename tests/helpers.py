"""The tests' helpers: the serving ones live in devtools.serving, which the benchmarks (bench/) import
too; the ones here only tests use (running a client package's CLI, a boto3 client on moto server)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any, Mapping

from devtools.serving import children, free_port, gunicorn_workers, serve_container_args

__all__ = ["children", "free_port", "gunicorn_workers", "moto_client", "run_module", "serve_container_args"]

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
