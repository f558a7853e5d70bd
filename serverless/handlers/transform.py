"""The large-object route of ``batch_forecast``: a SageMaker batch transform job on the endpoint's model.

Above ``BATCH_TRANSFORM_MIN_SERIES`` valid series (and only when ``FORECAST_ENDPOINT`` names a
SageMaker endpoint) real-time requests would not finish inside Lambda's 15 minutes, so:

1. ``start``: the validated series go to ``staging/<name>.jsonl`` in the output bucket (DeepAR fields
   only, one per line, in order); DescribeEndpoint -> DescribeEndpointConfig gives the model, and
   CreateTransformJob runs it (SplitType Line, BatchStrategy MultiRecord, MaxPayloadInMB and the
   per-request timeout as ``evaluation/batch.py`` sets them). The manifest says ``"status":
   "transforming"`` and names the job; the job name derives from key + ETag/version, so a redelivered
   upload event finds the manifest (or the job) and starts no second job.
2. ``complete``: the EventBridge rule on "SageMaker Transform Job State Change" (template.yaml) puts
   the job's end on the same queue; the ``.out`` (one line per staged series) is joined back with the
   object's lines -> ``forecasts/<name>.jsonl`` (one line per input series, ids forwarded),
   ``errors/<name>.jsonl`` and the final manifest; the staged input and the ``.out`` are then removed.
   A failed or stopped job gets a manifest with ``"status": "failed"`` and an error report naming the
   job and SageMaker's reason.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any, Callable, Optional

from sagemaker_deepar import contract

from . import forecasting
from . import settings as settings_module
from .inputs import Line
from .outputs import output_keys, output_name, read_manifest
from .settings import FunctionSettings

log = logging.getLogger("batch_forecast")

STATE_CHANGE = "SageMaker Transform Job State Change"
STAGING, OUTPUT = "staging/", "transform/"
# 28 series/s measured through the request route (README) x 900 s = 25,200; half of it, rounded down.
MAX_PAYLOAD_MB = 6  # as evaluation/batch.py: SageMaker's largest real-time-sized mini-batch


def job_name(source: dict, prefix: str) -> str:
    """``<prefix>-<hash of bucket/key/etag/version>``: the same upload always names the same job (<= 63 chars)."""
    identity = json.dumps([source["bucket"], source["key"], source.get("etag"), source.get("version_id")])
    digest = hashlib.sha256(identity.encode()).hexdigest()[:20]
    clean = "".join(c if c.isalnum() else "-" for c in prefix)[:42].strip("-") or "deepar"
    return f"{clean}-{digest}"


def staged_key(name: str) -> str:
    return f"{STAGING}{name}.jsonl"


def model_of(sagemaker: Any, endpoint: str) -> str:
    config = sagemaker.describe_endpoint(EndpointName=endpoint)["EndpointConfigName"]
    variants = sagemaker.describe_endpoint_config(EndpointConfigName=config)["ProductionVariants"]
    return variants[0]["ModelName"]


def start(
    s3: Any,
    sagemaker: Any,
    output_bucket: str,
    source: dict,
    lines: list[Line],
    endpoint: str,
    settings: Optional[FunctionSettings] = None,
) -> dict:
    """Stage the valid series, start the transform job, write the "transforming" manifest; return it."""
    settings = settings or settings_module.current()
    from botocore.exceptions import BotoCoreError, ClientError

    name = output_name(source["key"])
    started = time.monotonic()
    valid = [line for line in lines if line.record is not None]
    staged = b"".join(contract.dumps_line(contract.record_inputs(line.record or {})) for line in valid)
    job = job_name(source, settings.transform_job_prefix)
    timeout = contract.batch_payload_timeout(MAX_PAYLOAD_MB)
    environment = {"SAGEMAKER_MODEL_SERVER_TIMEOUT": str(timeout)}
    if settings.inference_config:
        environment["DEEPAR_INFERENCE_CONFIG"] = settings.inference_config
    try:
        model = model_of(sagemaker, endpoint)
    except (ClientError, BotoCoreError) as error:
        raise forecasting.BackendError(f"endpoint {endpoint}: its model: {error}") from None
    s3.put_object(Bucket=output_bucket, Key=staged_key(name), Body=staged)
    try:
        sagemaker.create_transform_job(
            TransformJobName=job,
            ModelName=model,
            BatchStrategy="MultiRecord",
            MaxPayloadInMB=MAX_PAYLOAD_MB,
            ModelClientConfig={"InvocationsTimeoutInSeconds": timeout, "InvocationsMaxRetries": 1},
            Environment=environment,
            TransformInput={
                "DataSource": {
                    "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": f"s3://{output_bucket}/{staged_key(name)}"}
                },
                "ContentType": "application/jsonlines",
                "SplitType": "Line",
            },
            TransformOutput={
                "S3OutputPath": f"s3://{output_bucket}/{OUTPUT}{job}/",
                "Accept": "application/jsonlines",
                "AssembleWith": "Line",
            },
            TransformResources={
                "InstanceType": settings.transform_instance_type,
                "InstanceCount": 1,
            },
        )
    except ClientError as error:
        message = str(error.response.get("Error", {}).get("Message", error))
        if "unique" not in message.lower() and "already exist" not in message.lower():
            raise forecasting.BackendError(f"transform job {job} on {model}: {message}") from None
        # Started by an earlier delivery that stopped before its manifest: the same job, not a second one.
        log.info("transform job %s already started: %s", job, message)
    except BotoCoreError as error:
        raise forecasting.BackendError(f"transform job {job} on {model}: {error}") from None
    manifest = {
        "status": "transforming",
        "source": source,
        "transform_job": job,
        "model": model,
        "endpoint": endpoint,
        "staged": f"s3://{output_bucket}/{staged_key(name)}",
        "counts": {"series": len(lines), "staged": len(valid), "invalid": len(lines) - len(valid)},
        "timings": {"stage_s": round(time.monotonic() - started, 3)},
    }
    s3.put_object(Bucket=output_bucket, Key=output_keys(name).manifest, Body=json.dumps(manifest, indent=1).encode())
    log.info("transform job %s on %s: s3://%s/%s, %d series", job, model, source["bucket"], source["key"], len(valid))
    return manifest


def state_change(message_body: str) -> Optional[dict]:
    """The ``detail`` of a transform job state-change event in an SQS message body, else None."""
    try:
        event = json.loads(message_body)
    except ValueError:
        return None
    if isinstance(event, dict) and event.get("detail-type") == STATE_CHANGE and isinstance(event.get("detail"), dict):
        return event["detail"]
    return None


def _list_keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [item["Key"] for item in page.get("Contents", [])]
    return keys


def _failed(s3: Any, output_bucket: str, current: dict, reason: str) -> dict:
    """The job gave no usable output: a report naming the job and why, and a final "failed" manifest
    (not retried: the same input would fail the same way; uploading the object again starts afresh)."""
    source = current["source"]
    _, errors_key, manifest_key = output_keys(output_name(source["key"]))
    report = {"location": source["key"], "error": reason, "transform_job": current.get("transform_job")}
    s3.put_object(Bucket=output_bucket, Key=errors_key, Body=contract.dumps_line(report))
    failed = {**current, "status": "failed", "error": reason, "errors": f"s3://{output_bucket}/{errors_key}"}
    s3.put_object(Bucket=output_bucket, Key=manifest_key, Body=json.dumps(failed, indent=1).encode())
    log.error("%s (s3://%s/%s)", reason, source["bucket"], source["key"])
    return failed


def complete(
    s3: Any,
    output_bucket: str,
    detail: dict,
    read_source: Callable[[Any, dict], list[Line]],
    write_results: Callable[..., dict],
) -> Optional[dict]:
    """A transform job ended: the final outputs of the upload it forecast (None: not one of ours any more)."""
    from botocore.exceptions import ClientError

    job, status = detail.get("TransformJobName", ""), detail.get("TransformJobStatus", "")
    uri = detail.get("TransformInput", {}).get("DataSource", {}).get("S3DataSource", {}).get("S3Uri", "")
    prefix = f"s3://{output_bucket}/{STAGING}"
    if not uri.startswith(prefix) or not uri.endswith(".jsonl"):
        log.info("transform job %s: input %s is not staged by this stack; ignored", job, uri)
        return None
    name = uri[len(prefix) : -len(".jsonl")]
    manifest_key = output_keys(name).manifest
    current = read_manifest(s3, output_bucket, manifest_key)
    if not current or current.get("transform_job") != job:
        log.info("transform job %s: forecasts/%s is not waiting for it (superseded); ignored", job, name)
        return None
    if current.get("status") != "transforming":
        log.info("transform job %s: already %s", job, current.get("status"))
        return current
    source = current["source"]
    started = time.monotonic()
    if status != "Completed":
        return _failed(
            s3,
            output_bucket,
            current,
            f"transform job {job} {status}: {detail.get('FailureReason', 'no reason given')}",
        )
    outs = [k for k in _list_keys(s3, output_bucket, f"{OUTPUT}{job}/") if k.endswith(".out")]
    if len(outs) != 1:
        return _failed(
            s3, output_bucket, current, f"transform job {job}: expected one .out under {OUTPUT}{job}/, found {outs}"
        )
    answers = [a for a in s3.get_object(Bucket=output_bucket, Key=outs[0])["Body"].read().splitlines() if a.strip()]
    try:
        lines = read_source(s3, source)
    except ClientError as error:  # overwritten (no versioning) or deleted since: its own event follows
        return _failed(s3, output_bucket, current, f"transform job {job}: the uploaded object is gone: {error}")
    valid = [i for i, line in enumerate(lines) if line.record is not None]
    if len(answers) != len(valid):
        reason = f"transform job {job}: {len(answers)} output lines for {len(valid)} staged series ({outs[0]})"
        return _failed(s3, output_bucket, current, reason)
    results: list[dict | str] = [line.problem for line in lines]
    for index, answer in zip(valid, answers):
        try:
            decoded = json.loads(answer)
        except ValueError as error:
            results[index] = f"transform output is not JSON: {error}"
            continue
        if isinstance(decoded, dict) and "error" in decoded:
            # The server numbers lines within its mini-batch; the location names the object's own line.
            results[index] = str(decoded["error"]).split(": ", 1)[-1]
        else:
            results[index] = decoded
    extra = {
        "model": current.get("model", ""),
        "transform_job": job,
        "requests": 0,
        "forecast_s": time.monotonic() - started,
    }
    manifest = write_results(s3, output_bucket, source, lines, results, extra, started)
    for key in (f"{STAGING}{name}.jsonl", outs[0]):  # inputs of a finished job: the outputs above replace them
        s3.delete_object(Bucket=output_bucket, Key=key)
    return manifest
