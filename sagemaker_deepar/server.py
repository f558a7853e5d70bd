"""The Flask app behind `container/serve`: /ping, /invocations, /execution-parameters.

Each gunicorn worker loads the model once in a background thread and runs all forward passes on
one batching thread (``batcher.py``); the routes only choose request and response types and call
``ForecastService`` (``service.py``). /ping answers 200 only when every worker has its model: each
worker marks itself ready in a folder that `container/serve` creates for the server.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Any, Iterator, Optional, Protocol

from flask import Flask, Response, request, stream_with_context
from werkzeug.exceptions import HTTPException

from . import runtimes
from .batcher import Batcher
from .errors import UserError
from .inference import Model, RequestError, bounded_lines, encode, parse_instance
from .logs import configure_logging
from .mlflow_folder import find_artifact
from .multi_model import multi_model_enabled
from .server_config import ServerConfig
from .service import JSON, JSONLINES, ForecastService

log = logging.getLogger("sagemaker_deepar.server")

JSONLINES_ALIASES = (JSONLINES, "application/x-jsonlines", "application/jsonl")
WORKER_BOOT_ERROR = 3
# Answers must leave the worker before gunicorn's graceful timeout kills it: keep room for one forward pass.
DRAIN_MARGIN_S = 3.0
SPOOL_IN_MEMORY_BYTES = 2**20
# A torch model the gunicorn master loaded before forking (gunicorn_hooks.py); workers share its pages.
_preloaded: Optional[Model] = None


def load_options(config: ServerConfig) -> runtimes.LoadOptions:
    return runtimes.LoadOptions(config.inference_runtime, config.max_batch_series, config.inference_threads)


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
    from .contract import ModelArtifact

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


class WorkerReadiness:
    """A worker's readiness, and that of every worker of the server: each ready worker leaves a pid file
    in ``ready_dir``, so /ping says 200 only once all of them can answer."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.ready = threading.Event()
        self.draining = False

    def mark_ready(self) -> None:
        if self.config.ready_dir:
            Path(self.config.ready_dir, str(os.getpid())).touch()
        self.ready.set()

    def all_workers_ready(self) -> bool:
        """This worker is ready, and so is every other worker of the server."""
        if not self.ready.is_set() or self.draining:
            return False
        if not self.config.ready_dir:
            return True
        return ready_workers(Path(self.config.ready_dir)) >= self.config.workers


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


def warm_up(model: Model) -> None:
    """One tiny forecast so the first real request does not pay for lazy initialisation."""
    entry: dict[str, Any] = {"start": "2020-01-01 00:00:00", "target": [1.0, 2.0, 3.0]}
    if model.cardinality:
        entry["cat"] = [0] * len(model.cardinality)
    if model.num_dynamic_feat:
        entry["dynamic_feat"] = [[0.0] * (3 + model.prediction_length)] * model.num_dynamic_feat
    parse_instance(entry, model, "warm-up: ")  # the request path's lazy state (pandas' offsets, ...)
    model.engine.prewarm()  # the runtime's: a session's first run, torch's first pass


def ready_workers(folder: Path) -> int:
    """Workers (by pid file) that loaded their model and are still alive; a replaced worker's file is ignored."""
    count = 0
    for path in folder.iterdir():
        try:
            os.kill(int(path.name), 0)
        except (ValueError, ProcessLookupError):
            continue
        except PermissionError:
            pass
        count += 1
    return count


def spool_body(stream: IO[bytes], limit: int, too_large: str) -> IO[bytes]:
    """The whole body, read before answering, into a temporary file (in memory only up to 1 MB).

    A batch answer is streamed as it is computed, and a proxy stops sending the request body once the
    response has begun (nginx does): so the body is read completely first, without holding it in memory.
    """
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES)
    total = 0
    while chunk := stream.read(SPOOL_IN_MEMORY_BYTES):
        total += len(chunk)
        if total > limit:  # a chunked body without nginx in front: nothing is answered but the 413
            spool.close()
            raise RequestError(too_large, status=413)
        spool.write(chunk)
    spool.seek(0)
    return spool


def closing_after(chunks: Iterator[bytes], resource: IO[bytes]) -> Iterator[bytes]:
    try:
        yield from chunks
    finally:
        resource.close()


class Drains(Protocol):
    def drain(self) -> None: ...


def install_drain_on_sigterm(state: Drains) -> None:
    """Chain to gunicorn's own SIGTERM handler (it stops accepting); only possible in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        state.drain()
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, on_sigterm)


# ---------------------------------------------------------------- HTTP


def error_response(status: int, message: str) -> Response:
    return Response(encode({"error": message}), status=status, mimetype=JSON)


def _response_type() -> str:
    accept = request.headers.get("Accept", "").strip()
    if not accept:
        return JSON
    match = request.accept_mimetypes.best_match([JSON, *JSONLINES_ALIASES])
    if match is None:
        raise RequestError(f"Accept header value '{accept}' not supported; use {JSON} or {JSONLINES}", status=406)
    return JSONLINES if match in JSONLINES_ALIASES else JSON


def _request_type() -> str:
    if not request.content_type:
        return JSON
    mimetype = request.mimetype
    if mimetype == JSON:
        return JSON
    if mimetype in JSONLINES_ALIASES:
        return JSONLINES
    raise RequestError(f"Customer Error: Content-Type header value '{request.content_type}' not supported", status=415)


def forecast_response(service: ForecastService, config: ServerConfig, too_large: str, batch_mode: bool) -> Response:
    """The /invocations answer for the current request (also a multi-model invoke's)."""
    deadline = service.deadline()
    request_type = _request_type()
    response_type = _response_type()
    if request.content_length is not None and request.content_length > config.max_payload_bytes:
        return error_response(413, too_large)
    if batch_mode:
        body = spool_body(request.environ["wsgi.input"], config.max_payload_bytes, too_large)
        try:
            lines = bounded_lines(body, config.max_document_bytes)  # no line or document held above it
            mimetype, chunks = service.batch(lines, request_type, response_type, deadline)
        except BaseException:
            body.close()
            raise
        return Response(stream_with_context(closing_after(chunks, body)), mimetype=mimetype)
    payload = request.get_data(cache=False)
    return Response(
        service.realtime(payload, request_type, response_type, deadline),
        mimetype=JSONLINES if response_type == JSONLINES else JSON,
    )


def create_app(config: Optional[ServerConfig] = None) -> Flask:
    configure_logging()  # gunicorn workers have no handler of their own for our loggers
    config = config or ServerConfig.from_env()
    too_large = f"body larger than {config.max_payload_bytes // 2**20} MB (SAGEMAKER_MAX_PAYLOAD_IN_MB)"
    if multi_model_enabled():
        from .multi_model_server import create_multi_model_app

        return create_multi_model_app(config, too_large)
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


def install_error_handlers(app: Flask, too_large: str) -> None:
    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        if error.code == 413:
            return error_response(413, too_large)
        return error_response(error.code or 500, f"{error.name}: {request.method} {request.path}")

    @app.errorhandler(Exception)
    def internal_error(error: Exception) -> Response:
        log.exception("internal error while answering %s %s", request.method, request.path)
        return error_response(500, "internal error; the traceback is in the endpoint's log")
