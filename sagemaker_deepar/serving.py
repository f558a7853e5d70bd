"""`container/serve`: derive the server settings, then exec gunicorn with the app in container/predictor.py.

gunicorn replaces this process (exec), so it is PID 1 in the container and receives SIGTERM: it stops
accepting, lets in-flight requests finish (graceful timeout < SageMaker's 30 s) and replaces workers
that die.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

from .errors import UserError
from .server_config import ServerConfig


def gunicorn_argv(config: ServerConfig, app_dir: Path) -> list[str]:
    argv = [
        sys.executable, "-m", "gunicorn",
        "--bind", f"{config.host}:{config.port}",
        "--workers", str(config.workers),
        "--worker-class", "gthread",
        "--threads", str(config.threads),
        # gthread's timeout watches the worker's event loop, which never blocks on a request.
        "--timeout", str(config.request_timeout + 30),
        "--graceful-timeout", str(config.graceful_timeout),
        "--keep-alive", str(config.keepalive),
        "--chdir", str(app_dir),
        "--error-logfile", "-",
        "--log-level", "info",
        "--no-control-socket",  # it would live under $HOME, which may be read-only
    ]
    if os.path.isdir("/dev/shm"):  # worker heartbeat files: keep them off slow or read-only disks
        argv += ["--worker-tmp-dir", "/dev/shm"]
    return argv + ["predictor:app"]


def check_inference_config(value: str | None) -> None:
    """Fail at start, not on the first request (the full check runs again in each worker)."""
    if value:
        try:
            json.loads(value)
        except ValueError as error:
            raise UserError(f"DEEPAR_INFERENCE_CONFIG is not valid JSON: {error}") from None


def main(app_dir: Path) -> int:
    """``app_dir`` holds predictor.py (the folder of container/serve, in the image or a checkout)."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(levelname)s %(name)s] %(message)s")
    try:
        config = ServerConfig.from_env()
        check_inference_config(config.inference_config)
    except UserError as error:
        print(f"serve: configuration error: {error}", file=sys.stderr)
        return 1
    logging.getLogger("sagemaker_deepar").info(
        "serving %s on %s:%d with %d worker(s) x %d threads, %d torch thread(s) each, timeout %d s%s",
        config.model_dir, config.host, config.port, config.workers, config.threads, config.torch_threads,
        config.request_timeout, ", batch transform mode" if config.batch_mode else "")
    env = {**os.environ, "OMP_NUM_THREADS": str(config.torch_threads),
           "MXNET_CPU_WORKER_NTHREADS": str(config.torch_threads)}
    argv = gunicorn_argv(config, app_dir)
    os.execve(argv[0], argv, env)
    return 0  # not reached
