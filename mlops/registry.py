"""The model registry and the accuracy bar: Model Package Group (created if missing), model package
versions registered as PendingManualApproval with their metrics, the production model (the newest
Approved version), and the SSM parameter holding the mean_wQuantileLoss threshold (created with a
default if missing).
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping, NamedTuple, Optional

from sagemaker_deepar.contract import same_time_freq
from sagemaker_deepar.errors import UserError

DEFAULT_GROUP = "deepar-forecasts"
DEFAULT_THRESHOLD_PARAMETER = "/mlops/deepar/wql-threshold"
DEFAULT_THRESHOLD = 0.5  # a first model must at least beat this mean_wQuantileLoss; deploy raises the bar
PENDING = "PendingManualApproval"
APPROVED = "Approved"
CONTENT_TYPES = ["application/json", "application/jsonlines"]
# a package's training hyperparameters travel in CustomerMetadataProperties under this prefix, so a
# warm start can be judged from the registry alone (mlops.build.resolve_warm_start)
HYPERPARAMETER_PREFIX = "hyperparameters."


class ProductionModel(NamedTuple):
    package_arn: str
    model_data: str  # InferenceSpecification.Containers[0].ModelDataUrl
    hyperparameters: dict[str, str] = {}  # what it was trained with, as recorded (may be none)


def hyperparameter_metadata(hyperparameters: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata keys of ``hyperparameters``; values as given (strings, or pipeline variables)."""
    return {HYPERPARAMETER_PREFIX + name: value for name, value in hyperparameters.items()}


def shape_differences(recorded: Mapping[str, str], wanted: Mapping[str, str]) -> list[str]:
    """``name old -> new`` for each network-shaping hyperparameter that differs (names not recorded
    are not compared): a warm start across such a difference would be refused by the Train step."""
    return [f"{n} {recorded[n]} -> {v}" for n, v in wanted.items() if n in recorded and not _same(n, recorded[n], v)]


def _same(name: str, recorded: str, wanted: str) -> bool:
    """Equal values; for time_freq one frequency however spelled ("H", "1H", "1h"), as the contract reads it."""
    return same_time_freq(recorded, wanted) if name == "time_freq" else recorded == wanted


def recorded_hyperparameters(metadata: Mapping[str, str]) -> dict[str, str]:
    return {
        k.removeprefix(HYPERPARAMETER_PREFIX): v for k, v in metadata.items() if k.startswith(HYPERPARAMETER_PREFIX)
    }


def group_arn(sagemaker_client: Any, group: str) -> Optional[str]:
    """The group's ARN, None when it does not exist."""
    try:
        return str(sagemaker_client.describe_model_package_group(ModelPackageGroupName=group)["ModelPackageGroupArn"])
    except sagemaker_client.exceptions.ClientError as error:
        if "does not exist" not in str(error) and "ValidationException" not in str(error):
            raise
    return None


def ensure_group(sagemaker_client: Any, group: str, description: str = "DeepAR forecasts (mlops build)") -> str:
    """The group's ARN; created when it does not exist yet."""
    existing = group_arn(sagemaker_client, group)
    if existing:
        return existing
    return str(
        sagemaker_client.create_model_package_group(
            ModelPackageGroupName=group, ModelPackageGroupDescription=description
        )["ModelPackageGroupArn"]
    )


def model_metrics_document(metrics: Mapping[str, float], threshold: float, threshold_parameter: str) -> str:
    return json.dumps(
        {
            "regression_metrics": {name: {"value": value} for name, value in metrics.items()},
            "threshold": {"parameter": threshold_parameter, "value": threshold},
        }
    )


def evaluation_metrics(document: bytes, where: str) -> dict[str, float]:
    """Every ``regression_metrics.<name>.value`` of an evaluation.json (the Evaluate step's report,
    which the pipeline's Register step attaches as the package's ModelMetrics); not one, or not a
    JSON object of them, is an error naming ``where``."""
    try:
        metrics = json.loads(document)["regression_metrics"]
        values = {str(name): float(entry["value"]) for name, entry in metrics.items()}
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise UserError(f"{where}: not an evaluation document ({error})") from None
    if not values:
        raise UserError(f"{where}: not an evaluation document (no regression_metrics)")
    return values


def register(
    sagemaker_client: Any,
    group: str,
    image: str,
    model_data: str,
    metrics: Mapping[str, float],
    evaluation_uri: Optional[str] = None,
    instance_types: tuple[str, ...] = ("ml.c5.xlarge",),
    transform_instance_types: tuple[str, ...] = ("ml.c5.xlarge",),
    hyperparameters: Optional[Mapping[str, Any]] = None,
) -> str:
    """Register one model version as PendingManualApproval; its metrics (and ``hyperparameters``, prefixed)
    travel in CustomerMetadataProperties (readable without S3) and, when ``evaluation_uri`` is given, as
    the package's ModelMetrics report."""
    ensure_group(sagemaker_client, group)
    request: dict[str, Any] = {
        "ModelPackageGroupName": group,
        "ModelApprovalStatus": PENDING,
        "ModelPackageDescription": ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
        "InferenceSpecification": {
            "Containers": [{"Image": image, "ModelDataUrl": model_data}],
            "SupportedContentTypes": CONTENT_TYPES,
            "SupportedResponseMIMETypes": CONTENT_TYPES,
            "SupportedRealtimeInferenceInstanceTypes": list(instance_types),
            "SupportedTransformInstanceTypes": list(transform_instance_types),
        },
        "CustomerMetadataProperties": {
            **{name: repr(float(value)) for name, value in metrics.items()},
            **hyperparameter_metadata({name: str(value) for name, value in (hyperparameters or {}).items()}),
        },
    }
    if evaluation_uri:
        request["ModelMetrics"] = {
            "ModelQuality": {"Statistics": {"ContentType": "application/json", "S3Uri": evaluation_uri}}
        }
    return str(sagemaker_client.create_model_package(**request)["ModelPackageArn"])


def production_model(sagemaker_client: Any, group: str) -> Optional[ProductionModel]:
    """The model in production: the newest Approved version of ``group`` that has model data; None when
    the group is missing or holds no approved version (a newer pending or rejected one never counts)."""
    if group_arn(sagemaker_client, group) is None:
        return None
    pages = sagemaker_client.get_paginator("list_model_packages").paginate(
        ModelPackageGroupName=group, ModelApprovalStatus=APPROVED, SortBy="CreationTime", SortOrder="Descending"
    )
    for page in pages:
        for summary in page.get("ModelPackageSummaryList", []):
            if summary.get("ModelApprovalStatus", APPROVED) != APPROVED:
                continue
            arn = summary["ModelPackageArn"]
            described = sagemaker_client.describe_model_package(ModelPackageName=arn)
            containers = (described.get("InferenceSpecification") or {}).get("Containers") or [{}]
            if containers[0].get("ModelDataUrl"):
                recorded = recorded_hyperparameters(described.get("CustomerMetadataProperties") or {})
                return ProductionModel(str(arn), str(containers[0]["ModelDataUrl"]), recorded)
    return None


def threshold(ssm_client: Any, name: str, default: float = DEFAULT_THRESHOLD, create: bool = True) -> float:
    """The threshold stored in SSM parameter ``name``; created with ``default`` when missing (unless
    ``create`` is False, then a missing parameter is an error). A non-numeric value is an error."""
    try:
        value = ssm_client.get_parameter(Name=name)["Parameter"]["Value"]
    except ssm_client.exceptions.ParameterNotFound:
        if not create:
            raise UserError(f"SSM parameter {name}: missing (the mean_wQuantileLoss threshold)") from None
        ssm_client.put_parameter(
            Name=name,
            Value=repr(float(default)),
            Type="String",
            Description="mlops: highest mean_wQuantileLoss a retrained DeepAR model may have to be registered",
        )
        return float(default)
    return parse_threshold(value, name)


def parse_threshold(value: str, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or number <= 0:
        raise UserError(
            f"SSM parameter {name}: {value!r} is not a usable threshold: expected a positive number "
            "(the highest mean_wQuantileLoss to accept, e.g. 0.3)"
        )
    return number
