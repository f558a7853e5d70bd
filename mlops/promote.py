"""python -m mlops promote: the manual approval for production, then the same model to ``<name>-prod``.

    python -m mlops promote --package-arn ARN --approved-by alice --name N [--local]

Only a package whose evaluation passed and that served from ``<name>-staging`` (``staging_status``
InService, recorded by ``deploy``) can be promoted: a model that failed in staging never reaches prod.
The approval is recorded on the package (CustomerMetadataProperties ``promoted_by``/``promoted_at`` and
its ApprovalDescription) before the rollout, which is blue/green like staging's: when the new model is
unhealthy the old prod model keeps serving and ``prod_status`` records the failure.
"""

from __future__ import annotations

import argparse
from typing import Any

from . import settings
from .deploy import (
    Deployment,
    add_loop_arguments,
    clients,
    make_endpoints,
    rejected_during,
    roll_out_recorded,
    show,
    stage_endpoint,
    with_image,
)
from .endpoints import Endpoints
from .events import (
    PROD_STATUS,
    PROMOTED_AT,
    PROMOTED_BY,
    REJECTED,
    STAGING_STATUS,
    LoopError,
    PackageRejected,
    check_bar,
    describe_package,
    now,
    read_threshold,
    record,
)


def promote(
    sagemaker: Any, ssm: Any, endpoints: Endpoints, package_arn: str, name: str, by: str, threshold_parameter: str
) -> Deployment:
    package = describe_package(sagemaker, package_arn)
    _ = package.wql  # a failed evaluation stops here
    if package.approval != "Approved":
        raise LoopError(f"model package {package_arn} is {package.approval or 'not approved'}: it cannot be promoted")
    staging = package.metadata.get(STAGING_STATUS, "")
    if not staging.startswith("InService"):
        raise LoopError(
            f"model package {package_arn} has not served from {stage_endpoint(name, 'staging')} "
            f"({STAGING_STATUS}: {staging or 'never deployed'}): run `python -m mlops deploy` first"
        )
    if not by.strip():
        raise LoopError("--approved-by: name who approves the production rollout")
    endpoint = stage_endpoint(name, "prod")
    threshold = read_threshold(ssm, threshold_parameter)
    wql = check_bar(package, threshold, threshold_parameter, f"promoted to {endpoint}")
    at = now()
    package = record(
        sagemaker, package, description=f"promoted to {endpoint} by {by} at {at}", **{PROMOTED_BY: by, PROMOTED_AT: at}
    )
    if package.approval != "Approved":  # rejected since it was read: nothing rolled out
        raise PackageRejected(f"model package {package_arn} is {package.approval}: it cannot be promoted")
    rollout, package = roll_out_recorded(sagemaker, endpoints, package, endpoint, PROD_STATUS)
    if package.approval == REJECTED:
        raise PackageRejected(rejected_during(package, endpoint))
    return Deployment(package.arn, endpoint, wql, threshold, threshold, rollout.created, rollout.target)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--package-arn", required=True, metavar="ARN", help="the package serving from staging")
    parser.add_argument(
        "--approved-by",
        default=settings.current().user or "",
        help="who approves the rollout (recorded on the package)",
    )
    add_loop_arguments(parser)


def run(args: argparse.Namespace) -> int:
    sagemaker, ssm, _, s3 = clients()
    endpoints = with_image(make_endpoints(args, sagemaker, s3), args.image)
    show(promote(sagemaker, ssm, endpoints, args.package_arn, args.name, args.approved_by, args.threshold_parameter))
    return 0


if __name__ == "__main__":
    from .events import standalone

    raise SystemExit(standalone("promote", __doc__, add_arguments, run))
