"""What `/invocations` does, without HTTP: request parsing -> prediction -> encoding.

The Flask routes in ``server.py`` only pick the request and response types and call this object.
Every prediction goes through one call, ``Model.sample``, which the batcher runs a slice at a time.
"""

from __future__ import annotations

import json
import logging
import time
from itertools import chain
from typing import Any, Callable, Iterator, Optional

import numpy as np

from ..contract import ContractError
from ..errors import UserError
from ..runtimes.model import Model
from .batcher import Batcher, DeadlineExceeded
from .codec import (
    InferenceConfig,
    Instance,
    OversizedLine,
    RequestError,
    check_budget,
    check_response_size,
    decode_json,
    encode,
    encode_lines,
    iter_lines,
    non_finite_rows,
    overflow_message,
    parse_instance,
    parse_json_request,
    predictions,
    response_bytes_per_series,
    split_lines,
)
from .mlflow_requests import answer_rows, is_mlflow_request, request_frame
from .server_config import ServerConfig

log = logging.getLogger(__name__)

JSON = "application/json"
JSONLINES = "application/jsonlines"
# A batch answer is sent as it is computed, in blocks of at most this many lines (errors only: nothing to wait for).
BATCH_FLUSH_LINES = 4096


class BatchInvariantError(RuntimeError):
    """A batch answer would not have exactly one line per input line: a bug, never sent as a success."""


class ForecastService:
    def __init__(
        self, model: Model, config: ServerConfig, batcher: Batcher, clock: Callable[[], float] = time.monotonic
    ):
        self.model = model
        self.config = config
        self.batcher = batcher
        self.clock = clock
        self.defaults: InferenceConfig = config.inference_defaults

    def deadline(self) -> float:
        return self.clock() + self.config.request_timeout

    # ------------------------------------------------------------ prediction

    def sample(
        self, instances: list[Instance], num_samples: int, deadline: float, rng: Optional[np.random.Generator] = None
    ) -> np.ndarray:
        """Samples for every instance, submitted a slice at a time so other requests get passes in between.

        ``rng``: a seeded request's generator; its slices draw from it in order (one slice waits for the last).
        """
        size = self.batcher.slice_size(num_samples)
        blocks = []
        for begin in range(0, len(instances), size):
            entries = [i.entry for i in instances[begin : begin + size]]
            job = self.batcher.submit(entries, num_samples, deadline, rng)
            try:
                blocks.append(self.batcher.wait(job))
            except DeadlineExceeded:
                raise RequestError(self._timeout_message(), status=503) from None
        return np.concatenate(blocks) if len(blocks) > 1 else blocks[0]

    def _timeout_message(self) -> str:
        if self.batcher.drain_deadline < float("inf"):
            return "the server is shutting down and this forecast could not finish in its grace period; retry"
        return (
            f"the forecast did not finish within {self.config.request_timeout} s (SAGEMAKER_MODEL_SERVER_TIMEOUT); "
            "send fewer series or samples"
        )

    # ------------------------------------------------------------ real-time

    def realtime(
        self, body: bytes, request_type: str, response_type: str, deadline: float, payload: Any = None
    ) -> bytes:
        if request_type == JSON:
            payload = decode_json_allowing_nan(body) if payload is None else payload
            if is_mlflow_request(payload):
                return self.mlflow(payload, response_type, deadline)
            instances, cfg = parse_json_request(payload, self.model, self.config.forward_fields)
            prefixes = [f"instances[{i}]." for i in range(len(instances))]
        else:
            lines = split_lines(body)
            if not lines:
                raise RequestError("body: no JSON lines")
            prefixes = [f"line {n}: " for n, _ in lines]
            instances = [
                parse_instance(decode_json(line, f"line {n}"), self.model, prefix, self.config.forward_fields)
                for (n, line), prefix in zip(lines, prefixes)
            ]
            cfg = self.defaults
        check_budget(len(instances), cfg.num_samples, self.config.max_sample_paths)
        if self.clock() > deadline:  # parsing a large body can take seconds on a busy machine
            raise RequestError(self._timeout_message(), status=503)
        forwarded = max((len(encode(i.forwarded)) for i in instances), default=0)
        check_response_size(
            len(instances),
            response_bytes_per_series(cfg, self.model.prediction_length, forwarded),
            self.config.max_response_bytes,
        )
        samples = self.sample(instances, cfg.num_samples, deadline, seeded_rng(cfg))
        bad = non_finite_rows(samples)
        if bad:
            raise RequestError(overflow_message(prefixes[bad[0]]))
        preds = predictions(samples, cfg, [i.forwarded for i in instances])
        if response_type == JSONLINES:
            return encode_lines(preds)
        return encode({"predictions": preds})

    # ------------------------------------------------------------ mlflow's scoring formats

    def mlflow(self, payload: dict, response_type: str, deadline: float) -> bytes:
        """``dataframe_split``/``dataframe_records``/``instances``/``inputs`` with ``params``: the long frame
        becomes a DeepAR request through the pyfunc's conversion (``frames``) and is answered like one; the
        answer is the pyfunc's long frame as mlflow's scoring server writes it, ``{"predictions": [rows]}``."""
        from .frames import FrameModel, frame_request, located

        try:
            frame, params = request_frame(payload)
            model = FrameModel(self.model.freq, self.model.prediction_length, self.model.features)
            request = frame_request(frame, model, params)
        except (ContractError, UserError) as error:
            raise RequestError(str(error)) from None
        try:
            answer = self.realtime(b"", JSON, JSON, deadline, payload=request.payload)
        except RequestError as error:
            raise RequestError(located(str(error), request), status=error.status) from None
        rows = answer_rows(request, decode_json(answer)["predictions"])
        return encode_lines(rows) if response_type == JSONLINES else encode({"predictions": rows})

    # ------------------------------------------------------------ batch transform

    def batch(
        self, lines: Iterator[bytes | OversizedLine], request_type: str, response_type: str, deadline: float
    ) -> tuple[str, Iterator[bytes]]:
        """(mimetype, body chunks). JSON Lines in, exactly one line out per input line, sent as computed.

        A whole ``{"instances": [...]}`` body (SplitType None) is answered like a real-time request: it is
        read into memory, so only up to ``max_document_bytes`` (else a 413; #23 item 13). ``lines`` come from
        ``codec.bounded_lines``: no line longer than that is ever held either.
        """
        numbered = iter_lines(lines)
        first = next(numbered, None)
        if first is None:
            raise RequestError("body: no JSON lines")
        if request_type == JSON:
            whole = self._instances_request(first, numbered)
            if whole is not None:
                payload, body = whole
                out = self.realtime(body, JSON, response_type, deadline, payload=payload)
                return (JSONLINES if response_type == JSONLINES else JSON), iter([out])
        return JSONLINES, self._batch_lines(chain([first], numbered), deadline)

    def _document_too_large(self) -> RequestError:
        limit = self.config.max_document_bytes // 2**20
        return RequestError(
            f"body: not JSON Lines, and as one JSON document larger than {limit} MB (DEEPAR_MAX_DOCUMENT_MB), "
            "the most one request is read into memory; send JSON Lines (one series per line)",
            status=413,
        )

    def _whole_document(self, line: bytes, rest: Iterator[tuple[int, bytes | OversizedLine]]) -> bytes:
        """The body from its first line on, joined only up to max_document_bytes (async bodies reach 1 GB)."""
        parts, size = [line], len(line)
        for _, text in rest:
            if isinstance(text, OversizedLine):
                raise self._document_too_large()
            size += len(text)
            if size > self.config.max_document_bytes:
                raise self._document_too_large()
            parts.append(text)
        return b"".join(parts)

    def _instances_request(
        self, first: tuple[int, bytes | OversizedLine], rest: Iterator[tuple[int, bytes | OversizedLine]]
    ) -> Optional[tuple[Any, bytes]]:
        """(payload, body) if the body is one {"instances": ...} object; else None (rest is then re-chained by caller)."""
        _, line = first
        if isinstance(line, OversizedLine):  # one value over the limit, in a body said to be JSON
            raise self._document_too_large()
        try:
            payload = decode_json(line)
        except RequestError:
            if not line.lstrip().startswith(b"{"):
                return None
            # Possibly a pretty-printed instances request: it needs the whole body, up to max_document_bytes.
            body = self._whole_document(line, rest)
            try:
                payload = decode_json(body)
            except RequestError:
                payload = None
            if isinstance(payload, dict) and ("instances" in payload or is_mlflow_request(payload)):
                return payload, body
            raise RequestError("body: not valid JSON (neither one JSON object nor JSON Lines)") from None
        if isinstance(payload, dict) and ("instances" in payload or is_mlflow_request(payload)):
            return payload, line
        return None

    def _batch_lines(self, numbered: Iterator[tuple[int, bytes | OversizedLine]], deadline: float) -> Iterator[bytes]:
        cfg = self.defaults
        rng = seeded_rng(cfg)  # DEEPAR_INFERENCE_CONFIG's seed: one stream for the whole body, in line order
        size = self.batcher.slice_size(cfg.num_samples)
        per_series = response_bytes_per_series(cfg, self.model.prediction_length)
        budget = self.config.max_response_bytes
        outputs: list[Any] = []  # the current block: one object per input line
        valid: list[tuple[int, str, Instance]] = []
        lines_in = lines_out = 0
        spent = 0
        for n, line in numbered:
            lines_in += 1
            prefix = f"line {n}: "
            try:
                if isinstance(line, OversizedLine):
                    raise RequestError(line.message(prefix))
                instance = parse_instance(
                    decode_json(line, f"line {n}"), self.model, prefix, self.config.forward_fields
                )
                cost = per_series + len(encode(instance.forwarded))
                if spent + cost > budget:
                    raise RequestError(
                        f"{prefix}not forecast: the answer would exceed the response limit of "
                        f"{budget // 2**20} MB (DEEPAR_MAX_RESPONSE_MB); split the input into smaller requests"
                    )
                spent += cost
            except RequestError as error:
                outputs.append({"error": str(error)})
            else:
                valid.append((len(outputs), prefix, instance))
                outputs.append(None)
            if len(valid) >= size or len(outputs) >= BATCH_FLUSH_LINES:
                block = self._finish_block(outputs, valid, deadline, rng)
                lines_out += len(outputs)
                outputs, valid = [], []
                yield block
        if outputs:
            block = self._finish_block(outputs, valid, deadline, rng)
            lines_out += len(outputs)
            yield block
        if lines_out != lines_in:
            raise BatchInvariantError(f"batch answer has {lines_out} lines for {lines_in} input lines")

    def _finish_block(
        self,
        outputs: list[Any],
        valid: list[tuple[int, str, Instance]],
        deadline: float,
        rng: Optional[np.random.Generator] = None,
    ) -> bytes:
        if valid:
            cfg = self.defaults
            instances = [instance for _, _, instance in valid]
            try:
                samples = self.sample(instances, cfg.num_samples, deadline, rng)
            except RequestError as error:  # deadline or drain: every pending line says so
                for slot, prefix, _ in valid:
                    outputs[slot] = {"error": f"{prefix}not forecast: {error}"}
            else:
                preds = predictions(samples, cfg, [i.forwarded for i in instances])
                bad = set(non_finite_rows(samples))
                for k, (slot, prefix, _) in enumerate(valid):
                    outputs[slot] = {"error": overflow_message(prefix)} if k in bad else preds[k]
        if any(o is None for o in outputs):
            raise BatchInvariantError("a batch line has no answer")
        return encode_lines(outputs)


def seeded_rng(config: InferenceConfig) -> Optional[np.random.Generator]:
    """The request's own generator when its configuration has a seed (same request, same forecast)."""
    return None if config.seed is None else np.random.default_rng(config.seed)


def decode_json_allowing_nan(body: bytes) -> Any:
    """A JSON body; bare ``NaN``/``Infinity`` tokens too, which are not JSON but what mlflow's clients (and
    Python's json) write for a missing float. orjson first: the slower parser only sees bodies it refused."""
    try:
        return decode_json(body)
    except RequestError:
        if b"NaN" not in body and b"Infinity" not in body:
            raise
        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            pass
        raise
