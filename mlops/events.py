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
    # ModelMetrics.ModelQuality.Statistics: the evaluation.json the pipeline's Register step names
    evaluation_uri: str = ""

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


def describe_package(sagemaker: Any, arn: str, s3: Any = None) -> Package:
    """The package as the registry holds it now. A package the pipeline's Register step created
    carries its metrics as ModelMetrics (the Evaluate step's evaluation.json in S3), not in its
    CustomerMetadataProperties: those are read from there (``s3``, a client made when needed), so
    ``Package.wql`` judges every package the same way (issue #23 item 9)."""
    d = sagemaker.describe_model_package(ModelPackageName=arn)
    containers = (d.get("InferenceSpecification") or {}).get("Containers") or [{}]
    statistics = ((d.get("ModelMetrics") or {}).get("ModelQuality") or {}).get("Statistics") or {}
    package = Package(
        arn=d.get("ModelPackageArn", arn),
        group=d.get("ModelPackageGroupName", ""),
        approval=d.get("ModelApprovalStatus") or "",
        model_data=containers[0].get("ModelDataUrl", ""),
        image=containers[0].get("Image", ""),
        metadata=dict(d.get("CustomerMetadataProperties") or {}),
        description=d.get("ApprovalDescription") or "",
        evaluation_uri=statistics.get("S3Uri", ""),
    )
    if WQL in package.metadata or not package.evaluation_uri.startswith("s3://"):
        return package
    return replace(package, metadata={**evaluation_metadata(package.evaluation_uri, s3), **package.metadata})


def evaluation_metadata(uri: str, s3: Any = None) -> dict[str, str]:
    """The regression metrics of the evaluation.json at ``uri`` as metadata strings (what
    ``registry.register`` records): ``{"mean_wQuantileLoss": "0.21", "RMSE": "3.4"}``."""
    if s3 is None:
        from awsinfra.clients import client

        s3 = client("s3")
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    try:
        document = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except Exception as error:  # botocore's errors: the package stays without metrics, said why
        return {EVALUATION_STATUS: "Failed", "evaluation_reason": f"{uri} unreadable: {error}"[:256]}
    try:
        metrics = registry.evaluation_metrics(document, uri)
    except UserError as error:
        return {EVALUATION_STATUS: "Failed", "evaluation_reason": str(error)[:256]}
    return {name: repr(value) for name, value in metrics.items()}


REJECTED = "Rejected"


def record(sagemaker: Any, package: Package, description: Optional[str] = None, **metadata: str) -> Package:
    """Add metadata to a package, as a compare-and-set on its approval (issue #23 item 7).

    moto clears an approval status an update leaves out, so the status is always sent, but the one
    read *now*, right before the update, never ``package.approval`` (read before a rollout that may
    have lasted an hour): an approver who rejected the package meanwhile is not overruled, and
    metadata others added meanwhile is kept. The registry has no conditional update; what is left is
    one round trip between the read and the write. The package as it is afterwards is returned, so
    callers see a Reject and act on it (``deploy`` then does not raise the bar).
    """
    current = describe_package(sagemaker, package.arn)
    merged = {**current.metadata, **metadata}
    request: dict[str, Any] = {"ModelPackageArn": package.arn, "CustomerMetadataProperties": merged}
    if current.approval:
        request["ModelApprovalStatus"] = current.approval
    description = (description or current.description)[:1000]
    if description:
        request["ApprovalDescription"] = description
    sagemaker.update_model_package(**request)
    return replace(current, metadata=merged, description=description)


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


def stored_threshold(wql: float) -> float:
    """``wql`` as ``raise_bar`` stores it in SSM (6 significant digits)."""
    return float(f"{wql:.6g}")


def check_bar(package: Package, threshold: float, parameter: str, action: str) -> float:
    """The package's wQL when it meets the current bar (``threshold``, just read from SSM ``parameter``),
    compared as the bar is stored, so a model whose own wQL set the bar meets it; else PackageRejected
    (issue #23 item 6: ``deploy`` and ``promote`` judge a model by the bar of now, not of its build)."""
    wql = package.wql
    if stored_threshold(wql) > threshold:
        raise PackageRejected(
            f"model package {package.arn}: {WQL} {wql:g} is above the current threshold {threshold:g} "
            f"(SSM parameter {parameter}): it cannot be {action}"
        )
    return wql


def raise_bar(ssm: Any, name: str, wql: float) -> tuple[float, float]:
    """Threshold := ``wql`` when it is better (lower). Returns (before, after)."""
    before = read_threshold(ssm, name)
    if wql < before:
        ssm.put_parameter(Name=name, Value=f"{wql:.6g}", Type="String", Overwrite=True)
        return before, stored_threshold(wql)
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
