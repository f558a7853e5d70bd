"""gunicorn configuration hooks (``-c python:sagemaker_deepar.serving.gunicorn``): load the model in the master.

The master imports what the workers need before it binds its socket and forks (``server.preload_model``):
onnxruntime for a model served by its ONNX network, torch, GluonTS and the model itself for one served
by torch. Every worker starts with them in copy-on-write pages instead of importing and loading on
its own (seconds of GIL-bound work per worker, all workers at once on a busy machine, while /ping
waits). Until the master is done nginx answers /ping with a JSON 503; a model that cannot be loaded
stops the server with the reason in the log, as a worker would.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("sagemaker_deepar.server")


def on_starting(server) -> None:  # gunicorn's hook: in the master, before binding and forking
    from ..logs import configure_logging
    from .server import WORKER_BOOT_ERROR, preload_model
    from .server_config import ServerConfig

    configure_logging()
    config = ServerConfig.from_env()
    try:
        preload_model(config)
    except Exception:
        log.exception("the model could not be loaded from %s; stopping the server", config.model_dir)
        logging.shutdown()
        os._exit(WORKER_BOOT_ERROR)
