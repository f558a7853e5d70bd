"""``python -m ecs deploy`` and ``destroy``: ecs/template.yaml through the awsinfra layer.

``deploy`` creates the stack, or updates it (a new image is a new task definition revision rolled
out by the service, never a new stack), waits, completes through each service's API what the
CloudFormation implementation skipped (ecs/completers.py) and prints the outputs as one JSON line:
ClusterName, ServiceName, LoadBalancerDNS, TargetGroupArn, ScalableTargetId.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any, Callable, Optional

from awsinfra.clients import Aws
from awsinfra.cloudformation import Deployment, Stack, physical_ids
from sagemaker_deepar.errors import UserError

from . import completers as _completers  # noqa: F401 - registers ecs's completers on the layer

TEMPLATE = Path(__file__).with_name("template.yaml")
OUTPUT_KEYS = ("ClusterName", "ServiceName", "LoadBalancerDNS", "TargetGroupArn", "ScalableTargetId")
ECR_IMAGE = re.compile(
    r"^\d{12}\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(?:\.cn)?/(?P<repo>[a-z0-9._/-]+?)(?::[\w.-]+|@sha256:[0-9a-f]{64})?$"
)
STACK_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,31}$")  # the stack name also names the cluster, service, family


def model_location(url: str) -> tuple[str, str]:
    """(bucket, key) of ``--model s3://bucket/key``: one object, the only one the tasks may read."""
    match = re.fullmatch(r"s3://([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])/(.+)", url)
    if not match or match[2].endswith("/"):
        raise UserError(
            f"--model {url!r}: expected s3://bucket/path/model.tar.gz (one object: the task role may read only it)"
        )
    return match[1], match[2]


def image_repository(image: str) -> str:
    """The ECR repository the execution role may pull from; empty for an image outside ECR."""
    match = ECR_IMAGE.match(image)
    return match["repo"] if match else ""


def default_network(aws: Any) -> tuple[str, list[str]]:
    """The account's default VPC and its subnets (at least two, in different zones, for the ALB)."""
    ec2 = aws("ec2")
    vpcs = ec2.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    if not vpcs:
        raise UserError("no default VPC in this region: pass --vpc and --subnets")
    vpc = vpcs[0]["VpcId"]
    subnets = ec2.describe_subnets(Filters=[{"Name": "vpc-id", "Values": [vpc]}])["Subnets"]
    by_zone: dict[str, str] = {}
    for subnet in sorted(subnets, key=lambda s: s["SubnetId"]):
        by_zone.setdefault(subnet["AvailabilityZone"], subnet["SubnetId"])
    if len(by_zone) < 2:
        raise UserError(f"the default VPC {vpc} has subnets in fewer than two zones: pass --subnets")
    return vpc, sorted(by_zone.values())[:3]


def parameters_from(args: argparse.Namespace, aws: Any) -> dict[str, str]:
    if not STACK_NAME.match(args.stack):
        raise UserError(f"--stack {args.stack!r}: letters, digits and '-', starting with a letter, at most 32")
    bucket, key = model_location(args.model)
    if args.subnets and not args.vpc or args.vpc and not args.subnets:
        raise UserError("--vpc and --subnets go together (or neither: the default VPC)")
    vpc, subnets = (args.vpc, args.subnets.split(",")) if args.vpc else default_network(aws)
    if not 1 <= args.min_tasks <= args.max_tasks:
        raise UserError(f"--min-tasks {args.min_tasks} / --max-tasks {args.max_tasks}: need 1 <= min <= max")
    return {
        "Image": args.image,
        "ImageRepository": image_repository(args.image),
        "ModelBucket": bucket,
        "ModelKey": key,
        "VpcId": vpc,
        "Subnets": ",".join(subnets),
        "MinTasks": str(args.min_tasks),
        "MaxTasks": str(args.max_tasks),
        "TaskCpu": str(args.cpu),
        "TaskMemory": str(args.memory),
    }


def stack_outputs(stack: Stack, aws: Any, deployment: Deployment) -> dict[str, str]:
    """The stack's outputs; those whose resource CloudFormation skipped (moto leaves them out)
    resolved from the completed physical ids."""
    outputs = dict(deployment.outputs)
    template = stack.template
    missing = [k for k in template.get("Outputs", {}) if k not in outputs]
    if missing:
        physical = {k: v for k, v in physical_ids(aws("cloudformation"), stack.name).items() if v}
        physical.update({c.logical_id: c.physical_id for c in deployment.completed if c.physical_id})
        resolver = stack.resolver(aws, template, stack.all_parameters(), physical)
        for key in missing:
            outputs[key] = str(resolver.value(template["Outputs"][key]["Value"]))
    return {key: outputs[key] for key in OUTPUT_KEYS}


def deploy(
    aws: Any, name: str, parameters: dict[str, str], say: Optional[Callable[[str], None]] = print
) -> dict[str, str]:
    stack = Stack(name, TEMPLATE, parameters)
    deployment = stack.apply(aws, say)
    return stack_outputs(stack, aws, deployment)


def destroy(aws: Any, name: str, say: Callable[[str], None] = print) -> None:
    stack = Stack(name, TEMPLATE)
    result = stack.destroy(aws, say=say)
    for removed in result.removed:
        say(f"{removed.logical_id} ({removed.kind}): {removed.outcome}")
    say(f"stack {name} deleted")


def add_deploy_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stack", required=True, help="the stack's name (also the cluster's and the service's)")
    parser.add_argument("--image", required=True, help="the image URI (build_and_push_to_ecr.sh prints it)")
    parser.add_argument("--model", required=True, help="s3://bucket/path/model.tar.gz (DEEPAR_MODEL_URL)")
    parser.add_argument("--vpc", help="VPC id (default: the region's default VPC)")
    parser.add_argument("--subnets", help="comma-separated subnet ids in two or more zones (with --vpc)")
    parser.add_argument("--min-tasks", type=int, default=1)
    parser.add_argument("--max-tasks", type=int, default=4)
    parser.add_argument("--cpu", type=int, default=1024, choices=[512, 1024, 2048, 4096], help="CPU units per task")
    parser.add_argument("--memory", type=int, default=2048, help="MiB per task")


def run_deploy(args: argparse.Namespace) -> int:
    aws = Aws()
    outputs = deploy(aws, args.stack, parameters_from(args, aws))
    print(json.dumps(outputs))
    return 0


def run_destroy(args: argparse.Namespace) -> int:
    destroy(Aws(), args.stack)
    return 0
