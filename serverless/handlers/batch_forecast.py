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
import os
import time
import urllib.parse
from typing import Any, Iterator, Optional

from awsinfra.errors import error_code
from sagemaker_deepar import contract

from . import forecasting, transform
from .inputs import MAX_INPUT_SETTING, InputTooLarge, Line, UnreadableObject, read_object

log = logging.getLogger("batch_forecast")
log.setLevel(logging.INFO)

INCOMING = "incoming/"


class Superseded(Exception):
    """The event names an object version that was since replaced (its own event follows)."""


def read_source(s3: Any, source: dict) -> list[Line]:
    """The uploaded object's lines again (the version the event named), for a finished transform job."""
    get = {"Bucket": source["bucket"], "Key": source["key"]}
    if source.get("version_id"):
        get["VersionId"] = source["version_id"]
    elif source.get("etag"):
        get["IfMatch"] = source["etag"]
    return read_object(source["key"], s3.get_object(**get)["Body"])


def s3_records(message_body: str) -> Iterator[dict]:
    """The S3 event records in one SQS message body: raw SNS delivery or an SNS envelope; the
    ``s3:TestEvent`` S3 sends when the notification is configured has none."""
    event = json.loads(message_body)
    if isinstance(event, dict) and event.get("Type") == "Notification" and "Message" in event:
        event = json.loads(event["Message"])
    for record in event.get("Records", []) if isinstance(event, dict) else []:
        if str(record.get("eventName", "")).startswith("ObjectCreated"):
            yield record


def output_name(key: str) -> str:
    return key[len(INCOMING) :] if key.startswith(INCOMING) else key


def _s3() -> Any:
    from awsinfra.clients import client

    return client("s3")


def _sagemaker() -> Any:
    from awsinfra.clients import client

    return client("sagemaker")


def transform_min_series() -> int:
    """Uploads with at least this many valid series go to a batch transform job (README: the measured
    request-route rate x Lambda's 15 minutes, with a 2x margin)."""
    raw = os.environ.get("BATCH_TRANSFORM_MIN_SERIES", str(transform.DEFAULT_MIN_SERIES))
    try:
        return int(raw)
    except ValueError:
        raise forecasting.BackendError(f"BATCH_TRANSFORM_MIN_SERIES={raw!r}: expected a whole number") from None


def inference_configuration() -> Optional[dict]:
    """``DEEPAR_INFERENCE_CONFIG``, checked here with the contract's rules before any request: a bad value
    fails the object once (issue #23 item 11), never one request per series."""
    raw = os.environ.get("DEEPAR_INFERENCE_CONFIG")
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


def process_object(record: dict, s3: Any, output_bucket: str, receive_count: int = 1) -> dict:
    """Forecast one uploaded object; return its manifest (existing one when already done). Any failure of
    the object as a whole leaves a report in errors/ before the message goes back to SQS."""
    key = urllib.parse.unquote_plus(record["s3"]["object"]["key"])  # S3 events URL-encode keys
    errors_key = _output_keys(output_name(key))[1]
    try:
        return _forecast_object(record, key, s3, output_bucket, receive_count)
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


def _forecast_object(record: dict, key: str, s3: Any, output_bucket: str, receive_count: int) -> dict:
    bucket = record["s3"]["bucket"]["name"]
    etag = str(record["s3"]["object"].get("eTag", "")).strip('"')
    version = record["s3"]["object"].get("versionId")
    name = output_name(key)
    forecasts_key, errors_key, manifest_key = _output_keys(name)
    done = _manifest(s3, output_bucket, manifest_key)
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
        lines = read_object(key, obj["Body"])  # streamed, at most BATCH_MAX_INPUT_MB decompressed
    except UnreadableObject as error:
        _report_failure(s3, output_bucket, errors_key, key, error, receive_count)
        raise
    read_s = time.monotonic() - started
    try:
        configuration = inference_configuration()
        forecaster = forecasting.from_environment()
        valid = sum(1 for line in lines if line.record is not None)
        if isinstance(forecaster, forecasting.EndpointForecaster) and valid >= transform_min_series():
            source = {"bucket": bucket, "key": key, "etag": etag, "version_id": version}
            return transform.start(s3, _sagemaker(), output_bucket, source, lines, forecaster.endpoint_name)
        results, requests = forecast_lines(forecaster, lines, configuration)
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
    forecasts_key, errors_key, manifest_key = _output_keys(name)
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


def _output_keys(name: str) -> tuple[str, str, str]:
    return f"forecasts/{name}.jsonl", f"errors/{name}.jsonl", f"forecasts/{name}.manifest.json"


def _report_failure(s3: Any, bucket: str, errors_key: str, key: str, error: BaseException, receive_count: int) -> None:
    """The object could not be forecast at all: say why (and on which receive) where its errors go."""
    report: dict[str, Any] = {"location": key, "error": str(error), "receive_count": receive_count}
    if isinstance(error, InputTooLarge):
        report.update(setting=MAX_INPUT_SETTING, limit_bytes=error.limit)
    elif not isinstance(error, (UnreadableObject, forecasting.BackendError)):
        report["error"] = f"internal error ({type(error).__name__}): {error}"  # a bug: said, not silent
    if isinstance(error, forecasting.BackendThrottled):
        report["throttled"] = True  # not the object's fault: the next receive retries it whole
    s3.put_object(Bucket=bucket, Key=errors_key, Body=contract.dumps_line(report))


def forecast_lines(
    forecaster: forecasting.Forecaster, lines: list[Line], configuration: Optional[dict]
) -> tuple[list[dict | str], int]:
    """A forecast dict or an error message per line; valid series go in requests under the payload limit."""
    results: list[dict | str] = [line.problem for line in lines]
    valid = [i for i, line in enumerate(lines) if line.record is not None]
    instances = [contract.record_inputs(lines[i].record) for i in valid]  # type: ignore[arg-type]
    encoded = [json.dumps(instance).encode() for instance in instances]
    requests = 0
    for span in forecasting.chunks(encoded):
        requests += 1
        for index, result in zip(
            span, forecasting.forecast_isolating(forecaster, [instances[i] for i in span], configuration)
        ):
            results[valid[index]] = result
    return results, requests


def _manifest(s3: Any, bucket: str, key: str) -> Optional[dict]:
    from botocore.exceptions import ClientError

    try:
        return json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    except ClientError as error:
        if error_code(error) in ("NoSuchKey", "404"):
            return None
        raise


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
    output_bucket = os.environ["OUTPUT_BUCKET"]
    failures = []
    for message in event.get("Records", []):
        receive_count = int(message.get("attributes", {}).get("ApproximateReceiveCount", "1"))
        try:
            job_event = transform.state_change(message["body"])
            if job_event is not None:
                transform.complete(s3, output_bucket, job_event, read_source, write_results)
            for record in s3_records(message["body"]):
                process_object(record, s3, output_bucket, receive_count)
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
