"""The loop's AWS resources as one CloudFormation stack (mlops/template.yaml), deployed and torn down
on the project's AWS layer (awsinfra: docs/extending-aws.md).

    python -m mlops deploy --infra up   --stack S --name N     create or update the stack, then complete it
    python -m mlops deploy --infra down --stack S --name N     delete it (and what `up` completed)

``up`` waits for the stack, then makes sure every resource of a type some CloudFormation
implementations skip (moto's: the model package group, the alarms, the queue policy; see
../shared/OFFLINE_AWS.md) exists through its own API, with the properties the template declares —
the template stays the one description (awsinfra.completers). On AWS those checks find everything
and change nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from awsinfra.cloudformation import Deployment, Destroyed, Stack
from awsinfra.errors import error_code
from awsinfra.template import load_template as _load

__all__ = ["COMPLETED_TYPES", "TEMPLATE", "down", "error_code", "load_template", "run_infra", "up"]

TEMPLATE = Path(__file__).resolve().parent / "template.yaml"
# the types whose check `up` reports, one line each (what moto's CloudFormation skips in this template)
COMPLETED_TYPES = (
    "AWS::SageMaker::ModelPackageGroup",
    "AWS::CloudWatch::Alarm",
    "AWS::SQS::QueuePolicy",
    "AWS::S3::BucketPolicy",  # the artifacts bucket's TLS-only policy (left out against moto: said)
)
Line = tuple[str, str, str]  # (action, type, name)
_SAID = {"created": "creating", "updated": "updating", "unchanged": "unchanged"}


def load_template(path: Path = TEMPLATE) -> dict:
    return _load(path)


def loop_stack(stack: str, name: str, template_path: Path = TEMPLATE) -> Stack:
    return Stack(stack, template_path, {"Name": name})


def _show(lines: list[Line]) -> None:
    for action, kind, resource_name in lines:
        print(f"{action:<10} {kind:<36} {resource_name}", flush=True)


def completion_lines(deployment: Deployment) -> list[Line]:
    lines: list[Line] = []
    for done in deployment.completed:
        if done.kind not in COMPLETED_TYPES:
            continue
        what = done.physical_id + (f" (not applied {'; '.join(done.applied)})" if done.action == "skipped" else "")
        parts = done.parts or ((done.action, what),)
        lines.extend((action, done.kind, what) for action, what in parts)
    return lines


def up(clients: Any, stack: str, name: str, template_path: Path = TEMPLATE) -> list[Line]:
    """Create or update the stack, then complete it. Returns (action, type, name) per checked resource."""
    deployment = loop_stack(stack, name, template_path).apply(clients, say=None)
    print(f"stack {stack}: {_SAID[deployment.action]}", flush=True)
    print(f"stack {stack}: {deployment.status}", flush=True)
    lines = completion_lines(deployment)
    _show(lines)
    return lines


def removal_lines(destroyed: Destroyed) -> list[Line]:
    lines: list[Line] = []
    for removed in destroyed.removed:
        action, _, why = removed.outcome.partition(" ")
        lines.append((action, removed.kind, f"{removed.physical_id} {why}".strip()))
    lines.append(("deleted" if destroyed.stack_deleted else "absent", "AWS::CloudFormation::Stack", destroyed.stack))
    return lines


def down(clients: Any, stack: str, name: str, template_path: Path = TEMPLATE) -> list[Line]:
    """Delete what ``up`` completed (a group that still holds model versions is kept), then the stack;
    an absent stack is not an error."""
    destroyed = loop_stack(stack, name, template_path).destroy(clients, say=None, missing_ok=True)
    lines = removal_lines(destroyed)
    _show(lines)
    return lines


def run_infra(action: str, stack: str, name: str) -> int:
    from awsinfra.clients import Aws

    (up if action == "up" else down)(Aws(), stack, name)
    return 0
