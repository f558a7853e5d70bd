"""The request codec: DeepAR requests checked against a model, response budgets and encoding (no model here:
``runtimes.model.Model``).

The request and response follow SageMaker's built-in DeepAR; every validation error names its place
(``instances[3].dynamic_feat[0]: length 30, expected 48 (len(target) + prediction_length)``).
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import orjson

from .. import contract
from ..contract import (  # noqa: F401 - the request contract, re-exported for the server's modules
    DEFAULT_QUANTILES,
    MAX_ABS_VALUE,
    MAX_NUM_SAMPLES,
    MAX_QUANTILES,
    OUTPUT_TYPES,
    ContractError,
    FeatureSpec,
    InferenceConfig,
    ModelArtifact,
    predictions,
)
from ..errors import RequestError, UserError  # noqa: F401 - RequestError: re-exported for the server's modules
from ..runtimes.model import Model
from ..training.data import RecordError, parse_record

log = logging.getLogger(__name__)

# Upper bound of one float32 as orjson writes it ("-1.1754944e-38") plus its comma: response-size estimates
# use it so that an answer never exceeds its budget.
MAX_FLOAT_CHARS = 15


# ---------------------------------------------------------------- requests


def parse_configuration(
    raw: Any, where: str = "configuration", defaults: Optional[InferenceConfig] = None
) -> InferenceConfig:
    """The contract's check, answered as a 400."""
    try:
        return contract.parse_configuration(raw, where, defaults or InferenceConfig(), number_key=_number_key)
    except ContractError as error:
        raise RequestError(str(error)) from None


def _number_key(q: float) -> str:
    return orjson.dumps(q).decode()  # 0.1 -> "0.1", as the client wrote it in JSON


def inference_config_from_env(value: Optional[str]) -> InferenceConfig:
    """``DEEPAR_INFERENCE_CONFIG`` (batch transform); a bad value is a deployment error, raised at start."""
    if not value:
        return InferenceConfig()
    try:
        raw = json.loads(value)
    except ValueError as error:
        raise UserError(f"DEEPAR_INFERENCE_CONFIG is not valid JSON: {error}") from None
    return parse_configuration(raw, where="DEEPAR_INFERENCE_CONFIG")


@dataclass
class Instance:
    entry: dict
    forwarded: dict = field(default_factory=dict)


def parse_instance(raw: Any, model: Model, prefix: str, forward_fields: Sequence[str] = ()) -> Instance:
    """One request instance to a GluonTS entry, checked against what the model was trained with.

    ``prefix`` locates it in messages: ``instances[3].`` (JSON request) or ``line 5: `` (JSON Lines).
    """
    try:
        entry = parse_record(raw, model.freq, dynamic_extra_length=model.prediction_length)
    except RecordError as error:
        raise RequestError(f"{prefix}{error}") from None
    _check_magnitude(entry["target"], f"{prefix}target")
    if entry.get("feat_dynamic_real") is not None:
        for index, row in enumerate(entry["feat_dynamic_real"]):
            _check_magnitude(row, f"{prefix}dynamic_feat[{index}]")
    cats = entry.pop("feat_static_cat", None)
    feats = entry.pop("feat_dynamic_real", None)
    record = {"target": entry["target"], "cat": cats, "dynamic_feat": feats}
    problems = model.features.check(record, prediction_length=model.prediction_length, where=prefix)
    if problems:
        raise RequestError(problems[0])
    if model.cardinality:
        entry["feat_static_cat"] = cats
    if model.num_dynamic_feat:
        entry["feat_dynamic_real"] = feats
    forwarded = {name: raw[name] for name in forward_fields if name in raw}
    return Instance(entry=entry, forwarded=forwarded)


def _check_magnitude(values: np.ndarray, where: str) -> None:
    too_large = np.flatnonzero(np.abs(np.nan_to_num(values, nan=0.0)) > MAX_ABS_VALUE)
    if too_large.size:
        i = int(too_large[0])
        raise RequestError(
            f"{where}[{i}]: {float(values[i]):g} is too large in magnitude to forecast "
            f"(at most {MAX_ABS_VALUE:g}); rescale the series"
        )


def decode_json(body: bytes, where: str = "body") -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise RequestError(f"{where}: not valid JSON ({error})") from None


# A 400 lists at most this many bad instances (each on its own line), bounding the error body (~100 bytes each).
MAX_LISTED_INSTANCE_ERRORS = 100


def parse_json_request(
    payload: Any, model: Model, forward_fields: Sequence[str] = ()
) -> tuple[list[Instance], InferenceConfig]:
    """A decoded ``{"instances": [...], "configuration": {...}}`` request."""
    if not isinstance(payload, dict) or "instances" not in payload:
        raise RequestError('body: expected a JSON object {"instances": [...], "configuration": {...}}')
    unknown = sorted(set(payload) - {"instances", "configuration"})
    if unknown:
        raise RequestError(f"body: unknown field(s) {', '.join(unknown)}; allowed: instances, configuration")
    instances = payload["instances"]
    if not isinstance(instances, list) or not instances:
        raise RequestError("instances: expected a non-empty list of time series")
    config = parse_configuration(payload.get("configuration"))
    parsed, problems = [], []
    for index, raw in enumerate(instances):
        try:
            parsed.append(parse_instance(raw, model, f"instances[{index}].", forward_fields))
        except RequestError as error:
            problems.append(str(error))
            if len(problems) == MAX_LISTED_INSTANCE_ERRORS:
                break
    if problems:
        # Every bad instance, one per line (the first line as before): a client removes them all and sends
        # the rest once, instead of one call per bad instance (issue #23 item 11).
        raise RequestError("\n".join(problems))
    return parsed, config


def split_lines(body: bytes) -> list[tuple[int, bytes]]:
    """(line number, line) of every non-blank line; a trailing newline and blank lines are tolerated."""
    return list(iter_lines(iter(io.BytesIO(body))))


@dataclass(frozen=True)
class OversizedLine:
    """A line longer than the per-value limit: skipped unread (never held), answered with an error (#23 item 13)."""

    limit: int

    def message(self, where: str) -> str:
        return (
            f"{where}longer than {self.limit // 2**20} MB (DEEPAR_MAX_DOCUMENT_MB): not read; "
            "send one series per line below that size"
        )


def bounded_lines(stream: Any, max_line_bytes: int, chunk: int = 2**20) -> Iterator[bytes | OversizedLine]:
    """The lines of a binary stream, none held longer than ``max_line_bytes``: a longer line is read through
    in ``chunk`` pieces and discarded, and an OversizedLine stands in for it (so the line numbers stay right)."""
    while True:
        line = stream.readline(max_line_bytes + 1)
        if not line:
            return
        if len(line) <= max_line_bytes or line.endswith(b"\n"):
            yield line
            continue
        while (rest := stream.readline(chunk)) and not rest.endswith(b"\n"):
            pass
        yield OversizedLine(max_line_bytes)


def iter_lines(lines: Iterator[Any]) -> Iterator[tuple[int, Any]]:
    """(line number, line) of every non-blank line of a stream of lines, without holding the body.
    An OversizedLine (from ``bounded_lines``) is never blank: it gets its line number and its answer."""
    for n, line in enumerate(lines, start=1):
        if isinstance(line, OversizedLine) or line.strip():
            yield n, line


# ---------------------------------------------------------------- responses


def check_budget(num_series: int, num_samples: int, max_sample_paths: int) -> None:
    """Refuse requests that cannot finish inside SageMaker's invocation time limit."""
    if num_series * num_samples > max_sample_paths:
        raise RequestError(
            f"request too large: {num_series} series x {num_samples} samples = {num_series * num_samples} sample paths; "
            f"the limit is {max_sample_paths} per request (send fewer series or fewer num_samples)"
        )


def response_bytes_per_series(config: InferenceConfig, prediction_length: int, forwarded_bytes: int = 0) -> int:
    """An upper bound of one series' encoded prediction: checked against the response budget before computing."""
    values = 0
    size = 2 + forwarded_bytes  # {}
    if "mean" in config.output_types:
        values += prediction_length
        size += len('"mean":[],')
    if "quantiles" in config.output_types:
        values += prediction_length * len(config.quantile_keys)
        size += len('"quantiles":{},') + sum(len(orjson.dumps(k)) + len(":[],") for k in config.quantile_keys)
    if "samples" in config.output_types:
        values += prediction_length * config.num_samples
        size += len('"samples":[],') + 3 * config.num_samples
    return size + values * MAX_FLOAT_CHARS + 2  # "," between predictions, newline in JSON Lines


def check_response_size(num_series: int, per_series: int, max_bytes: int) -> None:
    """Refuse a request whose answer could exceed the response budget (DEEPAR_MAX_RESPONSE_MB)."""
    if num_series * per_series + 64 > max_bytes:
        raise RequestError(
            f"response too large: {num_series} series x up to {per_series} bytes each exceeds the limit of "
            f"{max_bytes // 2**20} MB (DEEPAR_MAX_RESPONSE_MB); send fewer series, quantiles or samples"
        )


def non_finite_rows(samples: np.ndarray) -> list[int]:
    """Series whose forecast overflowed (e.g. targets near the float32 limit): answered as errors, never as nulls."""
    bad = ~np.isfinite(samples.reshape(samples.shape[0], -1)).all(axis=1)
    return [int(i) for i in np.flatnonzero(bad)]


def overflow_message(prefix: str) -> str:
    return (
        f"{prefix}target: the forecast overflowed float32 (values of target or dynamic_feat too large in "
        "magnitude, e.g. near 1e37); rescale the series"
    )


def encode(obj: Any) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def encode_lines(objs: Sequence[Any]) -> bytes:
    return b"".join(encode(o) + b"\n" for o in objs)
