"""Lambda ``forecast_api`` behind API Gateway's REST proxy integration.

- ``GET /forecast/{device_id}?pollutant=...&horizon=...``: the device's recent history from the
  curated Parquet lake (``LAKE_URI``, partitioned ``date=YYYY-MM-DD/``; only the newest
  ``HISTORY_DAYS`` partitions are listed and read, and only three columns), resampled to
  ``TIME_FREQ`` (mean per period of the contract's grid, any supported frequency; empty periods
  missing), then forecast;
- ``POST /forecast``: a DeepAR request ``{"instances": [...], "configuration": {...}}``.

Errors are JSON ``{"error": code, "message": ..., "parameter"?: ...}``: 400 bad parameter (which and
why), 404 unknown device or pollutant, 429 throttled, 502 forecaster failed, 504 forecaster timed out,
500 internal error. A 5xx or 429 never carries the backend's own text (issue #23, low): it is logged
with the request id, and the answer gives the id (``request_id``) to quote.
(API Gateway itself answers 403 without the API key and 429 beyond the usage plan.)
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

import numpy as np

from ingestion.glue_job import POLLUTANTS
from sagemaker_deepar import contract
from sagemaker_deepar.settings import SettingsError

from . import forecasting
from .inputs import json_problem, loads_line
from .settings import FunctionSettings, current

log = logging.getLogger("forecast_api")
log.setLevel(logging.INFO)
MAX_BODY_BYTES = 6 * 2**20


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, parameter: Optional[str] = None):
        super().__init__(message)
        self.status, self.code, self.parameter = status, code, parameter

    def body(self) -> dict:
        return {"error": self.code, "message": str(self), **({"parameter": self.parameter} if self.parameter else {})}


def response(status: int, body: Any, headers: Optional[dict[str, str]] = None) -> dict:
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json", **(headers or {})},
        "body": json.dumps(body),
    }


# ---------------------------------------------------------------- the lake


class Lake:
    """The curated Parquet lake on S3 (``s3://bucket/prefix/``) or a local folder."""

    def __init__(self, uri: str, s3: Any = None):
        self.uri = uri.rstrip("/") + "/"
        self.s3 = s3

    def _client(self) -> Any:
        if self.s3 is None:
            from awsinfra.clients import client

            self.s3 = client("s3")
        return self.s3

    def partitions(self) -> list[str]:
        """The ``date=...`` partition names, without listing their files."""
        if not self.uri.startswith("s3://"):
            return sorted(p.name for p in Path(self.uri).glob("date=*") if p.is_dir())
        bucket, _, prefix = self.uri[5:].partition("/")
        names = []
        for page in (
            self._client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
        ):
            names += [c["Prefix"][len(prefix) :].rstrip("/") for c in page.get("CommonPrefixes", [])]
        return sorted(n for n in names if n.startswith("date="))

    def files(self, partition: str) -> list[bytes]:
        if not self.uri.startswith("s3://"):
            return [p.read_bytes() for p in sorted((Path(self.uri) / partition).glob("*.parquet"))]
        bucket, _, prefix = self.uri[5:].partition("/")
        s3, out = self._client(), []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}{partition}/"):
            for item in page.get("Contents", []):
                if item["Key"].endswith(".parquet") or "." not in item["Key"].rsplit("/", 1)[-1]:
                    out.append(s3.get_object(Bucket=bucket, Key=item["Key"])["Body"].read())
        return out

    def history(self, device_id: str, pollutant: str, days: int) -> tuple[np.ndarray, np.ndarray]:
        """(timestamps as datetime64[s], values) of one device and pollutant in the newest ``days`` partitions
        dated up to tomorrow (UTC): a later one can only come from a device's broken clock (the ETL
        quarantines those, issue #23 item 2), and one left from before must not hide every other device."""
        import pyarrow.compute as pc
        import pyarrow.parquet as pq

        latest = f"date={(datetime.now(timezone.utc) + timedelta(days=1)).date().isoformat()}"
        stamps, values, seen_column = [], [], False
        for partition in [name for name in self.partitions() if name <= latest][-days:]:
            for content in self.files(partition):
                schema = pq.read_schema(io.BytesIO(content))
                if pollutant not in schema.names:
                    continue
                seen_column = True
                table = pq.read_table(io.BytesIO(content), columns=["device_id", "timestamp", pollutant])
                table = table.filter(pc.equal(table["device_id"], device_id))
                if table.num_rows:
                    stamps.append(np.asarray(table["timestamp"].to_numpy(zero_copy_only=False), dtype="datetime64[s]"))
                    values.append(np.asarray(table[pollutant].to_numpy(zero_copy_only=False), dtype=float))
        if not seen_column:
            raise ApiError(
                404, "unknown_pollutant", f"pollutant {pollutant!r}: no such column in the lake", "pollutant"
            )
        if not stamps:
            raise ApiError(
                404,
                "unknown_device",
                f"device {device_id!r}: no readings in the last {days} day partition(s)",
                "device_id",
            )
        return np.concatenate(stamps), np.concatenate(values)


def resample(stamps: np.ndarray, values: np.ndarray, time_freq: str) -> tuple[str, list]:
    """(start, target): the mean per period of ``time_freq`` (the contract's grid, so M and W too),
    empty periods as "NaN"."""
    keep = ~np.isnan(values)
    if not keep.any():
        raise ApiError(404, "no_data", "no non-missing readings in the history window")
    grid = contract.period_means(stamps[keep], values[keep], time_freq, "TIME_FREQ")
    return grid.start, contract.target_list(grid.means[:, 0], decimals=6)


# ---------------------------------------------------------------- routes


def _integer(params: dict, name: str, low: int, high: int, default: Optional[int]) -> Optional[int]:
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, "bad_parameter", f"{name}: {raw!r} is not an integer", name) from None
    if not low <= value <= high:
        raise ApiError(400, "bad_parameter", f"{name}: {value} is outside {low}..{high}", name)
    return value


def get_forecast(event: dict, settings: FunctionSettings) -> dict:
    device_id = ((event.get("pathParameters") or {}).get("device_id") or "").strip()
    params = event.get("queryStringParameters") or {}
    if not device_id:
        raise ApiError(400, "bad_parameter", "device_id: required in the path /forecast/{device_id}", "device_id")
    pollutant = (params.get("pollutant") or "").strip()
    if not pollutant:
        raise ApiError(
            400, "bad_parameter", "pollutant: required (for example pollutant=nitrogen_dioxide)", "pollutant"
        )
    if pollutant not in POLLUTANTS:  # the lake's measured columns (the Glue job's), not its other columns
        raise ApiError(
            400,
            "bad_parameter",
            f"pollutant: {pollutant!r} is not a measured pollutant; one of {', '.join(POLLUTANTS)}",
            "pollutant",
        )
    horizon = _integer(params, "horizon", 1, 10_000, None)
    if not settings.lake_uri:
        raise ApiError(404, "no_lake", "this API has no lake configured (LAKE_URI); use POST /forecast")
    stamps, values = Lake(settings.lake_uri).history(device_id, pollutant, settings.history_days)
    start, target = resample(stamps, values, settings.time_freq)
    prediction = forecasting.from_environment(settings).forecast([{"start": start, "target": target}], None)[0]
    length = len(prediction.get("mean") or next(iter(prediction.get("quantiles", {}).values()), []))
    if horizon is not None and horizon > length:
        raise ApiError(
            400, "bad_parameter", f"horizon: {horizon} is beyond the model's prediction_length {length}", "horizon"
        )
    if horizon is not None:
        prediction = {k: _cut(v, horizon) for k, v in prediction.items()}
    return {
        "device_id": device_id,
        "pollutant": pollutant,
        "history_start": start,
        "history_points": len(target),
        "forecast": prediction,
    }


def _cut(value: Any, horizon: int) -> Any:
    if isinstance(value, dict):
        return {k: _cut(v, horizon) for k, v in value.items()}
    if isinstance(value, list) and value and isinstance(value[0], list):
        return [row[:horizon] for row in value]
    return value[:horizon] if isinstance(value, list) else value


def post_forecast(event: dict, settings: FunctionSettings) -> dict:
    body = event.get("body") or ""
    if event.get("isBase64Encoded"):
        import base64

        body = base64.b64decode(body).decode(errors="replace")
    if len(body) > MAX_BODY_BYTES:
        raise ApiError(400, "bad_request", f"body: {len(body)} bytes, at most {MAX_BODY_BYTES}")
    try:
        payload = loads_line(body)
    except ValueError as error:
        raise ApiError(400, "bad_request", f"body: not JSON: {error}") from None
    # Issue #23 item 10: what the forecaster's parser would refuse for the whole request (a 400-digit
    # integer, deep nesting, Infinity) is named here, with its place, instead of failing as a 502.
    problem = json_problem(payload)
    if problem:
        parameter = problem.split(".", 1)[0] if problem.startswith("instances[") else None
        raise ApiError(400, "bad_parameter", problem, parameter)
    instances = payload.get("instances") if isinstance(payload, dict) else None
    if not isinstance(instances, list) or not instances:
        raise ApiError(400, "bad_parameter", "instances: required, a non-empty list of DeepAR series", "instances")
    # The contract's record check per instance, before any call: every bad one listed, as the server does.
    problems = [p.at(f"instances[{i}].") for i, raw in enumerate(instances) if (p := contract.record_problem(raw))]
    if problems:
        raise ApiError(
            400, "bad_parameter", "\n".join(problems[: contract.MAX_LISTED_PROBLEMS]), problems[0].split(".", 1)[0]
        )
    configuration = payload.get("configuration")
    try:  # checked before any call (issue #23 item 11): a bad configuration costs no forecaster request
        contract.parse_configuration(configuration, "configuration")
    except contract.ContractError as error:
        raise ApiError(400, "bad_parameter", str(error), "configuration") from None
    try:
        predictions = forecasting.from_environment(settings).forecast(instances, configuration)
    except forecasting.RequestRejected as error:
        parameter = str(error).split(".", 1)[0] if str(error).startswith("instances[") else None
        raise ApiError(400, "bad_parameter", str(error), parameter) from None
    return {"predictions": predictions}


def request_id(event: dict) -> str:
    """API Gateway's id of the request (in its access logs too), else a new one."""
    return str((event.get("requestContext") or {}).get("requestId") or uuid.uuid4())


def handler(event: dict, context: Any = None) -> dict:
    method, resource = event.get("httpMethod"), event.get("resource")
    rid = request_id(event)
    try:
        settings = current()  # parsed once per request, here at the entry, and handed down
    except SettingsError as error:  # the deployment's fault, not the caller's: named in the log and the answer
        log.error("request %s: the function's settings are unusable: %s", rid, error)
        body = {"error": "misconfigured", "message": f"{error} (request id {rid})", "request_id": rid}
        return response(500, body)
    try:
        if method == "GET" and resource == "/forecast/{device_id}":
            return response(200, get_forecast(event, settings))
        if method == "POST" and resource == "/forecast":
            return response(200, post_forecast(event, settings))
        raise ApiError(404, "no_route", f"{method} {event.get('path')}: no such route")
    except ApiError as error:
        return response(error.status, error.body())
    except forecasting.RequestRejected as error:
        return response(400, {"error": "bad_request", "message": str(error)})
    except forecasting.BackendError as error:
        code = {429: "throttled", 504: "forecaster_timeout"}.get(error.status, "forecaster_failed")
        log.error("request %s: forecaster: %s", rid, error)
        said = {
            "throttled": "the forecaster is over its capacity; retry later",
            "forecaster_timeout": "the forecaster did not answer in time",
            "forecaster_failed": "the forecaster failed",
        }[code]
        body = {"error": code, "message": f"{said} (request id {rid})", "request_id": rid}
        if isinstance(error, forecasting.BackendThrottled):
            retry = {"Retry-After": str(error.retry_after)}
            return response(429, {**body, "retry_after_s": error.retry_after}, retry)
        return response(error.status, body)
    except contract.ContractError as error:
        return response(400, {"error": "bad_parameter", "message": str(error)})
    except Exception:  # a bug: logged with its traceback, answered as a 500 the caller can quote
        log.exception("request %s: internal error", rid)
        body = {"error": "internal_error", "message": f"internal error (request id {rid})", "request_id": rid}
        return response(500, body)
