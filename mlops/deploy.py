"""python -m mlops deploy: an approved model package goes to the ``<name>-staging`` endpoint.

    python -m mlops deploy --from-queue URL  --name N --group G --threshold-parameter P [--local]
    python -m mlops deploy --package-arn ARN --name N --threshold-parameter P [--approve] [--local]
    python -m mlops deploy --infra up|down   --stack S --name N            (mlops/template.yaml; see mlops.infra)

The approval event (EventBridge "SageMaker Model Package State Change", ModelApprovalStatus Approved)
reaches the loop through the rule's SQS target; ``--from-queue`` consumes those messages. For each
approved package: refuse it when its evaluation failed; roll it out to ``<name>-staging`` (create, or
blue/green with automatic rollback on the endpoint's CloudWatch alarm); record the outcome on the
package (``staging_status``), which ``promote`` requires; once it serves, raise the bar (the SSM
threshold := its mean_wQuantileLoss when lower). ``--local``: endpoints are containers of our image (mlops.endpoints), AWS
calls go wherever AWS_ENDPOINT_URL points (moto server offline).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from . import settings
from .endpoints import Endpoints, LocalEndpoints, Rollout, SageMakerEndpoints
from .events import (
    REJECTED,
    STAGING_STATUS,
    DeployFailed,
    LoopError,
    Package,
    PackageRejected,
    approve,
    check_bar,
    describe_package,
    now,
    parse_approval_event,
    raise_bar,
    read_threshold,
    record,
)


@dataclass(frozen=True)
class Deployment:
    package_arn: str
    endpoint: str
    wql: float
    threshold_before: float
    threshold_after: float
    created: bool
    target: str


def stage_endpoint(name: str, stage: str) -> str:
    return f"{name}-{stage}"


def deploy_to_staging(
    sagemaker: Any, ssm: Any, endpoints: Endpoints, package_arn: str, name: str, threshold_parameter: str
) -> Deployment:
    """Roll an approved package out to ``<name>-staging``, record the outcome on it, then raise the bar."""
    package = describe_package(sagemaker, package_arn)
    _ = package.wql  # a failed evaluation stops here, before anything changes
    if package.approval != "Approved":
        raise LoopError(f"model package {package_arn} is {package.approval or 'not approved'}: approve it first")
    # a missing or bad threshold, or a model worse than the bar of now, stops here, before any rollout
    threshold = read_threshold(ssm, threshold_parameter)
    wql = check_bar(package, threshold, threshold_parameter, f"deployed to {stage_endpoint(name, 'staging')}")
    endpoint = stage_endpoint(name, "staging")
    rollout, package = roll_out_recorded(sagemaker, endpoints, package, endpoint, STAGING_STATUS)
    if package.approval == REJECTED:
        raise PackageRejected(rejected_during(package, endpoint))
    # Only a model that serves raises the bar: a broken artifact's evaluation must not gate the next builds.
    before, after = raise_bar(ssm, threshold_parameter, wql)
    return Deployment(package.arn, endpoint, wql, before, after, rollout.created, rollout.target)


def rejected_during(package: Package, endpoint: str) -> str:
    return (
        f"model package {package.arn} was rejected during its rollout to {endpoint}: the rejection stands "
        f"(the bar is not raised; {endpoint} serves it until the next rollout)"
    )


def roll_out(endpoints: Endpoints, endpoint: str, package: Package) -> Rollout:
    if not package.model_data:
        raise DeployFailed(f"model package {package.arn} has no ModelDataUrl in its InferenceSpecification")
    return endpoints.roll_out(endpoint, package.model_data, package.image)


def roll_out_recorded(
    sagemaker: Any, endpoints: Endpoints, package: Package, endpoint: str, status: str
) -> tuple[Rollout, Package]:
    """Roll ``package`` out to ``endpoint`` and record the outcome on the package under ``status``
    (``staging_status``, ``prod_status``): InService, or the failure, which is raised again. Returns
    the package as the registry holds it after the rollout (``approval`` Rejected when an approver
    rejected it meanwhile: ``record`` keeps that)."""
    try:
        rollout = roll_out(endpoints, endpoint, package)
    except DeployFailed as error:
        record(sagemaker, package, **{status: f"Failed at {now()}: {str(error)[:200]}"})
        raise
    return rollout, record(sagemaker, package, **{status: f"InService at {now()} on {endpoint}"})


def consume_queue(
    sqs: Any,
    queue_url: str,
    handle,
    group: Optional[str],
    max_messages: int = 10,
    wait_seconds: int = 1,
) -> list[tuple[str, Any]]:
    """Each approval event on the queue: ``handle(package_arn)``. A message is deleted once handled —
    also when the package is refused or its rollout failed (the outcome is recorded on the package and
    printed); an unexpected error leaves it for redelivery (and the queue's DLQ)."""
    outcomes: list[tuple[str, Any]] = []
    while len(outcomes) < max_messages:
        batch = sqs.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=min(10, max_messages - len(outcomes)), WaitTimeSeconds=wait_seconds
        ).get("Messages", [])
        if not batch:
            break
        for message in batch:
            event = parse_approval_event(message["Body"])
            if event is None or event.status != "Approved" or (group and event.group != group):
                outcomes.append(("skipped", message["MessageId"]))
            else:
                try:
                    outcomes.append(("deployed", handle(event.package_arn)))
                except LoopError as error:
                    outcomes.append(("failed", error))
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=message["ReceiptHandle"])
    return outcomes


# --- command line --------------------------------------------------------------------------------


def add_loop_arguments(parser: argparse.ArgumentParser) -> None:
    """What deploy and promote share: the loop's names and where endpoints run."""
    defaults = settings.current()
    parser.add_argument("--name", default=defaults.name, help="endpoint base name")
    parser.add_argument(
        "--threshold-parameter",
        default=defaults.threshold_parameter,
        help="SSM parameter holding the mean_wQuantileLoss threshold",
    )
    parser.add_argument("--local", action="store_true", help="endpoints are local containers of --image")
    parser.add_argument("--image", default=None, help="serving image override (default: the package's)")
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(defaults.state_dir),
        help="--local: where the endpoint name -> URL map and unpacked models live",
    )
    parser.add_argument("--role", default=defaults.role, help="SageMaker execution role ARN")
    parser.add_argument("--instance-type", default="ml.c5.xlarge")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds to wait for an endpoint")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--from-queue", metavar="URL", help="consume approval events from this SQS queue")
    source.add_argument("--package-arn", metavar="ARN", help="deploy this approved model package")
    source.add_argument("--infra", choices=("up", "down"), help="deploy or delete mlops/template.yaml's stack")
    parser.add_argument("--group", help="model package group the events must be about (default: any)")
    parser.add_argument("--approve", action="store_true", help="with --package-arn: approve it first")
    parser.add_argument("--approved-by", default=settings.current().user or "mlops", help="name in the approval")
    parser.add_argument("--max-messages", type=int, default=10, help="--from-queue: stop after this many")
    parser.add_argument("--stack", default="deepar-mlops", help="--infra: CloudFormation stack name")
    add_loop_arguments(parser)


def clients() -> tuple[Any, Any, Any, Any]:
    from awsinfra.clients import client

    return client("sagemaker"), client("ssm"), client("sqs"), client("s3")


def make_endpoints(args: argparse.Namespace, sagemaker: Any, s3: Any) -> Endpoints:
    if args.local:
        return LocalEndpoints(args.state_dir, s3=s3)
    if not args.role:
        raise LoopError("--role (or env SAGEMAKER_ROLE): the SageMaker execution role the endpoint's model runs as")
    return SageMakerEndpoints(sagemaker, args.role, args.instance_type, timeout=args.timeout)


def with_image(endpoints: Endpoints, image: Optional[str]) -> Endpoints:
    """``endpoints`` serving ``image`` whatever the package names (e.g. a local tag for an ECR image)."""
    if not image:
        return endpoints
    override: str = image

    class Override:
        def roll_out(self, endpoint: str, model_data: str, _image: str) -> Rollout:
            return endpoints.roll_out(endpoint, model_data, override)

    return Override()


def show(deployment: Deployment) -> None:
    bar = (
        f"threshold {deployment.threshold_before:g} -> {deployment.threshold_after:g}"
        if deployment.threshold_after != deployment.threshold_before
        else f"threshold stays {deployment.threshold_before:g}"
    )
    verb = "created" if deployment.created else "updated (blue/green)"
    print(
        f"{deployment.endpoint}: {verb} with {deployment.package_arn} (mean_wQuantileLoss {deployment.wql:g}; {bar})",
        flush=True,
    )


def run(args: argparse.Namespace) -> int:
    if args.infra:
        from . import infra

        return infra.run_infra(args.infra, args.stack, args.name)
    sagemaker, ssm, sqs, s3 = clients()
    endpoints = with_image(make_endpoints(args, sagemaker, s3), args.image)

    def handle(arn: str) -> Deployment:
        deployment = deploy_to_staging(sagemaker, ssm, endpoints, arn, args.name, args.threshold_parameter)
        show(deployment)
        return deployment

    if args.package_arn:
        if args.approve:
            approve(sagemaker, args.package_arn, args.approved_by)
        handle(args.package_arn)
        return 0
    outcomes = consume_queue(sqs, args.from_queue, handle, args.group, args.max_messages)
    failed = [o for kind, o in outcomes if kind == "failed"]
    for error in failed:
        print(f"error: {error}", file=sys.stderr, flush=True)
    print(
        f"{len(outcomes)} message(s): {sum(k == 'deployed' for k, _ in outcomes)} deployed, "
        f"{len(failed)} refused or failed, {sum(k == 'skipped' for k, _ in outcomes)} skipped",
        flush=True,
    )
    return 1 if failed else 0


if __name__ == "__main__":
    from .events import standalone

    raise SystemExit(standalone("deploy", __doc__, add_arguments, run))
