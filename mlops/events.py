"""The loop's shared pieces: approval events, model package metadata, the SSM threshold.

Everything here takes boto3 clients and raises; only the subcommands' ``run`` turn errors into exit codes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, replace
from typing import Any, Optional

from awsinfra.errors import error_code
from sagemaker_deepar.errors import UserError

from . import registry

APPROVAL_DETAIL_TYPE = "SageMaker Model Package State Change"
WQL = "mean_wQuantileLoss"
EVALUATION_STATUS = "evaluation_status"  # "Failed" when the pipeline's evaluation failed or gave no number
STAGING_STATUS = "staging_status"  # "InService" once the model served from <name>-staging, else "Failed: why"
PROD_STATUS = "prod_status"
PROMOTED_BY, PROMOTED_AT = "promoted_by", "promoted_at"


class LoopError(UserError):
    """A step of the loop refused or failed: the message names the package, endpoint or parameter."""


class ThresholdError(LoopError):
    pass


class PackageRejected(LoopError):
    pass


class DeployFailed(LoopError):
    pass


class RetrainAlreadyRunning(LoopError):
    pass


@dataclass(frozen=True)
class ApprovalEvent:
    package_arn: str
    group: str
    status: str


def parse_approval_event(body: str | bytes | dict) -> Optional[ApprovalEvent]:
    """The EventBridge "SageMaker Model Package State Change" event (as an SQS target receives it),
    or None for anything else (the rule's test events, other detail types)."""
    event = json.loads(body) if isinstance(body, (str, bytes)) else body
    if not isinstance(event, dict) or event.get("detail-type") != APPROVAL_DETAIL_TYPE:
        return None
    detail = event.get("detail") or {}
    if not detail.get("ModelPackageArn"):
        return None
    return ApprovalEvent(
        package_arn=detail["ModelPackageArn"],
        group=detail.get("ModelPackageGroupName", ""),
        status=detail.get("ModelApprovalStatus", ""),
    )


def approval_event(package_arn: str, group: str, status: str = "Approved") -> dict:
    """The event SageMaker emits when a package's approval changes (put it on the bus offline)."""
    return {
        "Source": "aws.sagemaker",
        "DetailType": APPROVAL_DETAIL_TYPE,
        "Detail": json.dumps(
            {"ModelPackageArn": package_arn, "ModelPackageGroupName": group, "ModelApprovalStatus": status}
        ),
    }


# --- model packages ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Package:
    arn: str
    group: str
    approval: str
    model_data: str
    image: str
    metadata: dict[str, str]
    description: str = ""

    @property
    def wql(self) -> float:
        """The package's evaluated mean_wQuantileLoss; a failed or missing evaluation refuses it."""
        if self.metadata.get(EVALUATION_STATUS, "").lower() == "failed":
            raise PackageRejected(
                f"model package {self.arn}: its evaluation failed "
                f"({self.metadata.get('evaluation_reason', 'no reason recorded')}): it cannot be approved or deployed"
            )
        raw = self.metadata.get(WQL)
        try:
            value = float(raw) if raw is not None else math.nan
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise PackageRejected(
                f"model package {self.arn}: no evaluated {WQL} (CustomerMetadataProperties has {raw!r}): "
                "it cannot be approved or deployed"
            )
        return value


def describe_package(sagemaker: Any, arn: str) -> Package:
    d = sagemaker.describe_model_package(ModelPackageName=arn)
    containers = (d.get("InferenceSpecification") or {}).get("Containers") or [{}]
    return Package(
        arn=d.get("ModelPackageArn", arn),
        group=d.get("ModelPackageGroupName", ""),
        approval=d.get("ModelApprovalStatus") or "",
        model_data=containers[0].get("ModelDataUrl", ""),
        image=containers[0].get("Image", ""),
        metadata=dict(d.get("CustomerMetadataProperties") or {}),
        description=d.get("ApprovalDescription") or "",
    )


def record(sagemaker: Any, package: Package, description: Optional[str] = None, **metadata: str) -> Package:
    """Add metadata to a package. Approval status and description are always re-sent: moto (and an
    update from a stale console tab) would otherwise clear them."""
    merged = {**package.metadata, **metadata}
    request: dict[str, Any] = {"ModelPackageArn": package.arn, "CustomerMetadataProperties": merged}
    if package.approval:
        request["ModelApprovalStatus"] = package.approval
    description = (description or package.description)[:1000]
    if description:
        request["ApprovalDescription"] = description
    sagemaker.update_model_package(**request)
    return replace(package, metadata=merged, description=description)


def approve(sagemaker: Any, arn: str, by: str) -> Package:
    """Approve a package (the manual gate before staging); refuses one whose evaluation failed."""
    package = describe_package(sagemaker, arn)
    wql = package.wql  # raises PackageRejected before anything changes
    sagemaker.update_model_package(
        ModelPackageArn=arn,
        ModelApprovalStatus="Approved",
        ApprovalDescription=f"approved by {by} at {now()} ({WQL} {wql:g})",
        CustomerMetadataProperties=package.metadata,
    )
    return describe_package(sagemaker, arn)


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# --- the accuracy threshold ----------------------------------------------------------------------


def read_threshold(ssm: Any, name: str) -> float:
    from botocore.exceptions import ClientError

    try:
        raw = ssm.get_parameter(Name=name)["Parameter"]["Value"]
    except ClientError as error:
        if error_code(error) == "ParameterNotFound":
            raise ThresholdError(
                f"SSM parameter {name} (the {WQL} threshold) does not exist: run `python -m mlops build` "
                f"(it creates it with a default) or `aws ssm put-parameter --name {name} --type String --value 0.3`"
            ) from None
        raise
    try:
        return registry.parse_threshold(raw, name)
    except UserError as error:
        raise ThresholdError(str(error)) from None


def raise_bar(ssm: Any, name: str, wql: float) -> tuple[float, float]:
    """Threshold := ``wql`` when it is better (lower). Returns (before, after)."""
    before = read_threshold(ssm, name)
    if wql < before:
        ssm.put_parameter(Name=name, Value=f"{wql:.6g}", Type="String", Overwrite=True)
        return before, float(f"{wql:.6g}")
    return before, before


def standalone(command: str, doc: Optional[str], add_arguments: Any, run: Any) -> int:
    """``python -m mlops.<command>``: the same options and exit codes as ``python -m mlops <command>``."""
    import argparse

    from sagemaker_deepar import cli

    parser = argparse.ArgumentParser(
        prog=f"python -m mlops {command}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_arguments(parser)
    return cli.run_command(lambda argv: run(parser.parse_args(argv)), debug_env="DEEPAR_MLOPS_DEBUG")
