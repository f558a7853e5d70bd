"""The Flask app behind `container/serve`: /ping, /invocations, /execution-parameters.

Each gunicorn worker loads the model once in a background thread (/ping answers 503 until it is
ready) and runs all forward passes on one batching thread: requests that arrive while a pass is
running share the next one, so concurrent single-series requests cost little more than one.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import orjson
from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from .errors import UserError
from .inference import (
    InferenceConfig,
    Instance,
    Model,
    RequestError,
    check_budget,
    decode_json,
    encode,
    encode_lines,
    inference_config_from_env,
    parse_instance,
    parse_json_request,
    predictions,
    split_lines,
)
from .logs import quiet_libraries
from .server_config import ServerConfig

log = logging.getLogger("sagemaker_deepar.server")

JSON = "application/json"
JSONLINES = "application/jsonlines"
JSONLINES_ALIASES = (JSONLINES, "application/x-jsonlines", "application/jsonl")
WORKER_BOOT_ERROR = 3


# ---------------------------------------------------------------- batching


@dataclass
class _Job:
    entries: list[dict]
    num_samples: int
    future: Future


class Batcher:
    """Runs forward passes on one thread; jobs queued during a pass are merged into the next."""

    def __init__(self, model: Model, max_batch_series: int, wait_ms: float):
        self.model = model
        self.max_batch_series = max_batch_series
        self.wait_s = wait_ms / 1000.0
        self.jobs: "queue.Queue[_Job]" = queue.Queue()
        threading.Thread(target=self._run, name="deepar-batcher", daemon=True).start()

    def submit(self, entries: list[dict], num_samples: int) -> Future:
        job = _Job(entries, num_samples, Future())
        self.jobs.put(job)
        return job.future

    def _collect(self) -> list[_Job]:
        jobs = [self.jobs.get()]
        total = len(jobs[0].entries)
        deadline = time.monotonic() + self.wait_s
        while total < self.max_batch_series:
            try:
                remaining = deadline - time.monotonic()
                job = self.jobs.get(timeout=remaining) if remaining > 0 else self.jobs.get_nowait()
            except queue.Empty:
                break
            jobs.append(job)
            total += len(job.entries)
        return jobs

    def _run(self) -> None:
        while True:
            jobs = self._collect()
            by_samples: dict[int, list[_Job]] = {}
            for job in jobs:
                by_samples.setdefault(job.num_samples, []).append(job)
            for num_samples, group in by_samples.items():
                self._forecast(group, num_samples)

    def _forecast(self, group: list[_Job], num_samples: int) -> None:
        self._run_jobs([job for job in group if job.future.set_running_or_notify_cancel()], num_samples)

    def _run_jobs(self, jobs: list[_Job], num_samples: int) -> None:
        if not jobs:
            return
        try:
            samples = self.model.sample([e for job in jobs for e in job.entries], num_samples)
        except Exception as error:
            if len(jobs) == 1:
                jobs[0].future.set_exception(error)
            else:  # isolate the failing job instead of failing its neighbours
                for job in jobs:
                    self._run_jobs([job], num_samples)
            return
        start = 0
        for job in jobs:
            job.future.set_result(samples[start:start + len(job.entries)])
            start += len(job.entries)


# ---------------------------------------------------------------- model state


class ModelState:
    """Loads the model in the background so the port answers /ping at once (503 until ready)."""

    def __init__(self, config: ServerConfig):
        self.config = config
        self.ready = threading.Event()
        self.model: Optional[Model] = None
        self.batcher: Optional[Batcher] = None
        self.defaults = inference_config_from_env(config.inference_config)
        threading.Thread(target=self._load, name="deepar-model-loader", daemon=True).start()

    def _load(self) -> None:
        started = time.perf_counter()
        try:
            import torch

            quiet_libraries()
            torch.set_num_threads(self.config.torch_threads)
            self.model = Model.load(Path(self.config.model_dir), self.config.max_batch_series)
            self.batcher = Batcher(self.model, self.config.max_batch_series, self.config.batch_wait_ms)
            self._warm_up()
        except Exception:
            # Without a model this server can never become healthy: stop now with the reason in the log.
            # Exit code 3 is gunicorn's "worker failed to boot", which halts the whole server.
            log.exception("the model could not be loaded from %s; stopping the server", self.config.model_dir)
            logging.shutdown()
            os._exit(WORKER_BOOT_ERROR)
        log.info("model loaded (%s backend, prediction_length %d) in %.2f s", self.model.backend,
                 self.model.prediction_length, time.perf_counter() - started)
        self.ready.set()

    def _warm_up(self) -> None:
        """One tiny forecast so the first real request does not pay for lazy initialisation."""
        assert self.model is not None
        entry: dict[str, Any] = {"start": "2020-01-01 00:00:00", "target": [1.0, 2.0, 3.0]}
        if self.model.cardinality:
            entry["cat"] = [0] * len(self.model.cardinality)
        if self.model.num_dynamic_feat:
            entry["dynamic_feat"] = [[0.0] * (3 + self.model.prediction_length)] * self.model.num_dynamic_feat
        self.model.sample([parse_instance(entry, self.model, "warm-up: ").entry], 2)


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


def _instances_request(body: bytes) -> Optional[dict]:
    """The decoded body if it is one {"instances": ...} request (batch transform with SplitType None)."""
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return payload if isinstance(payload, dict) and "instances" in payload else None


def create_app(config: Optional[ServerConfig] = None) -> Flask:
    config = config or ServerConfig.from_env()
    state = ModelState(config)
    app = Flask("sagemaker_deepar")
    app.config["MAX_CONTENT_LENGTH"] = config.max_payload_bytes

    def wait_for(entries: list[dict], num_samples: int) -> np.ndarray:
        assert state.batcher is not None
        future = state.batcher.submit(entries, num_samples)
        try:
            return future.result(timeout=config.request_timeout)
        except FutureTimeout:
            future.cancel()
            raise RequestError(f"the forecast did not finish within {config.request_timeout} s "
                               "(SAGEMAKER_MODEL_SERVER_TIMEOUT); send fewer series or samples", status=503) from None

    def forecast_instances(instances: list[Instance], cfg: InferenceConfig) -> list[dict]:
        samples = wait_for([i.entry for i in instances], cfg.num_samples)
        return predictions(samples, cfg, [i.forwarded for i in instances])

    def realtime(body: bytes, request_type: str, response_type: str, payload: Any = None) -> Response:
        assert state.model is not None
        if request_type == JSON:
            payload = decode_json(body) if payload is None else payload
            instances, cfg = parse_json_request(payload, state.model, config.forward_fields)
        else:
            lines = split_lines(body)
            if not lines:
                raise RequestError("body: no JSON lines")
            instances = [parse_instance(decode_json(line, f"line {n}"), state.model, f"line {n}: ", config.forward_fields)
                         for n, line in lines]
            cfg = state.defaults
        check_budget(len(instances), cfg.num_samples, config.max_sample_paths)
        preds = forecast_instances(instances, cfg)
        if response_type == JSONLINES:
            return Response(encode_lines(preds), mimetype=JSONLINES)
        return Response(encode({"predictions": preds}), mimetype=JSON)

    def batch(body: bytes) -> Response:
        """One output line per input line, in order; a bad line gets an error object of its own."""
        assert state.model is not None
        outputs: list[Any] = []
        valid: list[tuple[int, Instance]] = []
        for n, line in split_lines(body):
            try:
                instance = parse_instance(decode_json(line, f"line {n}"), state.model, f"line {n}: ", config.forward_fields)
            except RequestError as error:
                outputs.append({"error": str(error)})
                continue
            valid.append((len(outputs), instance))
            outputs.append(None)
        if not outputs:
            raise RequestError("body: no JSON lines")
        chunk = max(1, config.max_sample_paths // state.defaults.num_samples)
        for begin in range(0, len(valid), chunk):
            part = valid[begin:begin + chunk]
            for (slot, _), pred in zip(part, forecast_instances([i for _, i in part], state.defaults)):
                outputs[slot] = pred
        return Response(encode_lines(outputs), mimetype=JSONLINES)

    @app.get("/ping")
    def ping() -> Response:
        if state.ready.is_set():
            return Response(b"", status=200)
        return error_response(503, "the model is loading")

    @app.get("/execution-parameters")
    def execution_parameters() -> Response:
        return Response(encode({"MaxConcurrentTransforms": config.max_concurrent_transforms,
                                "BatchStrategy": config.batch_strategy,
                                "MaxPayloadInMB": config.max_payload_bytes // (1024 * 1024)}), mimetype=JSON)

    @app.post("/invocations")
    def invocations() -> Response:
        if not state.ready.is_set():
            return error_response(503, "the model is still loading; retry after /ping answers 200")
        try:
            request_type = _request_type()
            response_type = _response_type()
            body = request.get_data(cache=False)
            if config.batch_mode:
                payload = _instances_request(body) if request_type == JSON else None
                if payload is None:
                    return batch(body)
                return realtime(body, request_type, response_type, payload)
            return realtime(body, request_type, response_type)
        except RequestError as error:
            return error_response(error.status, str(error))
        except UserError as error:
            return error_response(400, str(error))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        if error.code == 413:
            return error_response(413, f"body larger than {config.max_payload_bytes // (1024 * 1024)} MB "
                                       "(SAGEMAKER_MAX_PAYLOAD_IN_MB)")
        return error_response(error.code or 500, f"{error.name}: {request.method} {request.path}")

    @app.errorhandler(Exception)
    def internal_error(error: Exception) -> Response:
        log.exception("internal error while answering %s %s", request.method, request.path)
        return error_response(500, "internal error; the traceback is in the endpoint's log")

    return app
