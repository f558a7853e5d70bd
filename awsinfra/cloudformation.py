"""CloudFormation for every stack of the project: load a template (short-form tags), resolve its
intrinsics, deploy (create, or update; "no changes" is success), wait, read outputs, destroy; and
complete what a CloudFormation implementation skipped (moto's skips several resource types, see
docs/extending-aws.md) through each service's own API, from the *same template*.

    stack = Stack("my-stack", Path("template.yaml"), {"Name": "x"})
    outputs = stack.deploy(aws)            # create or update, wait, complete, -> outputs
    stack.destroy(aws, delete_data=False)  # what deploy completed, then the stack

Completers are registered per resource type (``@completer("AWS::SNS::TopicPolicy")``); each checks
the resource through its own API, creates (or corrects) it when needed and returns a
:class:`Completed`. What completers *created* is recorded (an S3 object or an SSM parameter) so that
a re-deploy finds it and ``destroy`` removes it (``@deleter``).
"""

from __future__ import annotations

import ast
import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Protocol

from botocore.exceptions import ClientError

from . import clients
from . import completers as _completers  # noqa: F401 - the project-wide completers register on import
from .errors import StackError, error_code
from .registry import (
    ATTRIBUTES,
    COMPLETERS,
    DELETERS,
    Completed,
    Completer,
    attribute,
    attribute_of,
    completer,
    deleted_by_call,
    deleter,
    exists,
)
from .template import Resolver, load_template, parse_template

__all__ = [
    "ATTRIBUTES",
    "COMPLETERS",
    "DELETERS",
    "Completed",
    "Completer",
    "Deployment",
    "Destroyed",
    "Removed",
    "Resolver",
    "S3Record",
    "SsmRecord",
    "Stack",
    "StackError",
    "attribute",
    "completer",
    "deleted_by_call",
    "deleter",
    "exists",
    "load_template",
    "parse_template",
    "wait",
]

Say = Callable[[str], None]
CAPABILITIES = ["CAPABILITY_IAM", "CAPABILITY_NAMED_IAM"]


class Record(Protocol):
    """Where deploy keeps {logical id: physical id} of what completers created (for destroy)."""

    def read(self, aws: Any) -> dict[str, str]: ...
    def write(self, aws: Any, completed: dict[str, str]) -> None: ...
    def delete(self, aws: Any) -> None: ...


@dataclass(frozen=True)
class S3Record:
    bucket: str
    key: str

    def read(self, aws: Any) -> dict[str, str]:
        try:
            return dict(json.loads(aws("s3").get_object(Bucket=self.bucket, Key=self.key)["Body"].read()))
        except ClientError:
            return {}

    def write(self, aws: Any, completed: dict[str, str]) -> None:
        aws("s3").put_object(Bucket=self.bucket, Key=self.key, Body=json.dumps(completed, indent=1).encode())

    def delete(self, aws: Any) -> None:
        try:
            aws("s3").delete_object(Bucket=self.bucket, Key=self.key)
        except ClientError:
            pass


@dataclass(frozen=True)
class SsmRecord:
    name: str

    def read(self, aws: Any) -> dict[str, str]:
        try:
            return dict(json.loads(aws("ssm").get_parameter(Name=self.name)["Parameter"]["Value"]))
        except ClientError:
            return {}

    def write(self, aws: Any, completed: dict[str, str]) -> None:
        if not completed and not self.read(aws):
            return  # nothing completed, nothing to remember: no parameter on AWS, where nothing is skipped
        value = json.dumps(completed)
        aws("ssm").put_parameter(Name=self.name, Value=value, Type="String", Overwrite=True)

    def delete(self, aws: Any) -> None:
        try:
            aws("ssm").delete_parameter(Name=self.name)
        except ClientError:
            pass


# ---------------------------------------------------------------- the stack's status


def stack_status(cfn: Any, stack: str) -> Optional[str]:
    """The stack's status, None when there is no such stack."""
    try:
        return str(cfn.describe_stacks(StackName=stack)["Stacks"][0]["StackStatus"])
    except ClientError as error:
        if "does not exist" in str(error):
            return None
        raise


def wait(cfn: Any, stack: str, timeout: float = 1800) -> str:
    """The stack's status once nothing is in progress (``DELETE_COMPLETE`` once gone)."""
    deadline = time.monotonic() + timeout
    started = time.monotonic()
    while time.monotonic() < deadline:
        status = stack_status(cfn, stack) or "DELETE_COMPLETE"
        if not status.endswith("IN_PROGRESS"):
            return status
        time.sleep(0.5 if time.monotonic() - started < 10 else 5)  # moto answers at once; AWS takes minutes
    raise StackError(f"{stack}: still in progress after {timeout:.0f} s")


def status_reason(cfn: Any, stack: str) -> str:
    try:
        return str(cfn.describe_stacks(StackName=stack)["Stacks"][0].get("StackStatusReason", "see its events"))
    except ClientError:
        return "see its events"


def physical_ids(cfn: Any, stack: str) -> dict[str, str]:
    resources = cfn.list_stack_resources(StackName=stack)["StackResourceSummaries"]
    return {r["LogicalResourceId"]: r.get("PhysicalResourceId", "") for r in resources}


def _parsed(body: Any) -> Any:
    """A template body as CloudFormation returns it (boto3 decodes JSON bodies, not YAML) -> a dict."""
    if isinstance(body, dict):
        return json.loads(json.dumps(body))
    try:
        return json.loads(body)
    except ValueError:
        return parse_template(body)


def deployed_as(cfn: Any, stack: str) -> tuple[Any, dict[str, str]]:
    """(template, parameters) the stack was last created or updated with."""
    body = cfn.get_template(StackName=stack)["TemplateBody"]
    described = cfn.describe_stacks(StackName=stack)["Stacks"][0].get("Parameters", [])
    return _parsed(body), {p["ParameterKey"]: _parameter_value(p.get("ParameterValue", "")) for p in described}


def _parameter_value(value: str) -> str:
    """A parameter as it was passed: moto describes a ``List<...>`` parameter ("a,b") as the
    Python repr of a list ("['a', 'b']"), which would make every re-deploy look like a change."""
    if value.startswith("[") and value.endswith("]"):
        try:
            items = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value
        if isinstance(items, list):
            return ",".join(str(item) for item in items)
    return value


def without_layers(template: dict) -> dict:
    """The template less its ``AWS::Lambda::LayerVersion`` resources and the functions' ``Layers``
    (moto cannot update a stack holding a layer: offline, the layer's completer publishes them and
    the function's offline completer attaches them)."""
    layers = {k for k, r in template["Resources"].items() if r["Type"] == "AWS::Lambda::LayerVersion"}
    resources = {}
    for logical, resource in template["Resources"].items():
        if logical in layers:
            continue
        if resource["Type"] == "AWS::Lambda::Function":
            properties = {k: v for k, v in resource["Properties"].items() if k != "Layers"}
            resource = {**resource, "Properties": properties}
        resources[logical] = resource
    return {**template, "Resources": resources}


# ---------------------------------------------------------------- artifacts


def content_digest(path: Path) -> str:
    """16 hex digits of the file's SHA-256: names an artifact after its content."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as stream:
        for block in iter(lambda: stream.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def content_key(prefix: str, name: str, path: Path, suffix: str = ".zip") -> str:
    """``<prefix><name>-<digest><suffix>``: CloudFormation updates a function's code only when its S3
    key changes, and the same content keeps the same key (a re-deploy then changes nothing)."""
    return f"{prefix}{name}-{content_digest(path)}{suffix}"


def upload_once(aws: Any, path: Path, bucket: str, key: str) -> bool:
    """Upload unless the key is already there (content-named keys); whether it uploaded."""
    if exists(lambda: aws("s3").head_object(Bucket=bucket, Key=key)):
        return False
    aws("s3").upload_file(str(path), bucket, key)
    return True


# ---------------------------------------------------------------- the stack


@dataclass
class Deployment:
    """What one deploy did: ``action`` created | updated | unchanged, the final status, every
    completer's answer (in template order) and the outputs."""

    stack: str
    action: Literal["created", "updated", "unchanged"]
    status: str
    completed: list[Completed]
    outputs: dict[str, str]


@dataclass(frozen=True)
class Removed:
    """One thing a completer had created, and what destroy did with it: ``deleted``, ``absent`` or
    ``kept (why)``."""

    logical_id: str
    kind: str
    physical_id: str
    outcome: str


@dataclass
class Destroyed:
    stack: str
    removed: list[Removed]  # per recorded completion, latest first
    stack_deleted: bool
    buckets_kept: dict[str, int] = field(default_factory=dict)  # bucket -> objects (-1: unreadable)
    buckets_deleted: list[str] = field(default_factory=list)


def _offline(aws: Any) -> bool:
    """An :class:`~awsinfra.clients.Aws` says; any other client factory: ``AWS_ENDPOINT_URL`` decides."""
    return bool(getattr(aws, "offline", clients.offline()))


def _account_and_region(aws: Any) -> tuple[str, str]:
    if isinstance(aws, clients.Aws):
        return aws.account, aws.region
    return clients.account_and_region(aws)


def _default_say(line: str) -> None:
    print(line, flush=True)


@dataclass
class Stack:
    """One CloudFormation stack from one template.

    ``parameters`` override the template's defaults. ``record`` keeps what completers created (an
    :class:`S3Record` in a bucket of yours, default an SSM parameter ``/cfn-completed/<name>``: SSM
    reserves names starting with "aws").
    ``completers`` override the registry's, for this stack only. Offline (``AWS_ENDPOINT_URL``) a
    template holding Lambda layers is deployed without them (see :func:`without_layers`)."""

    name: str
    template_path: Path
    parameters: dict[str, str] = field(default_factory=dict)
    record: Optional[Record] = None
    completers: dict[str, Completer] = field(default_factory=dict)
    timeout: float = 1800

    def __post_init__(self) -> None:
        self.template_path = Path(self.template_path)
        if self.record is None:
            self.record = SsmRecord(f"/cfn-completed/{self.name}")

    @property
    def template(self) -> dict:
        return load_template(self.template_path)

    def all_parameters(self) -> dict[str, str]:
        """The template's defaults with ``parameters`` over them, as strings."""
        defaults = {k: str(v.get("Default", "")) for k, v in self.template.get("Parameters", {}).items()}
        return {**defaults, **{k: str(v) for k, v in self.parameters.items()}}

    def completer_for(self, kind: str) -> Optional[Completer]:
        return self.completers.get(kind) or COMPLETERS.get(kind)

    def status(self, aws: Any) -> Optional[str]:
        return stack_status(aws("cloudformation"), self.name)

    # ------------------------------------------------------------ deploy

    def deploy(self, aws: Any, say: Say = _default_say) -> dict[str, str]:
        """Create or update the stack, wait, complete it; its outputs."""
        return self.apply(aws, say).outputs

    def apply(self, aws: Any, say: Optional[Say] = _default_say) -> Deployment:
        """``deploy`` with everything it did; ``say`` (None: silent) hears one line per step."""
        tell: Say = say or (lambda _line: None)
        cfn, params = aws("cloudformation"), self.all_parameters()
        template = self.template
        offline = _offline(aws)
        has_layers = any(r["Type"] == "AWS::Lambda::LayerVersion" for r in template["Resources"].values())
        body = json.dumps(without_layers(template)) if offline and has_layers else self.template_path.read_text()
        cfn_params = [{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()]
        action: Literal["created", "updated", "unchanged"]
        status = self.status(aws)
        if status is not None and status.endswith("IN_PROGRESS"):
            tell(f"stack {self.name}: {status}: waiting for it first")
            status = wait(cfn, self.name, self.timeout)
        if status == "ROLLBACK_COMPLETE":  # a failed create can only be deleted
            tell(f"stack {self.name}: ROLLBACK_COMPLETE (its creation failed): deleting it to create it again")
            cfn.delete_stack(StackName=self.name)
            wait(cfn, self.name, self.timeout)
            status = None
        if status in (None, "DELETE_COMPLETE"):
            cfn.create_stack(StackName=self.name, TemplateBody=body, Parameters=cfn_params, Capabilities=CAPABILITIES)
            action = "created"
            tell(f"creating stack {self.name}")
        elif deployed_as(cfn, self.name) == (_parsed(body), params):
            action = "unchanged"  # moto would "update" anyway; AWS would answer "No updates"
            tell(f"stack {self.name}: no changes (same template and parameters)")
        else:
            try:
                cfn.update_stack(
                    StackName=self.name, TemplateBody=body, Parameters=cfn_params, Capabilities=CAPABILITIES
                )
                action = "updated"
                tell(f"updating stack {self.name}")
            except ClientError as error:
                if "No updates are to be performed" not in str(error):
                    raise StackError(f"{self.name}: {error}") from None
                action = "unchanged"
                tell(f"stack {self.name}: no changes")
        status = wait(cfn, self.name, self.timeout)
        if status not in ("CREATE_COMPLETE", "UPDATE_COMPLETE"):
            raise StackError(f"{self.name}: {status}: {status_reason(cfn, self.name)}")
        completed = self.complete(aws, template, params, tell)
        return Deployment(self.name, action, status, completed, self.outputs(aws))

    def resolver(self, aws: Any, template: dict, params: dict[str, str], physical: dict[str, str]) -> Resolver:
        account, region = _account_and_region(aws)
        pseudo = {
            "AWS::StackName": self.name,
            "AWS::AccountId": account,
            "AWS::Region": region,
            "AWS::Partition": "aws",
            "AWS::URLSuffix": "amazonaws.com",
            "AWS::NoValue": "",
        }
        return Resolver(template, params, physical, pseudo, attribute_of(aws, physical))

    def complete(self, aws: Any, template: dict, params: dict[str, str], say: Say) -> list[Completed]:
        """Run each resource's completer as its ``when`` says (in template order, which lists
        dependencies first); record what they created for ``destroy``."""
        assert self.record is not None
        deployed = {k: v for k, v in physical_ids(aws("cloudformation"), self.name).items() if v}
        record = self.record.read(aws)
        physical = {**record, **deployed}
        resolver = self.resolver(aws, template, params, physical)
        offline = _offline(aws)
        results: list[Completed] = []
        remembered: dict[str, str] = {}
        for logical, resource in template["Resources"].items():
            if "Condition" in resource and not resolver.condition(resource["Condition"]):
                continue
            kind = resource["Type"]
            entry = self.completer_for(kind)
            if entry is None or entry.when == "offline":
                if logical not in deployed:
                    raise StackError(f"{logical} ({kind}): skipped by CloudFormation and awsinfra cannot complete it")
                if entry is None or not offline:
                    continue
            elif entry.when == "missing" and logical in deployed:
                continue
            done = entry.fn(aws, logical, resolver.value(resource.get("Properties", {})), resolver)
            done = replace(done, logical_id=logical, kind=kind)
            results.append(done)
            if done.physical_id:
                physical[logical] = done.physical_id
            if logical not in deployed and (done.action == "created" or logical in record):
                remembered[logical] = done.physical_id
            if done.action == "created":
                say(f"completed {logical} ({kind}) through its service API")
            elif done.action == "updated":
                say(f"completed {logical} ({kind}): {', '.join(done.applied)} through its service API")
            elif done.action == "skipped":
                reason = "; ".join(done.applied)
                say(f"{logical} ({kind}): not applied {reason}")
        self.record.write(aws, remembered)
        return results

    # ------------------------------------------------------------ outputs

    def outputs(self, aws: Any) -> dict[str, str]:
        description = aws("cloudformation").describe_stacks(StackName=self.name)["Stacks"][0]
        return {o["OutputKey"]: o.get("OutputValue", "") for o in description.get("Outputs", [])}

    def completed(self, aws: Any) -> dict[str, str]:
        """{logical id: physical id} of what completers created (the record)."""
        assert self.record is not None
        return self.record.read(aws)

    # ------------------------------------------------------------ destroy

    def buckets(self, aws: Any) -> list[str]:
        """The stack's buckets (physical names), template order."""
        deployed = physical_ids(aws("cloudformation"), self.name)
        return [
            deployed[logical]
            for logical, resource in self.template["Resources"].items()
            if resource["Type"] == "AWS::S3::Bucket" and deployed.get(logical)
        ]

    def destroy(
        self,
        aws: Any,
        delete_data: bool = False,
        say: Optional[Say] = _default_say,
        missing_ok: bool = False,
        extra_buckets: tuple[str, ...] = (),
    ) -> Destroyed:
        """Remove what deploy completed (reverse order, through each type's deleter), then the stack.
        Buckets (the stack's and ``extra_buckets``) are kept with their objects unless
        ``delete_data``, then emptied (every version) and deleted."""
        assert self.record is not None
        tell: Say = say or (lambda _line: None)
        cfn = aws("cloudformation")
        if self.status(aws) is None:
            if not missing_ok:
                raise StackError(f"{self.name}: no such stack")
            return Destroyed(self.name, [], False)
        kinds = {k: r["Type"] for k, r in self.template["Resources"].items()}
        removed = []
        for logical, pid in reversed(list(self.record.read(aws).items())):
            kind = kinds.get(logical, "")
            remove = DELETERS.get(kind)
            if remove is None:
                continue  # goes with its parent (a policy with its queue, a stage with its API)
            try:
                outcome = remove(aws, pid)
            except ClientError as error:
                outcome = f"kept ({error.response['Error']['Message']})"
                tell(f"{logical}: {error.response['Error']['Message']} (continuing)")
            removed.append(Removed(logical, kind, pid, outcome))
        buckets = [*self.buckets(aws), *extra_buckets]
        if delete_data:
            for bucket in self.buckets(aws):
                empty_bucket(aws, bucket)  # a non-empty bucket fails the stack's deletion
        cfn.delete_stack(StackName=self.name)
        status = wait(cfn, self.name, self.timeout)
        if status != "DELETE_COMPLETE":
            raise StackError(f"{self.name}: {status}: {status_reason(cfn, self.name)}")
        self.record.delete(aws)
        result = Destroyed(self.name, removed, True)
        for bucket in buckets:
            if delete_data:
                if bucket_exists(aws, bucket):  # retained by DeletionPolicy
                    empty_bucket(aws, bucket)
                    aws("s3").delete_bucket(Bucket=bucket)
                result.buckets_deleted.append(bucket)
            elif bucket_exists(aws, bucket):
                result.buckets_kept[bucket] = count_objects(aws, bucket)
        return result


def bucket_exists(aws: Any, bucket: str) -> bool:
    return exists(lambda: aws("s3").head_bucket(Bucket=bucket))


def count_objects(aws: Any, bucket: str) -> int:
    try:
        pages = aws("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return sum(page.get("KeyCount", 0) for page in pages)
    except ClientError:
        return -1


def empty_bucket(aws: Any, bucket: str) -> None:
    """Delete every object version and delete marker (a versioned bucket keeps them otherwise)."""
    s3 = aws("s3")
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        items = [
            {"Key": v["Key"], "VersionId": v["VersionId"]}
            for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
        ]
        if items:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": items})


def not_found(error: ClientError, *codes: str) -> bool:
    """Whether a ClientError says the thing is not there (the codes vary by service)."""
    return error_code(error) in (codes or ("ResourceNotFound", "ResourceNotFoundException", "NotFoundException"))
