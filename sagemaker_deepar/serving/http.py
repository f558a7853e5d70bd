"""The HTTP kit both apps share (single-model ``server``, multi-model ``multi_model_server``): readiness of
every worker, the SIGTERM drain, JSON error answers and handlers, request/response types and the
/invocations answer, and the warm-up of a freshly loaded model.
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import IO, Any, Iterator, Protocol

from flask import Flask, Response, request, stream_with_context
from werkzeug.exceptions import HTTPException

from .. import runtimes
from ..runtimes.model import Model
from .codec import RequestError, bounded_lines, encode, parse_instance
from .server_config import ServerConfig
from .service import JSON, JSONLINES, ForecastService

log = logging.getLogger("sagemaker_deepar.server")

JSONLINES_ALIASES = (JSONLINES, "application/x-jsonlines", "application/jsonl")
# Answers must leave the worker before gunicorn's graceful timeout kills it: keep room for one forward pass.
DRAIN_MARGIN_S = 3.0
SPOOL_IN_MEMORY_BYTES = 2**20


def load_options(config: ServerConfig) -> runtimes.LoadOptions:
    return runtimes.LoadOptions(config.inference_runtime, config.max_batch_series, config.inference_threads)


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
