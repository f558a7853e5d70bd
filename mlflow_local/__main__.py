"""``python -m mlflow_local``: an mlflow tracking server on this machine, in one command.

SQLite backend store (``<root>/mlflow.db``; mlflow 3 refuses the plain file store for the registry) and a
local artifact folder (``<root>/artifacts``) served through the server, so clients need no storage
credentials. ``<root>`` defaults to ``.mlflow/`` in the working folder (git-ignored). It binds 127.0.0.1,
prints ``MLFLOW_TRACKING_URI=http://127.0.0.1:<port>`` once the server answers, and runs until Ctrl-C or
SIGTERM, which stop the whole server (its workers included).

    python -m mlflow_local                   # port 5000
    python -m mlflow_local --port 0          # any free port
    python -m mlflow_local --docker          # on the Docker bridge (172.17.0.1): containers reach it too
    export MLFLOW_TRACKING_URI=http://127.0.0.1:5000

``--docker`` is for jobs that run in containers on this machine (``python -m mlops build --local``, SDK
local mode): it binds the Docker bridge's address, which both this machine and its containers reach
(not the outside network). mlflow's own Host-header check accepts private addresses.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

from sagemaker_deepar.cli import run_command
from sagemaker_deepar.errors import UserError

DEFAULT_ROOT = Path(".mlflow")
START_TIMEOUT_S = 120.0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m mlflow_local", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--root", type=Path, default=DEFAULT_ROOT, help="folder of the store and artifacts (default .mlflow)"
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument(
        "--docker",
        action="store_true",
        help="bind the Docker bridge's address instead (docker0, e.g. 172.17.0.1): for training containers",
    )
    p.add_argument("--port", type=int, default=5000, help="port (default 5000; 0 picks a free one)")
    p.add_argument("--workers", type=int, default=1, help="server worker processes (default 1)")
    return p


def interface_address(name: str) -> str:
    """The IPv4 address of a network interface (SIOCGIFADDR), e.g. docker0's 172.17.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))  # SIOCGIFADDR
    return socket.inet_ntoa(packed[20:24])


def docker_bridge_address() -> str:
    try:
        return interface_address("docker0")
    except OSError:
        raise UserError(
            "--docker: this machine has no docker0 interface with an IPv4 address (is the Docker engine running?)"
        ) from None


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def server_command(root: Path, host: str, port: int, workers: int = 1) -> list[str]:
    """The ``mlflow server`` command line for a store and artifact folder under ``root``."""
    root = root.resolve()
    return [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination",
        str(root / "artifacts"),
        "--serve-artifacts",
        "--host",
        host,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]


def wait_until_up(url: str, process: subprocess.Popen, stopping: list[int], timeout: float = START_TIMEOUT_S) -> None:
    """Until ``/health`` answers 200; returns early when a stop signal came (``stopping`` not empty)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stopping:
        if process.poll() is not None:
            raise UserError(f"the mlflow server exited with status {process.returncode} before answering (see above)")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    if stopping:
        return
    raise UserError(f"the mlflow server did not answer {url}/health within {timeout:.0f} s")


def signal_group(process: subprocess.Popen, signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except ProcessLookupError:  # already gone
        pass


def stop(process: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM to the server's process group (mlflow runs its workers as children), SIGKILL after ``grace``."""
    if process.poll() is not None:
        return
    signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    if process.poll() is None:
        signal_group(process, signal.SIGKILL)
        process.wait()


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: at least 1")
    host = docker_bridge_address() if args.docker else args.host
    port = args.port or free_port(host)
    try:
        (args.root / "artifacts").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"--root {args.root}: cannot create the store folder ({error.strerror})") from None
    url = f"http://{host}:{port}"
    # Its own process group: stopping it stops the workers it starts.
    process = subprocess.Popen(server_command(args.root, host, port, args.workers), start_new_session=True)
    stopping: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        # Only a flag here: waiting on the process inside a handler can deadlock with the wait it interrupted.
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        announced = False
        while process.poll() is None and not stopping:
            if not announced:
                wait_until_up(url, process, stopping)
                if stopping:
                    break
                print(f"MLFLOW_TRACKING_URI={url}", flush=True)
                print(
                    f"store: {args.root.resolve() / 'mlflow.db'}, artifacts: {args.root.resolve() / 'artifacts'}",
                    flush=True,
                )
                announced = True
            time.sleep(0.2)
        return 0 if stopping else (process.returncode or 0)
    finally:
        stop(process)


if __name__ == "__main__":
    sys.exit(run_command(main, debug_env="MLFLOW_LOCAL_DEBUG"))
