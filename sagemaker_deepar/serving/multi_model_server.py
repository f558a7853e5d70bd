"""The Flask app of a multi-model endpoint (``SAGEMAKER_MULTI_MODEL=true``): the /models routes.

Status codes follow SageMaker's MME container contract: 404 model not loaded (or url missing),
409 already loaded, 507 memory budget exhausted, 400 a bad request. Invocations take and answer
exactly what `/invocations` does in single-model mode (``http.forecast_response``); the header
``X-Deepar-Model-Cache: hit|miss`` says whether this worker already held the model.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Flask, Response, request

from .. import runtimes
from ..errors import UserError
from ..runtimes.model import Model
from .batcher import Batcher
from .codec import RequestError, decode_json, encode
from .http import (
    DRAIN_MARGIN_S,
    JSON,
    WorkerReadiness,
    error_response,
    forecast_response,
    install_drain_on_sigterm,
    install_error_handlers,
    load_options,
    warm_up,
)
from .multi_model import TARGET_MODEL_HEADERS, ModelRegistry, MultiModelConfig
from .server_config import ServerConfig
from .service import ForecastService

log = logging.getLogger("sagemaker_deepar.server")


@dataclass
class ServedModel:
    service: ForecastService

    def close(self) -> None:
        self.service.batcher.stop()


def load_served_model(model_dir: Path, config: ServerConfig) -> ServedModel:
    model = Model.load(model_dir, config.max_batch_series, config.inference_runtime, config.inference_threads)
    batcher = Batcher(model.sample, config.max_pass_paths, config.max_batch_series, config.batch_wait_ms)
    warm_up(model)
    return ServedModel(ForecastService(model, config, batcher))


class MultiModelState(WorkerReadiness):
    """Ready once the worker has imported what loading a model needs (so a cold invoke is only the model's load)."""

    def __init__(self, config: ServerConfig):
        super().__init__(config)
        self.registry = ModelRegistry(
            MultiModelConfig.from_env(config.workers), lambda model_dir: load_served_model(model_dir, config)
        )
        log.info(
            "multi-model mode: memory budget %.0f MB per worker%s, registry in %s",
            self.registry.config.memory_budget_bytes / 2**20,
            f", at most {self.registry.config.max_resident} resident" if self.registry.config.max_resident else "",
            self.registry.config.shared_dir,
        )
        threading.Thread(target=self._prepare, name="deepar-mme-prepare", daemon=True).start()

    def _prepare(self) -> None:
        # What loading a model with the preferred runtime imports (seconds for torch): a cold invoke then pays
        # only its model. A model that runtime cannot serve (mxnet, or trained before the ONNX export) imports
        # its own on its first load instead of delaying every worker's start.
        runtimes.prepare(self.config.inference_runtime, load_options(self.config))
        self.mark_ready()

    def drain(self) -> None:
        self.draining = True
        self.registry.drain(time.monotonic() + max(1.0, self.config.graceful_timeout - DRAIN_MARGIN_S))


def _json(payload: Any, status: int = 200) -> Response:
    return Response(encode(payload), status=status, mimetype=JSON)


def create_multi_model_app(config: ServerConfig, too_large: str) -> Flask:
    state = MultiModelState(config)
    install_drain_on_sigterm(state)
    registry = state.registry
    app = Flask("sagemaker_deepar")
    app.config["MAX_CONTENT_LENGTH"] = config.max_payload_bytes
    install_error_handlers(app, too_large)

    def answer(action, *args: Any) -> Response:
        try:
            return action(*args)
        except RequestError as error:
            return error_response(error.status, str(error))
        except UserError as error:  # e.g. an artifact that does not load
            return error_response(400, str(error))
        except MemoryError:
            log.exception("out of memory answering %s %s", request.method, request.path)
            return error_response(507, "out of memory; unload idle models")

    @app.get("/ping")
    def ping() -> Response:
        # 200 with zero models: SageMaker loads models only after the endpoint is healthy.
        if state.all_workers_ready():
            return Response(b"", status=200)
        return error_response(503, "shutting down" if state.draining else "the server is starting")

    def load() -> Response:
        body = decode_json(request.get_data(cache=False), "body")
        if not isinstance(body, dict):
            raise RequestError('body: expected {"model_name": ..., "url": ...}')
        log.info("load %r (target model %s)", body.get("model_name"), _target_model())
        return _json(registry.load(body.get("model_name"), body.get("url")))

    @app.post("/models")
    def load_model() -> Response:
        return answer(load)

    @app.get("/models")
    def list_models() -> Response:
        return answer(lambda: _json(registry.listing(request.args.get("limit"), request.args.get("next_page_token"))))

    @app.get("/models/<name>")
    def describe_model(name: str) -> Response:
        return answer(lambda: _json(registry.describe(name)))

    @app.delete("/models/<name>")
    def unload_model(name: str) -> Response:
        return answer(lambda: _json(registry.unload(name)))

    def invoke(name: str) -> Response:
        if not state.ready.is_set():
            raise RequestError("the server is starting; retry after /ping answers 200", status=503)
        with registry.use(name) as (service, hit):
            # Real-time answers only: the body is complete before the model may be evicted again.
            response = forecast_response(service, config, too_large, batch_mode=False)
        response.headers["X-Deepar-Model-Cache"] = "hit" if hit else "miss"
        return response

    @app.post("/models/<name>/invoke")
    def invoke_model(name: str) -> Response:
        return answer(invoke, name)

    @app.post("/invocations")
    def invocations() -> Response:
        return error_response(
            404, "this is a multi-model endpoint (SAGEMAKER_MULTI_MODEL=true): invoke POST /models/<name>/invoke"
        )

    return app


def _target_model() -> str:
    return next((request.headers[h] for h in TARGET_MODEL_HEADERS if h in request.headers), "-")
