"""Shared by the SDK driver scripts: fake AWS credentials, telemetry opt-out, and a network guard."""

from __future__ import annotations

import os
import socket
from pathlib import Path

REGION = "us-east-1"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"
VIOLATIONS: list[str] = []


def guard_network() -> None:
    """Refuse (and record) every connection that is not to loopback or a unix socket."""
    original = socket.socket.connect

    def connect(self, address):
        if self.family == socket.AF_UNIX or (
            isinstance(address, tuple) and str(address[0]) in ("127.0.0.1", "::1", "localhost")
        ):
            return original(self, address)
        VIOLATIONS.append(str(address))
        raise ConnectionRefusedError(f"test guard: no connection to {address} allowed")

    socket.socket.connect = connect


def offline_environment(workdir: Path) -> None:
    config = workdir / "sagemaker-config.yaml"
    config.write_text("SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n      TelemetryOptOut: true\n")
    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
            "AWS_REGION": REGION,
            "SAGEMAKER_USER_CONFIG_OVERRIDE": str(config),
        }
    )
