"""`container/serve`: derive the server settings, then run nginx in front of gunicorn (the app in container/predictor.py).

This process supervises both and forwards SIGTERM: nginx stops accepting and finishes the requests
it holds, gunicorn's workers answer every request in flight before the grace period ends (503 JSON
when a forecast cannot finish; see server.ModelState.drain). If either dies, the other is stopped
and the job fails with the reason in the log. With DEEPAR_FRONT=gunicorn (or no nginx installed)
gunicorn replaces this process and listens itself.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

from ..errors import UserError
from .front import find_nginx, nginx_conf
from .mlflow_folder import MlflowModelError, find_artifact
from .multi_model import multi_model_enabled
from .server_config import ModelSource, ServerConfig

log = logging.getLogger("sagemaker_deepar.serving")


def gunicorn_argv(config: ServerConfig, app_dir: Path, bind: Optional[str] = None) -> list[str]:
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        bind or f"{config.host}:{config.port}",
        "--workers",
        str(config.workers),
        "--worker-class",
        "gthread",
        "--threads",
        str(config.threads),
        # gthread's timeout watches the worker's event loop, which never blocks on a request.
        "--timeout",
        str(config.request_timeout + 30),
        "--graceful-timeout",
        str(config.graceful_timeout),
        "--keep-alive",
        str(config.keepalive),
        "--chdir",
        str(app_dir),
        "--error-logfile",
        "-",
        "--log-level",
        "info",
        "--no-control-socket",  # it would live under $HOME, which may be read-only
        "--config",  # the master loads the model before forking (serving/gunicorn.py)
        "python:sagemaker_deepar.serving.gunicorn",
    ]
    if os.path.isdir("/dev/shm"):  # worker heartbeat files: keep them off slow or read-only disks
        argv += ["--worker-tmp-dir", "/dev/shm"]
    return argv + ["predictor:app"]


def _run_dir() -> Path:
    """Sockets, nginx's temp files and the workers' ready marks; never under /opt/ml (it may be read-only)."""
    run_dir = Path(tempfile.mkdtemp(prefix="deepar-serve-"))
    run_dir.chmod(0o755)  # nginx's workers drop root privileges and must reach the socket
    return run_dir


def main(app_dir: Path) -> int:
    """``app_dir`` holds predictor.py (the folder of container/serve, in the image or a checkout)."""
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(levelname)s %(name)s] %(message)s")
    try:
        config = ServerConfig.from_env()
        source = ModelSource.from_env()
    except UserError as error:
        print(f"serve: configuration error: {error}", file=sys.stderr)
        return 1
    if source is not None:
        # Outside SageMaker (ECS, docker run): the model is fetched before anything listens, so /ping
        # cannot say 200 before it is in place; a failure ends the start with its reason.
        from .model_fetch import fetch_model

        try:
            fetch_model(source, Path(config.model_dir))
        except UserError as error:
            print(f"serve: the model could not be fetched: {error}", file=sys.stderr)
            return 1
    if not multi_model_enabled():
        try:  # an mlflow model folder without (or with several) DeepAR artifacts: fail now, named
            served = find_artifact(Path(config.model_dir))
        except MlflowModelError as error:
            log.error("serve: cannot serve %s: %s", config.model_dir, error)
            return 1
        log.info("model folder %s: %s", config.model_dir, served.describe())
    nginx = find_nginx() if config.front == "nginx" else None
    if config.front == "nginx" and nginx is None:
        log.warning(
            "nginx not found: gunicorn listens directly, without protection from slow clients "
            "(install nginx, or set DEEPAR_FRONT=gunicorn to silence this)"
        )
    log.info(
        "serving %s on %s:%d with %s, %d worker(s) x %d threads, %d inference thread(s) each "
        "(DEEPAR_INFERENCE_RUNTIME=%s), timeout %d s, "
        "body limit %d MB%s%s",
        config.model_dir,
        config.host,
        config.port,
        "nginx + gunicorn" if nginx else "gunicorn",
        config.workers,
        config.threads,
        config.inference_threads,
        config.inference_runtime,
        config.request_timeout,
        config.max_payload_bytes // 2**20,
        ", batch transform mode" if config.batch_mode else "",
        f", {config.hosting_mode} hosting" if config.hosting_mode != "realtime" else "",
    )
    run_dir = _run_dir()
    ready_dir = run_dir / "ready"
    ready_dir.mkdir()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(config.inference_threads),
        "MXNET_CPU_WORKER_NTHREADS": str(config.inference_threads),
        "DEEPAR_READY_DIR": str(ready_dir),
        # Multi-model endpoints: the registry every worker shares (sagemaker_deepar/serving/multi_model.py).
        "DEEPAR_MME_DIR": str(run_dir / "mme"),
    }
    if nginx is None:
        argv = gunicorn_argv(config, app_dir)
        os.execve(argv[0], argv, env)
    try:
        return supervise(config, app_dir, nginx, run_dir, env)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def supervise(config: ServerConfig, app_dir: Path, nginx: str, run_dir: Path, env: dict) -> int:
    socket_path = run_dir / "gunicorn.sock"
    conf = run_dir / "nginx.conf"
    conf.write_text(nginx_conf(config, run_dir, socket_path))
    stopping = False

    gunicorn = subprocess.Popen(gunicorn_argv(config, app_dir, bind=f"unix:{socket_path}"), env=env)
    front = subprocess.Popen([nginx, "-p", str(run_dir), "-e", "stderr", "-c", str(conf)])

    def on_signal(signum, frame):
        nonlocal stopping
        if stopping:
            return
        stopping = True
        log.info(
            "%s: draining (nginx finishes what it holds, gunicorn answers what is in flight)",
            signal.Signals(signum).name,
        )
        _signal(front, signal.SIGQUIT)  # nginx's graceful stop
        _signal(gunicorn, signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while True:
        for name, process, other in (("gunicorn", gunicorn, front), ("nginx", front, gunicorn)):
            code = process.poll()
            if code is None:
                continue
            if not stopping:
                log.error("%s exited with code %d; stopping the server", name, code)
                stopping = True
                _signal(other, signal.SIGQUIT if other is front else signal.SIGTERM)
            deadline = time.monotonic() + config.graceful_timeout + 4
            while other.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if other.poll() is None:
                other.kill()
                other.wait()
            return code if code else (other.returncode or 0)
        time.sleep(0.1)


def _signal(process: subprocess.Popen, signum: int) -> None:
    if process.poll() is None:
        process.send_signal(signum)
