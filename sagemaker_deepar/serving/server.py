"""The single-model Flask app behind `container/serve`: /ping, /invocations, /execution-parameters.

Each gunicorn worker loads the model once in a background thread and runs all forward passes on
one batching thread (``batcher.py``); the routes only choose request and response types and call
``ForecastService`` (``service.py``). /ping answers 200 only when every worker has its model: each
worker marks itself ready in a folder that `container/serve` creates for the server.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Optional

from flask import Flask, Response

from .. import runtimes
from ..errors import UserError
from ..runtimes.model import Model
from .batcher import Batcher
from .codec import RequestError, encode
from .http import (
    DRAIN_MARGIN_S,
    WorkerReadiness,
    error_response,
    forecast_response,
    install_drain_on_sigterm,
    install_error_handlers,
    load_options,
    warm_up,
)
from .mlflow_folder import find_artifact
from .multi_model import multi_model_enabled
from .server_config import ServerConfig
from .service import JSON, ForecastService

log = logging.getLogger("sagemaker_deepar.server")

WORKER_BOOT_ERROR = 3
# A torch model the gunicorn master loaded before forking (serving/gunicorn.py); workers share its pages.
_preloaded: Optional[Model] = None


def preload_model(config: ServerConfig) -> None:
    """In the gunicorn master, before forking: what every worker needs, loaded once in shared pages.

    The runtime the workers will choose (``runtimes.choose``) imports its libraries here; a runtime whose
    loaded model survives fork (``LOAD_BEFORE_FORK``: torch) also loads the model, with one warm-up draw on
    one intra-op thread, where no OpenMP thread pool exists to be broken by fork (the workers draw again
    anyway). ONNX: each worker creates its own onnxruntime session after the fork (milliseconds), since a
    session's thread pools and allocator are not documented as fork-safe. mxnet: its engine threads do not
    survive fork, so each worker loads it.
    """
    global _preloaded
    from ..contract import ModelArtifact

    if multi_model_enabled():  # no /opt/ml/model: each worker loads the models it is asked for
        return
    model_dir = artifact_dir(config)
    artifact = ModelArtifact.read(model_dir)
    options = load_options(config)
    started = time.perf_counter()
    name = runtimes.choose(model_dir, artifact, options)
    runtimes.prepare(name, options)
    if not runtimes.runtime_module(name).LOAD_BEFORE_FORK:
        log.info("%s runtime imported in the gunicorn master in %.2f s", name, time.perf_counter() - started)
        return
    model = Model.load(model_dir, config.max_batch_series, config.inference_runtime, config.inference_threads)
    if config.inference_threads == 1:
        warm_up(model)
    _preloaded = model
    log.info("model loaded in the gunicorn master in %.2f s; the workers share it", time.perf_counter() - started)


def artifact_dir(config: ServerConfig) -> Path:
    """The folder of the DeepAR artifact under the model folder: itself, or inside an mlflow model."""
    return find_artifact(Path(config.model_dir)).artifact_dir


class ModelState(WorkerReadiness):
    """Loads the model in the background so the port answers /ping at once (503 until ready)."""

    def __init__(self, config: ServerConfig):
        super().__init__(config)
        self.model: Optional[Model] = None
        self.batcher: Optional[Batcher] = None
        self.service: Optional[ForecastService] = None
        threading.Thread(target=self._load, name="deepar-model-loader", daemon=True).start()

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            self.model = _preloaded or Model.load(
                artifact_dir(self.config),
                self.config.max_batch_series,
                self.config.inference_runtime,
                self.config.inference_threads,
            )
            self.batcher = Batcher(
                self.model.sample, self.config.max_pass_paths, self.config.max_batch_series, self.config.batch_wait_ms
            )
            warm_up(self.model)
            self.service = ForecastService(self.model, self.config, self.batcher)
        except Exception:
            # Without a model this server can never become healthy: stop now with the reason in the log.
            # Exit code 3 is gunicorn's "worker failed to boot", which halts the whole server.
            log.exception("the model could not be loaded from %s; stopping the server", self.config.model_dir)
            logging.shutdown()
            os._exit(WORKER_BOOT_ERROR)
        log.info(
            "model %s (%s backend, %s runtime, prediction_length %d) in %.2f s",
            "ready (loaded before fork)" if self.model is _preloaded else "loaded",
            self.model.backend,
            self.model.runtime,
            self.model.prediction_length,
            time.perf_counter() - started,
        )
        self.mark_ready()

    def drain(self) -> None:
        """SIGTERM: every request still running must be answered before the worker is stopped."""
        self.draining = True
        deadline = time.monotonic() + max(1.0, self.config.graceful_timeout - DRAIN_MARGIN_S)
        if self.batcher is not None:
            self.batcher.drain(deadline)
        log.info(
            "SIGTERM: finishing requests in flight; those not done in %.0f s get 503",
            self.config.graceful_timeout - DRAIN_MARGIN_S,
        )


def create_single_model_app(config: ServerConfig, too_large: str) -> Flask:
    state = ModelState(config)
    install_drain_on_sigterm(state)
    app = Flask("sagemaker_deepar")
    app.config["MAX_CONTENT_LENGTH"] = config.max_payload_bytes
    install_error_handlers(app, too_large)

    @app.get("/ping")
    def ping() -> Response:
        if state.all_workers_ready():
            return Response(b"", status=200)
        return error_response(503, "shutting down" if state.draining else "the model is loading")

    @app.get("/execution-parameters")
    def execution_parameters() -> Response:
        return Response(
            encode(
                {
                    "MaxConcurrentTransforms": config.max_concurrent_transforms,
                    "BatchStrategy": config.batch_strategy,
                    "MaxPayloadInMB": config.max_payload_bytes // 2**20,
                }
            ),
            mimetype=JSON,
        )

    @app.post("/invocations")
    def invocations() -> Response:
        service = state.service
        if not state.ready.is_set() or service is None:
            return error_response(503, "the model is still loading; retry after /ping answers 200")
        try:
            return forecast_response(service, config, too_large, config.streams_bodies)
        except RequestError as error:
            return error_response(error.status, str(error))
        except UserError as error:
            return error_response(400, str(error))

    return app
