"""``deploy`` and ``destroy``: the whole stack from ``template.yaml``, on the project's AWS layer
(awsinfra: docs/extending-aws.md).

``deploy`` packages the functions, uploads them to a code bucket under content-named keys, creates
(or updates) the CloudFormation stack and then checks every resource a CloudFormation
implementation may skip (moto skips subscriptions, topic/queue policies, API stages, keys and usage
plans, and applies only a bucket's name and encryption) through its own service API, completing
from the *same template* what is missing and saying which (awsinfra.completers). Its last output
line is the stack outputs as one JSON object.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable, Optional

from awsinfra.clients import Aws, ensure_bucket
from awsinfra.cloudformation import S3Record, Stack, content_key, upload_once
from awsinfra.errors import StackError
from awsinfra.template import Resolver
from awsinfra.template import load_template as _load

from . import package

__all__ = ["Aws", "Resolver", "StackError", "deploy", "destroy", "load_template", "stack_outputs"]

TEMPLATE = Path(__file__).with_name("template.yaml")
OUTPUT_KEYS = ("InputBucket", "OutputBucket", "QueueUrl", "DeadLetterQueueUrl", "ApiUrl", "ApiKey")
RECORD_KEY = "serverless/completed.json"  # in the code bucket: what deploy created outside CloudFormation
BUNDLE_PARAMETERS = {"batch_forecast": "BatchCodeKey", "forecast_api": "ApiCodeKey", package.LAYER: "ParquetLayerKey"}


def load_template(path: Path = TEMPLATE) -> dict:
    return _load(path)


def code_bucket_name(stack: str, account: str) -> str:
    return f"{stack}-code-{account}"


def serverless_stack(aws: Aws, name: str, parameters: Optional[dict[str, str]] = None) -> Stack:
    """The stack on the layer; what deploy completes is recorded in its code bucket."""
    record = S3Record(code_bucket_name(name, aws.account), RECORD_KEY)
    return Stack(name, TEMPLATE, parameters or {}, record=record)


def deploy(aws: Aws, stack: str, parameters: dict[str, str], out: Path, say: Callable[[str], None] = print) -> dict:
    bundles = {b.name: b for b in package.build(out)}
    code_bucket = code_bucket_name(stack, aws.account)
    ensure_bucket(aws, code_bucket, aws.region, private=True)
    # Keys named after the bundle's content: CloudFormation updates a function's code only when its
    # S3Key changes, and the same code keeps the same key (a re-deploy then changes nothing).
    content_keys = {
        BUNDLE_PARAMETERS[name]: content_key("serverless/", name, Path(b.path)) for name, b in bundles.items()
    }
    params = {"CodeBucket": code_bucket, **content_keys, **parameters}
    if aws.offline and "EventSourceMapping" not in parameters:
        params["EventSourceMapping"] = "false"
        say("offline (AWS_ENDPOINT_URL): no event source mapping; `python -m serverless emulate` polls the queue")
    uploaded = 0
    for name, bundle in bundles.items():
        key = params[BUNDLE_PARAMETERS[name]]
        if key == content_keys[BUNDLE_PARAMETERS[name]]:
            uploaded += upload_once(aws, Path(bundle.path), code_bucket, key)  # the same content is there already
        else:
            aws("s3").upload_file(bundle.path, code_bucket, key)
            uploaded += 1
    say(f"uploaded {uploaded} of {len(bundles)} bundles to s3://{code_bucket}/ (the others are there already)")
    the_stack = serverless_stack(aws, stack, params)
    the_stack.apply(aws, say)
    return stack_outputs(aws, stack)


def stack_outputs(aws: Aws, stack: str, completed: Optional[dict[str, str]] = None) -> dict[str, str]:
    """InputBucket, OutputBucket, QueueUrl, DeadLetterQueueUrl, ApiUrl, ApiKey (the key's value) and the rest."""
    the_stack = serverless_stack(aws, stack)
    outputs = the_stack.outputs(aws)
    if completed is None:
        completed = the_stack.completed(aws)
    key_id = completed.get("ApiKey") or outputs.get("ApiKeyId", "")
    if key_id and key_id != "ApiKey":
        outputs["ApiKeyId"] = key_id
        outputs["ApiKey"] = aws("apigateway").get_api_key(apiKey=key_id, includeValue=True)["value"]
    return {**{k: outputs.get(k, "") for k in OUTPUT_KEYS}, **outputs}


def destroy(aws: Aws, stack: str, delete_data: bool = False, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Remove the stack and what deploy completed. Keeps the input and output buckets (and the code
    bucket) unless ``delete_data``; refuses while the dead-letter queue still holds messages."""
    the_stack = serverless_stack(aws, stack)
    if the_stack.status(aws) is None:
        raise StackError(f"{stack}: no such stack")
    outputs = stack_outputs(aws, stack)
    dlq = outputs.get("DeadLetterQueueUrl")
    if dlq and not delete_data:
        waiting = int(
            aws("sqs").get_queue_attributes(QueueUrl=dlq, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"][
                "ApproximateNumberOfMessages"
            ]
        )
        if waiting:
            raise StackError(
                f"{stack}: the dead-letter queue holds {waiting} message(s) ({dlq}): inspect them (errors/ in "
                f"{outputs['OutputBucket']}) or pass --delete-data"
            )
    code_bucket = code_bucket_name(stack, aws.account)
    result = the_stack.destroy(aws, delete_data, say, extra_buckets=(code_bucket,))
    for bucket, count in result.buckets_kept.items():
        say(f"kept s3://{bucket} ({count} objects; delete it with --delete-data)")
    deleted = ["stack " + stack, *(f"s3://{bucket}" for bucket in result.buckets_deleted)]
    say(f"deleted: {', '.join(deleted)}")
    return {"kept": result.buckets_kept, "deleted": deleted}


def parameters_from(args: argparse.Namespace) -> dict[str, str]:
    names = {
        "endpoint_name": "EndpointName",
        "forecast_endpoint": "ForecastEndpoint",
        "forecast_model": "ForecastModel",
        "lake_bucket": "LakeBucket",
        "lake_prefix": "LakePrefix",
        "time_freq": "TimeFreq",
        "event_source_mapping": "EventSourceMapping",
    }
    return {cfn: str(getattr(args, arg)) for arg, cfn in names.items() if getattr(args, arg, None) is not None}
