"""Lambda ``batch_forecast``: an SQS batch of S3 upload events -> forecasts for each uploaded object.

For ``incoming/<name>`` it writes, to the output bucket (``OUTPUT_BUCKET``):
- ``forecasts/<name>.jsonl``: one line per input series, in order (ids forwarded); a bad series gets
  ``{"error": ...}`` in its place so that line N still answers series N;
- ``errors/<name>.jsonl``: ``{"location": "<key>:<line>", "error": ...}`` per bad line, or, for an
  object that cannot be read, the reason and the receive count (the message is retried, then dead-lettered);
- ``forecasts/<name>.manifest.json`` last: counts, model, timings, and the object's ETag/version, which
  makes redelivery idempotent (a manifest for the same version means the work is done).

Answers SQS partial batch failures (``ReportBatchItemFailures``) so that one bad object does not
redeliver its neighbours.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.parse
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from itertools import islice
from typing import Any, Callable, Iterable, Iterator, Optional, TypeVar

from sagemaker_deepar import contract
from sagemaker_deepar.settings import SettingsError

from . import forecasting, transform
from .inputs import MAX_INPUT_SETTING, InputTooLarge, Line, UnreadableObject, read_object
from .outputs import output_keys, output_name, read_manifest
from .settings import FunctionSettings, current, output_bucket_of_environment

log = logging.getLogger("batch_forecast")
log.setLevel(logging.INFO)

# Requests one object keeps in flight (issue #27 item 5): BATCH_IN_FLIGHT (FunctionSettings.batch_in_flight),
# else what the forecaster has.
# A serving container answers one request per worker at a time; our server starts one worker per CPU,
# and the smallest SageMaker instance types have 2 vCPUs: 2 per instance keeps each worker busy.
WORKERS_PER_INSTANCE = 2
MAX_IN_FLIGHT = 16  # a bound on threads and connections per invocation (the setting's own bound too)

_T = TypeVar("_T")
_R = TypeVar("_R")


class Superseded(Exception):
    """The event names an object version that was since replaced (its own event follows)."""


def read_source(s3: Any, source: dict, settings: Optional[FunctionSettings] = None) -> list[Line]:
    """The uploaded object's lines again (the version the event named), for a finished transform job."""
    get = {"Bucket": source["bucket"], "Key": source["key"]}
    if source.get("version_id"):
        get["VersionId"] = source["version_id"]
    elif source.get("etag"):
        get["IfMatch"] = source["etag"]
    return read_object(source["key"], s3.get_object(**get)["Body"], settings=settings)


def s3_records(message_body: str) -> Iterator[dict]:
    """The S3 event records in one SQS message body: raw SNS delivery or an SNS envelope; the
    ``s3:TestEvent`` S3 sends when the notification is configured has none."""
    event = json.loads(message_body)
    if isinstance(event, dict) and event.get("Type") == "Notification" and "Message" in event:
        event = json.loads(event["Message"])
    for record in event.get("Records", []) if isinstance(event, dict) else []:
        if str(record.get("eventName", "")).startswith("ObjectCreated"):
            yield record


def _s3() -> Any:
    from awsinfra.clients import client

    return client("s3")


def _sagemaker() -> Any:
    from awsinfra.clients import client

    return client("sagemaker")


def inference_configuration(settings: FunctionSettings) -> Optional[dict]:
    """``DEEPAR_INFERENCE_CONFIG``, checked here with the contract's rules before any request: a bad value
    fails the object once (issue #23 item 11), never one request per series."""
    raw = settings.inference_config
    if not raw:
        return None
    try:
        configuration = json.loads(raw)
    except ValueError as error:
        raise forecasting.RequestRejected(f"DEEPAR_INFERENCE_CONFIG: not JSON: {error}") from None
    try:
        contract.parse_configuration(configuration, "DEEPAR_INFERENCE_CONFIG", contract.InferenceConfig())
    except contract.ContractError as error:  # names the field: DEEPAR_INFERENCE_CONFIG.num_samples: ...
        raise forecasting.RequestRejected(str(error)) from None
    return configuration


def process_object(
    record: dict, s3: Any, output_bucket: str, receive_count: int = 1, settings: Optional[FunctionSettings] = None
) -> dict:
    """Forecast one uploaded object; return its manifest (existing one when already done). Any failure of
    the object as a whole leaves a report in errors/ before the message goes back to SQS."""
    key = urllib.parse.unquote_plus(record["s3"]["object"]["key"])  # S3 events URL-encode keys
    errors_key = output_keys(output_name(key)).errors
    try:
        return _forecast_object(record, key, s3, output_bucket, receive_count, settings or current())
    except (Superseded, UnreadableObject, forecasting.BackendError):
        raise  # reported where raised (or, superseded, nothing to report)
    except forecasting.RequestRejected as error:
        # The forecaster refused a request naming no series (its configuration, say): the object fails once.
        failure = forecasting.BackendError(f"the forecaster refused the request as a whole: {error}")
        _report_failure(s3, output_bucket, errors_key, key, failure, receive_count)
        raise failure from None
    except Exception as error:
        _report_failure(s3, output_bucket, errors_key, key, error, receive_count)
        raise


def _forecast_object(
    record: dict, key: str, s3: Any, output_bucket: str, receive_count: int, settings: FunctionSettings
) -> dict:
    bucket = record["s3"]["bucket"]["name"]
    etag = str(record["s3"]["object"].get("eTag", "")).strip('"')
    version = record["s3"]["object"].get("versionId")
    name = output_name(key)
    forecasts_key, errors_key, manifest_key = output_keys(name)
    done = read_manifest(s3, output_bucket, manifest_key)
    if done and done["source"]["etag"] == etag and done["source"].get("version_id") == version:
        # Also a transform job already started for this version: redelivery starts no second one.
        state = done.get("status", "complete")
        what = "forecast" if state == "complete" else f"{state} (transform job {done.get('transform_job')})"
        log.info("already %s: s3://%s/%s (etag %s)", what, bucket, key, etag)
        return done
    started = time.monotonic()
    try:
        get = {"Bucket": bucket, "Key": key, **({"VersionId": version} if version else {})}
        obj = s3.get_object(**get)
        if etag and not version and obj["ETag"].strip('"') != etag:
            raise Superseded(f"s3://{bucket}/{key}: now ETag {obj['ETag']}, the event is for {etag}")
        lines = read_object(key, obj["Body"], settings=settings)  # streamed, at most BATCH_MAX_INPUT_MB decompressed
    except UnreadableObject as error:
        _report_failure(s3, output_bucket, errors_key, key, error, receive_count)
        raise
    read_s = time.monotonic() - started
    try:
        configuration = inference_configuration(settings)
        forecaster = forecasting.from_environment(settings)
        valid = sum(1 for line in lines if line.record is not None)
        if isinstance(forecaster, forecasting.EndpointForecaster) and valid >= settings.transform_min_series:
            source = {"bucket": bucket, "key": key, "etag": etag, "version_id": version}
            return transform.start(s3, _sagemaker(), output_bucket, source, lines, forecaster.endpoint_name, settings)
        results, requests = forecast_lines(forecaster, lines, configuration, in_flight(forecaster, settings))
    except forecasting.BackendError as error:  # retried by SQS; the report says why meanwhile
        _report_failure(s3, output_bucket, errors_key, key, error, receive_count)
        raise
    forecast_s = time.monotonic() - started - read_s
    source = {"bucket": bucket, "key": key, "etag": etag, "version_id": version}
    extra = {"model": forecaster.name, "requests": requests, "read_s": read_s, "forecast_s": forecast_s}
    return write_results(s3, output_bucket, source, lines, results, extra, started)


def write_results(
    s3: Any, output_bucket: str, source: dict, lines: list[Line], results: list, extra: dict, started: float
) -> dict:
    """forecasts/, errors/ and, last, the manifest (status "complete") for one object's per-line results."""
    key, name = source["key"], output_name(source["key"])
    forecasts_key, errors_key, manifest_key = output_keys(name)
    outputs, errors = [], []
    for line, result in zip(lines, results):
        if isinstance(result, dict):
            forwarded = contract.record_extras(line.record or {})
            outputs.append({**forwarded, **result})
        else:
            errors.append({"location": f"{key}:{line.number}", "error": result})
            outputs.append({"error": f"{key}:{line.number}: {result}"})
    s3.put_object(Bucket=output_bucket, Key=forecasts_key, Body=b"".join(contract.dumps_line(o) for o in outputs))
    if errors:
        s3.put_object(Bucket=output_bucket, Key=errors_key, Body=b"".join(contract.dumps_line(e) for e in errors))
    else:
        s3.delete_object(Bucket=output_bucket, Key=errors_key)  # a failed earlier attempt's report
    timings = {k: round(extra.pop(k), 3) for k in ("read_s", "forecast_s") if k in extra}
    manifest = {
        "status": "complete",
        "source": source,
        "forecasts": f"s3://{output_bucket}/{forecasts_key}",
        "errors": f"s3://{output_bucket}/{errors_key}" if errors else None,
        "counts": {"series": len(lines), "forecast": len(lines) - len(errors), "errors": len(errors)},
        **extra,
        "timings": {**timings, "total_s": round(time.monotonic() - started, 3)},
    }
    # Written last: its presence means the forecasts above are complete for this object version.
    s3.put_object(Bucket=output_bucket, Key=manifest_key, Body=json.dumps(manifest, indent=1).encode())
    log.info("forecast s3://%s/%s: %s", source["bucket"], key, manifest["counts"])
    return manifest


def _report_failure(s3: Any, bucket: str, errors_key: str, key: str, error: BaseException, receive_count: int) -> None:
    """The object could not be forecast at all: say why (and on which receive) where its errors go."""
    report: dict[str, Any] = {"location": key, "error": str(error), "receive_count": receive_count}
    if isinstance(error, InputTooLarge):
        report.update(setting=MAX_INPUT_SETTING, limit_bytes=error.limit)
    elif isinstance(error, SettingsError):  # the deployment's, not the object's: retried once it is fixed
        report["error"] = f"the function's settings: {error}"
    elif not isinstance(error, (UnreadableObject, forecasting.BackendError)):
        report["error"] = f"internal error ({type(error).__name__}): {error}"  # a bug: said, not silent
    if isinstance(error, forecasting.BackendThrottled):
        report["throttled"] = True  # not the object's fault: the next receive retries it whole
    s3.put_object(Bucket=bucket, Key=errors_key, Body=contract.dumps_line(report))


def in_flight(forecaster: forecasting.Forecaster, settings: FunctionSettings) -> int:
    """Requests one object keeps in flight: ``BATCH_IN_FLIGHT`` (1..16) when set, else as many as the
    forecaster answers at once: 2 per instance of a SageMaker endpoint (DescribeEndpoint), 2 for a
    container URL (it does not say its workers), 1 for the model inside the function (its threads
    would share the function's own CPUs)."""
    if settings.batch_in_flight is not None:
        return settings.batch_in_flight
    if isinstance(forecaster, forecasting.InFunctionForecaster):
        return 1
    if isinstance(forecaster, forecasting.EndpointForecaster):
        return min(MAX_IN_FLIGHT, WORKERS_PER_INSTANCE * endpoint_instances(forecaster.endpoint_name))
    return WORKERS_PER_INSTANCE


# endpoint -> (instance count, when read): autoscaling changes the count, so a warm container reads it again.
_instances: dict[str, tuple[int, float]] = {}
INSTANCES_TTL_S = 300


def endpoint_instances(endpoint: str) -> int:
    """The endpoint's current instance count (summed over its variants), 1 when it cannot be read (the
    function still forecasts; it only keeps fewer requests in flight). Read at most every 5 minutes."""
    cached = _instances.get(endpoint)
    if cached is None or time.monotonic() - cached[1] > INSTANCES_TTL_S:
        try:
            variants = _sagemaker().describe_endpoint(EndpointName=endpoint).get("ProductionVariants", [])
            count = sum(int(v.get("CurrentInstanceCount") or 0) for v in variants)
        except Exception as error:  # noqa: BLE001 - a fallback, said in the log
            log.warning(
                "endpoint %s: instance count not read (%s); %d request(s) in flight",
                endpoint,
                error,
                WORKERS_PER_INSTANCE,
            )
            count = 0
        _instances[endpoint] = (max(1, count), time.monotonic())
    return _instances[endpoint][0]


def in_order(function: Callable[[_T], _R], items: Iterable[_T], limit: int) -> Iterator[_R]:
    """``function`` over ``items`` with at most ``limit`` calls running at once, results yielded in the
    items' order. The first failure, in that order, is raised where its result would have been; calls
    not started yet are cancelled, the running ones finish (each bounded by the forecaster's timeout)."""
    if limit <= 1:
        yield from map(function, items)
        return
    remaining = iter(items)
    with ThreadPoolExecutor(limit, thread_name_prefix="in-flight") as pool:
        pending: deque[Future[_R]] = deque(pool.submit(function, item) for item in islice(remaining, limit))
        try:
            while pending:
                result = pending.popleft().result()
                pending.extend(pool.submit(function, item) for item in islice(remaining, 1))
                yield result
        finally:
            for future in pending:
                future.cancel()


def forecast_lines(
    forecaster: forecasting.Forecaster, lines: list[Line], configuration: Optional[dict], in_flight: int = 1
) -> tuple[list[dict | str], int]:
    """A forecast dict or an error message per line; valid series go in requests under the payload limit,
    ``in_flight`` of them at a time, answers put back in the lines' order."""
    results: list[dict | str] = [line.problem for line in lines]
    valid = [i for i, line in enumerate(lines) if line.record is not None]
    instances = [contract.record_inputs(lines[i].record) for i in valid]  # type: ignore[arg-type]
    encoded = [json.dumps(instance).encode() for instance in instances]
    spans = forecasting.chunks(encoded)

    def forecast(span: range) -> list[dict | str]:
        return forecasting.forecast_isolating(forecaster, [instances[i] for i in span], configuration)

    for answers, span in zip(in_order(forecast, spans, in_flight), spans):  # the generator runs to its end
        for index, result in zip(span, answers):
            results[valid[index]] = result
    return results, len(spans)


def throttle_backoff_s(receive_count: int, retry_after: int) -> int:
    """When a throttled message is received again: 30 s doubling per receive, at least the forecaster's
    Retry-After, at most 15 min (the queue's own visibility timeout, 90 min, would idle the upload)."""
    return min(900, max(retry_after, 30 * 2 ** max(0, receive_count - 1)))


def _retry_in(message: dict, seconds: int) -> None:
    """Make a failed SQS message visible again after ``seconds`` (best effort: else the queue's timeout)."""
    parts = str(message.get("eventSourceARN", "")).split(":")
    if len(parts) != 6 or not message.get("receiptHandle"):
        return
    _, _, _, region, account, queue = parts
    from awsinfra.clients import boto_session, client

    try:
        client("sqs", boto_session(region)).change_message_visibility(
            QueueUrl=f"https://sqs.{region}.amazonaws.com/{account}/{queue}",
            ReceiptHandle=message["receiptHandle"],
            VisibilityTimeout=seconds,
        )
    except Exception as error:  # noqa: BLE001 - the message is still redriven, only later
        log.warning("message %s: visibility not shortened: %s", message.get("messageId"), error)


def handler(event: dict, context: Any = None, s3: Any = None) -> dict:
    """The SQS event source mapping's entry point (``FunctionResponseTypes: [ReportBatchItemFailures]``)."""
    s3 = s3 or _s3()
    try:  # parsed once per invocation, here at the entry, and handed down
        settings = current()
    except SettingsError as error:
        return _misconfigured(event, s3, error)
    if not settings.output_bucket:
        return _misconfigured(event, s3, SettingsError(["environment variable OUTPUT_BUCKET is required but not set"]))
    output_bucket = settings.output_bucket
    failures = []
    for message in event.get("Records", []):
        receive_count = int(message.get("attributes", {}).get("ApproximateReceiveCount", "1"))
        try:
            job_event = transform.state_change(message["body"])
            if job_event is not None:
                transform.complete(
                    s3, output_bucket, job_event, lambda s3, source: read_source(s3, source, settings), write_results
                )
            for record in s3_records(message["body"]):
                process_object(record, s3, output_bucket, receive_count, settings)
        except Superseded as error:
            log.info("skipped: %s", error)
        except forecasting.BackendThrottled as error:
            delay = throttle_backoff_s(receive_count, error.retry_after)
            log.warning(
                "message %s throttled (receive %d), retried in %d s: %s",
                message.get("messageId"),
                receive_count,
                delay,
                error,
            )
            failures.append({"itemIdentifier": message["messageId"]})
            _retry_in(message, delay)
        except Exception as error:  # noqa: BLE001 - any failure leaves the message to SQS's redrive
            log.error("message %s failed (receive %d): %s", message.get("messageId"), receive_count, error)
            failures.append({"itemIdentifier": message["messageId"]})
    return {"batchItemFailures": failures}


def _misconfigured(event: dict, s3: Any, error: SettingsError) -> dict:
    """Settings the function cannot run with: every message fails (SQS redrives it, then dead-letters it)
    and, when the output bucket is known, each object gets a report naming the variable."""
    log.error("the function's settings are unusable: %s", error)
    bucket = output_bucket_of_environment()
    failures = []
    for message in event.get("Records", []):
        receive_count = int(message.get("attributes", {}).get("ApproximateReceiveCount", "1"))
        if bucket:
            with suppress(Exception):  # the message fails anyway; a report is a courtesy
                for record in s3_records(message["body"]):
                    key = urllib.parse.unquote_plus(record["s3"]["object"]["key"])
                    _report_failure(s3, bucket, output_keys(output_name(key)).errors, key, error, receive_count)
        failures.append({"itemIdentifier": message["messageId"]})
    return {"batchItemFailures": failures}
