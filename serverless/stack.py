"""``deploy`` and ``destroy``: the whole stack from ``template.yaml``.

``deploy`` packages the functions, uploads them to a code bucket, creates (or updates) the
CloudFormation stack and then checks every resource a CloudFormation implementation may skip
(moto skips subscriptions, topic/queue policies, API stages, keys and usage plans, and applies only
a bucket's name and encryption) through its own service API, completing from the *same template*
what is missing and saying which. Its last output line is the stack outputs as one JSON object.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import boto3
import yaml
from botocore.exceptions import ClientError

from . import package

TEMPLATE = Path(__file__).with_name("template.yaml")
OUTPUT_KEYS = ("InputBucket", "OutputBucket", "QueueUrl", "DeadLetterQueueUrl", "ApiUrl", "ApiKeyId")
RECORD_KEY = "serverless/completed.json"  # in the code bucket: what deploy created outside CloudFormation


class StackError(Exception):
    """The stack could not be created, completed or removed; the message says which resource and why."""


# ---------------------------------------------------------------- the template


class _CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short tags (``!Ref X`` -> ``{"Ref": "X"}``)."""


def _tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt":
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
    return {name: value}


_CfnLoader.add_multi_constructor("!", _tag)


def load_template(path: Path = TEMPLATE) -> dict:
    return yaml.load(path.read_text(), Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass


@dataclass
class Resolver:
    """Evaluates the template's intrinsic functions against a deployed stack."""

    template: dict
    parameters: dict[str, str]
    physical: dict[str, str]  # logical id -> physical id
    pseudo: dict[str, str]
    attribute: Callable[[str, str, str], str]  # (logical id, type, attribute) -> value

    def condition(self, name: str) -> bool:
        return bool(self.value(self.template.get("Conditions", {})[name]))

    def ref(self, name: str) -> str:
        if name in self.pseudo:
            return self.pseudo[name]
        if name in self.parameters:
            return self.parameters[name]
        if name in self.physical:
            return self.physical[name]
        raise StackError(f"template: Ref {name}: not deployed")

    def get_att(self, logical: str, attribute: str) -> str:
        return self.attribute(logical, self.template["Resources"][logical]["Type"], attribute)

    def value(self, node: Any) -> Any:
        if isinstance(node, list):
            return [v for v in (self.value(n) for n in node) if v is not _NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Ref":
                return _NO_VALUE if arg == "AWS::NoValue" else self.ref(arg)
            if key == "Fn::GetAtt":
                return self.get_att(*(arg if isinstance(arg, list) else arg.split(".", 1)))
            if key == "Fn::Sub":
                text, extra = (
                    (arg, {}) if isinstance(arg, str) else (arg[0], {k: self.value(v) for k, v in arg[1].items()})
                )
                return self._sub(text, extra)
            if key == "Fn::If":
                return self.value(arg[1] if self.condition(arg[0]) else arg[2])
            if key == "Fn::Equals":
                return self.value(arg[0]) == self.value(arg[1])
            if key == "Fn::Not":
                return not self.value(arg[0])
            if key == "Fn::Select":
                return self.value(arg[1])[int(self.value(arg[0]))]
            if key == "Fn::Split":
                return str(self.value(arg[1])).split(arg[0])
            if key == "Condition":
                return self.condition(arg)
        return {k: v for k, v in ((k, self.value(v)) for k, v in node.items()) if v is not _NO_VALUE}

    def _sub(self, text: str, extra: dict) -> str:
        import re

        def replace(match: "re.Match[str]") -> str:
            name = match[1]
            if name in extra:
                return str(extra[name])
            if "." in name and not name.startswith("AWS::"):
                return self.get_att(*name.split(".", 1))
            return self.ref(name)

        return re.sub(r"\$\{([^}!]+)\}", replace, text)


_NO_VALUE = object()


# ---------------------------------------------------------------- AWS side


@dataclass
class Aws:
    session: boto3.Session = field(default_factory=boto3.Session)

    def __post_init__(self) -> None:
        self.clients: dict[str, Any] = {}

    def __call__(self, service: str) -> Any:
        if service not in self.clients:
            self.clients[service] = self.session.client(service)
        return self.clients[service]

    @property
    def region(self) -> str:
        return self.session.region_name or "us-east-1"

    def account(self) -> str:
        return self("sts").get_caller_identity()["Account"]

    @property
    def offline(self) -> bool:
        """A local stand-in (moto server) answers instead of AWS: its event source mappings would consume
        messages without running the function, so `emulate` plays the SQS poller instead."""
        return bool(os.environ.get("AWS_ENDPOINT_URL"))


def attribute_of(aws: Aws, physical: dict[str, str]) -> Callable[[str, str, str], str]:
    def attribute(logical: str, kind: str, name: str) -> str:
        pid = physical.get(logical)
        if pid is None:
            raise StackError(f"template: {logical}.{name}: {logical} is not deployed")
        if kind == "AWS::SQS::Queue" and name == "Arn":
            return aws("sqs").get_queue_attributes(QueueUrl=pid, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
        if kind == "AWS::S3::Bucket" and name == "Arn":
            return f"arn:aws:s3:::{pid}"
        if kind == "AWS::Lambda::Function" and name == "Arn":
            return aws("lambda").get_function(FunctionName=pid)["Configuration"]["FunctionArn"]
        if kind == "AWS::IAM::Role" and name == "Arn":
            return aws("iam").get_role(RoleName=pid)["Role"]["Arn"]
        if kind == "AWS::Events::Rule" and name == "Arn":
            return aws("events").describe_rule(Name=pid)["Arn"]
        if kind == "AWS::ApiGateway::RestApi" and name == "RootResourceId":
            items = aws("apigateway").get_resources(restApiId=pid)["items"]
            return next(i["id"] for i in items if i["path"] == "/")
        raise StackError(f"template: GetAtt {logical}.{name} is not supported by deploy's completion")

    return attribute


# ---------------------------------------------------------------- completing what was skipped


def _exists(call: Callable[[], Any]) -> bool:
    try:
        call()
        return True
    except ClientError:
        return False


# Each completer checks the resource through its service API, creates it when missing and returns
# (physical id, whether it had to create it).
Completed = tuple[str, bool]


def _topic_policy(aws: Aws, props: dict) -> Completed:
    created = False
    for topic in props["Topics"]:
        current = aws("sns").get_topic_attributes(TopicArn=topic)["Attributes"].get("Policy", "")
        if props["PolicyDocument"]["Statement"][0]["Sid"] not in current:
            policy = json.dumps(props["PolicyDocument"])
            aws("sns").set_topic_attributes(TopicArn=topic, AttributeName="Policy", AttributeValue=policy)
            created = True
    return ",".join(props["Topics"]), created


def _queue_policy(aws: Aws, props: dict) -> Completed:
    created = False
    for url in props["Queues"]:
        current = aws("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"]).get("Attributes", {})
        if any(statement["Sid"] not in current.get("Policy", "") for statement in props["PolicyDocument"]["Statement"]):
            aws("sqs").set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(props["PolicyDocument"])})
            created = True
    return ",".join(props["Queues"]), created


def _subscription(aws: Aws, props: dict) -> Completed:
    subscriptions = aws("sns").list_subscriptions_by_topic(TopicArn=props["TopicArn"])["Subscriptions"]
    for s in subscriptions:
        if s["Endpoint"] == props["Endpoint"] and s["Protocol"] == props["Protocol"]:
            return s["SubscriptionArn"], False
    attributes = {"RawMessageDelivery": "true"} if str(props.get("RawMessageDelivery")).lower() == "true" else {}
    arn = aws("sns").subscribe(
        TopicArn=props["TopicArn"],
        Protocol=props["Protocol"],
        Endpoint=props["Endpoint"],
        Attributes=attributes,
        ReturnSubscriptionArn=True,
    )["SubscriptionArn"]
    return arn, True


def _bucket_policy(aws: Aws, props: dict) -> Completed:
    """A bucket's policy (moto's CloudFormation skips AWS::S3::BucketPolicy): put when a statement is missing."""
    s3, bucket = aws("s3"), props["Bucket"]
    try:
        current = s3.get_bucket_policy(Bucket=bucket)["Policy"]
    except ClientError:
        current = ""
    if all(statement["Sid"] in current for statement in props["PolicyDocument"]["Statement"]):
        return bucket, False
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(props["PolicyDocument"]))
    return bucket, True


def _stage(aws: Aws, props: dict) -> Completed:
    api = aws("apigateway")
    if _exists(lambda: api.get_stage(restApiId=props["RestApiId"], stageName=props["StageName"])):
        return props["StageName"], False
    api.create_stage(restApiId=props["RestApiId"], stageName=props["StageName"], deploymentId=props["DeploymentId"])
    return props["StageName"], True


def _api_key(aws: Aws, props: dict) -> Completed:
    api = aws("apigateway")
    found = [k for k in api.get_api_keys(nameQuery=props["Name"])["items"] if k["name"] == props["Name"]]
    if found:
        return found[0]["id"], False
    return api.create_api_key(name=props["Name"], enabled=bool(props.get("Enabled", True)))["id"], True


def _usage_plan(aws: Aws, props: dict) -> Completed:
    api = aws("apigateway")
    found = [p for p in api.get_usage_plans()["items"] if p["name"] == props["UsagePlanName"]]
    if found:
        return found[0]["id"], False
    plan = api.create_usage_plan(
        name=props["UsagePlanName"],
        apiStages=[{"apiId": s["ApiId"], "stage": s["Stage"]} for s in props["ApiStages"]],
        throttle={
            "rateLimit": float(props["Throttle"]["RateLimit"]),
            "burstLimit": int(props["Throttle"]["BurstLimit"]),
        },
        quota={"limit": int(props["Quota"]["Limit"]), "period": props["Quota"]["Period"]},
    )
    return plan["id"], True


def _usage_plan_key(aws: Aws, props: dict) -> Completed:
    api = aws("apigateway")
    keys = api.get_usage_plan_keys(usagePlanId=props["UsagePlanId"])["items"]
    pid = f"{props['UsagePlanId']}:{props['KeyId']}"
    if any(k["id"] == props["KeyId"] for k in keys):
        return pid, False
    api.create_usage_plan_key(usagePlanId=props["UsagePlanId"], keyId=props["KeyId"], keyType=props["KeyType"])
    return pid, True


def _permission(aws: Aws, props: dict) -> Completed:
    try:
        policy = json.loads(aws("lambda").get_policy(FunctionName=props["FunctionName"])["Policy"])
        for statement in policy.get("Statement", []):
            if statement.get("Principal", {}).get("Service") == props["Principal"]:
                return statement["Sid"], False
    except ClientError:
        pass
    sid = "api-gateway-invokes"
    aws("lambda").add_permission(
        FunctionName=props["FunctionName"],
        StatementId=sid,
        Action=props["Action"],
        Principal=props["Principal"],
        SourceArn=props["SourceArn"],
    )
    return sid, True


def _layer(aws: Aws, props: dict) -> Completed:
    versions = aws("lambda").list_layer_versions(LayerName=props["LayerName"]).get("LayerVersions", [])
    if versions:
        return versions[0]["LayerVersionArn"], False
    arn = aws("lambda").publish_layer_version(
        LayerName=props["LayerName"],
        Description=props.get("Description", ""),
        Content={"S3Bucket": props["Content"]["S3Bucket"], "S3Key": props["Content"]["S3Key"]},
        CompatibleRuntimes=props.get("CompatibleRuntimes", []),
    )["LayerVersionArn"]
    return arn, True


def _method(aws: Aws, props: dict) -> Completed:
    try:
        aws("apigateway").get_method(
            restApiId=props["RestApiId"], resourceId=props["ResourceId"], httpMethod=props["HttpMethod"]
        )
    except ClientError:
        raise StackError(f"API method {props['HttpMethod']} on {props['ResourceId']} was not created") from None
    return props["HttpMethod"], False


def _deployment(aws: Aws, props: dict) -> Completed:
    deployments = aws("apigateway").get_deployments(restApiId=props["RestApiId"])["items"]
    if deployments:
        return deployments[0]["id"], False
    return aws("apigateway").create_deployment(restApiId=props["RestApiId"])["id"], True


COMPLETERS: dict[str, Callable[[Aws, dict], Completed]] = {
    "AWS::SNS::TopicPolicy": _topic_policy,
    "AWS::SQS::QueuePolicy": _queue_policy,
    "AWS::S3::BucketPolicy": _bucket_policy,
    "AWS::SNS::Subscription": _subscription,
    "AWS::ApiGateway::Stage": _stage,
    "AWS::ApiGateway::ApiKey": _api_key,
    "AWS::ApiGateway::UsagePlan": _usage_plan,
    "AWS::ApiGateway::UsagePlanKey": _usage_plan_key,
    "AWS::ApiGateway::Method": _method,
    "AWS::ApiGateway::Deployment": _deployment,
    "AWS::Lambda::Permission": _permission,
    "AWS::Lambda::LayerVersion": _layer,
}


def _function_configuration(aws: Aws, name: str, props: dict) -> list[str]:
    """Offline: what moto's stack update missed on a function (a parameter used only inside a Sub
    does not mark it changed; layers are not its to attach) -> updated through Lambda's API."""
    current = aws("lambda").get_function_configuration(FunctionName=name)
    changes: dict[str, Any] = {}
    variables = {k: str(v) for k, v in props.get("Environment", {}).get("Variables", {}).items()}
    if current.get("Environment", {}).get("Variables", {}) != variables:
        changes["Environment"] = {"Variables": variables}
    if [layer["Arn"] for layer in current.get("Layers", [])] != list(props.get("Layers", [])):
        changes["Layers"] = list(props.get("Layers", []))
    for key in ("Handler", "Runtime", "Timeout", "MemorySize"):
        wanted = int(props[key]) if key in ("Timeout", "MemorySize") and key in props else props.get(key)
        if wanted is not None and current.get(key) != wanted:
            changes[key] = wanted
    if changes:
        aws("lambda").update_function_configuration(FunctionName=name, **changes)
    return sorted(changes)


def _role_policies(aws: Aws, name: str, props: dict) -> list[str]:
    """Offline: a role's inline policies as the template resolves them now (moto's update misses Sub-only changes)."""
    changed = []
    for policy in props.get("Policies", []):
        try:
            current = aws("iam").get_role_policy(RoleName=name, PolicyName=policy["PolicyName"])["PolicyDocument"]
        except ClientError:
            current = None
        if isinstance(current, str):  # moto keeps what its CloudFormation wrote as a Python repr
            try:
                current = json.loads(current)
            except ValueError:
                current = ast.literal_eval(current)
        if current != json.loads(json.dumps(policy["PolicyDocument"])):
            aws("iam").put_role_policy(
                RoleName=name, PolicyName=policy["PolicyName"], PolicyDocument=json.dumps(policy["PolicyDocument"])
            )
            changed.append(f"Policies[{policy['PolicyName']}]")
    return changed


def _key_policy(aws: Aws, key_id: str, props: dict) -> list[str]:
    """Offline: a KMS key's policy as the template says (moto's CloudFormation stores a KeyPolicy object
    unserialised, and KMS's own API then fails on that key)."""
    wanted = json.loads(json.dumps(props["KeyPolicy"]))
    try:
        current = json.loads(aws("kms").get_key_policy(KeyId=key_id, PolicyName="default")["Policy"])
    except (ClientError, TypeError, ValueError):
        current = None
    if current == wanted:
        return []
    aws("kms").put_key_policy(KeyId=key_id, PolicyName="default", Policy=json.dumps(wanted))
    return ["KeyPolicy"]


# Offline only: resources moto's CloudFormation creates but does not reliably update.
RECONCILERS: dict[str, Callable[[Aws, str, dict], list[str]]] = {
    "AWS::Lambda::Function": _function_configuration,
    "AWS::IAM::Role": _role_policies,
    "AWS::KMS::Key": _key_policy,
}


def complete_bucket(aws: Aws, name: str, props: dict) -> list[str]:
    """Apply the bucket properties CloudFormation may have ignored; the names of those it had to apply."""
    s3, applied = aws("s3"), []
    block = props.get("PublicAccessBlockConfiguration")
    if block:
        try:
            current = s3.get_public_access_block(Bucket=name)["PublicAccessBlockConfiguration"]
        except ClientError:
            current = {}
        if any(not current.get(k) for k in block):
            s3.put_public_access_block(
                Bucket=name, PublicAccessBlockConfiguration={k: bool(v) for k, v in block.items()}
            )
            applied.append("PublicAccessBlockConfiguration")
    versioning = props.get("VersioningConfiguration")
    if versioning and s3.get_bucket_versioning(Bucket=name).get("Status") != versioning["Status"]:
        s3.put_bucket_versioning(Bucket=name, VersioningConfiguration={"Status": versioning["Status"]})
        applied.append("VersioningConfiguration")
    notifications = props.get("NotificationConfiguration", {}).get("TopicConfigurations")
    if notifications:
        current = s3.get_bucket_notification_configuration(Bucket=name).get("TopicConfigurations", [])
        wanted = [
            {
                "TopicArn": n["Topic"],
                "Events": [n["Event"]],
                "Filter": {
                    "Key": {
                        "FilterRules": [{"Name": r["Name"], "Value": r["Value"]} for r in n["Filter"]["S3Key"]["Rules"]]
                    }
                },
            }
            for n in notifications
        ]
        if {c["TopicArn"] for c in current} != {w["TopicArn"] for w in wanted}:
            s3.put_bucket_notification_configuration(
                Bucket=name, NotificationConfiguration={"TopicConfigurations": wanted}
            )
            applied.append("NotificationConfiguration")
    return applied


# ---------------------------------------------------------------- deploy


def code_bucket_name(stack: str, account: str) -> str:
    return f"{stack}-code-{account}"


def ensure_code_bucket(aws: Aws, name: str) -> None:
    s3 = aws("s3")
    if not _exists(lambda: s3.head_bucket(Bucket=name)):
        extra = {} if aws.region == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": aws.region}}
        s3.create_bucket(Bucket=name, **extra)
    s3.put_bucket_encryption(
        Bucket=name,
        ServerSideEncryptionConfiguration={
            "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
        },
    )
    s3.put_public_access_block(
        Bucket=name,
        PublicAccessBlockConfiguration={
            k: True for k in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets")
        },
    )


def _stack_status(cfn: Any, stack: str) -> Optional[str]:
    try:
        return cfn.describe_stacks(StackName=stack)["Stacks"][0]["StackStatus"]
    except ClientError as error:
        if "does not exist" in str(error):
            return None
        raise


def _wait(cfn: Any, stack: str, timeout: float = 1800) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = _stack_status(cfn, stack) or "DELETE_COMPLETE"
        if not status.endswith("IN_PROGRESS"):
            return status
        time.sleep(0.5 if timeout - (deadline - time.monotonic()) < 10 else 5)
    raise StackError(f"{stack}: still in progress after {timeout} s")


def _physical_ids(cfn: Any, stack: str) -> dict[str, str]:
    resources = cfn.list_stack_resources(StackName=stack)["StackResourceSummaries"]
    return {r["LogicalResourceId"]: r.get("PhysicalResourceId", "") for r in resources}


def _stored(aws: Aws, bucket: str, key: str) -> bool:
    return _exists(lambda: aws("s3").head_object(Bucket=bucket, Key=key))


def _digest(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def without_layers(template: dict) -> dict:
    """The template less its ``AWS::Lambda::LayerVersion`` resources and the functions' ``Layers``."""
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


def _parsed(body: Any) -> Any:
    """A template body as CloudFormation returns it (boto3 decodes JSON bodies, not YAML) -> a dict."""
    if isinstance(body, dict):
        return json.loads(json.dumps(body))
    try:
        return json.loads(body)
    except ValueError:
        return yaml.load(body, Loader=_CfnLoader)  # noqa: S506 - SafeLoader subclass


def _deployed_as(cfn: Any, stack: str) -> tuple[Any, dict[str, str]]:
    """(template, parameters) the stack was last created or updated with."""
    body = cfn.get_template(StackName=stack)["TemplateBody"]
    described = cfn.describe_stacks(StackName=stack)["Stacks"][0].get("Parameters", [])
    return _parsed(body), {p["ParameterKey"]: p.get("ParameterValue", "") for p in described}


def deploy(aws: Aws, stack: str, parameters: dict[str, str], out: Path, say: Callable[[str], None] = print) -> dict:
    account = aws.account()
    bundles = {b.name: b for b in package.build(out)}
    code_bucket = code_bucket_name(stack, account)
    ensure_code_bucket(aws, code_bucket)
    keys = {"batch_forecast": "BatchCodeKey", "forecast_api": "ApiCodeKey", package.LAYER: "ParquetLayerKey"}
    template = load_template(TEMPLATE)
    defaults = {k: str(v.get("Default", "")) for k, v in template["Parameters"].items()}
    # Keys named after the bundle's content: CloudFormation updates a function's code only when its
    # S3Key changes, and the same code keeps the same key (a re-deploy then changes nothing).
    content_keys = {keys[name]: f"serverless/{name}-{_digest(Path(b.path))}.zip" for name, b in bundles.items()}
    params = {**defaults, "CodeBucket": code_bucket, **content_keys, **parameters}
    if aws.offline and "EventSourceMapping" not in parameters:
        params["EventSourceMapping"] = "false"
        say("offline (AWS_ENDPOINT_URL): no event source mapping; `python -m serverless emulate` polls the queue")
    uploaded = 0
    for name, bundle in bundles.items():
        key = params[keys[name]]
        if key == content_keys.get(keys[name]) and _stored(aws, code_bucket, key):
            continue  # the same content is already there under its own name
        aws("s3").upload_file(bundle.path, code_bucket, key)
        uploaded += 1
    say(f"uploaded {uploaded} of {len(bundles)} bundles to s3://{code_bucket}/ (the others are there already)")
    cfn = aws("cloudformation")
    cfn_params = [{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()]
    # moto cannot update a stack holding a layer (a function's Layers resolve to nothing and the update
    # fails): offline the stack gets the template without layers, and `complete` publishes and attaches them.
    body = json.dumps(without_layers(template)) if aws.offline else TEMPLATE.read_text()
    status = _stack_status(cfn, stack)
    try:
        if status is None:
            cfn.create_stack(StackName=stack, TemplateBody=body, Parameters=cfn_params, Capabilities=["CAPABILITY_IAM"])
            say(f"creating stack {stack}")
        elif _deployed_as(cfn, stack) == (_parsed(body), params):
            say(f"stack {stack}: no changes (same template and parameters)")
        else:
            cfn.update_stack(StackName=stack, TemplateBody=body, Parameters=cfn_params, Capabilities=["CAPABILITY_IAM"])
            say(f"updating stack {stack}")
    except ClientError as error:
        if "No updates are to be performed" not in str(error):
            raise StackError(f"{stack}: {error}") from None
        say(f"stack {stack}: no changes")
    status = _wait(cfn, stack)
    if status not in ("CREATE_COMPLETE", "UPDATE_COMPLETE"):
        raise StackError(f"{stack}: {status}")
    completed = complete(aws, stack, template, params, code_bucket, say)
    outputs = stack_outputs(aws, stack, completed)
    if outputs.get("ApiKeyId"):
        say(f"API key {outputs['ApiKeyId']}: read its value with `{api_key_command(outputs['ApiKeyId'])}`")
    return outputs


def complete(
    aws: Aws, stack: str, template: dict, params: dict[str, str], code_bucket: str, say: Callable[[str], None]
) -> dict[str, str]:
    """Create through the service APIs each template resource the stack lacks (in template order,
    which lists dependencies first); record them for `destroy`."""
    cfn = aws("cloudformation")
    stack_physical = _physical_ids(cfn, stack)
    record = _read_record(aws, code_bucket)
    physical = {**record, **{k: v for k, v in stack_physical.items() if v}}
    pseudo = {
        "AWS::StackName": stack,
        "AWS::AccountId": aws.account(),
        "AWS::Region": aws.region,
        "AWS::Partition": "aws",
        "AWS::URLSuffix": "amazonaws.com",
        "AWS::NoValue": "",
    }
    resolver = Resolver(template, params, physical, pseudo, attribute_of(aws, physical))
    completed: dict[str, str] = {}
    for logical, resource in template["Resources"].items():
        if "Condition" in resource and not resolver.condition(resource["Condition"]):
            continue
        kind = resource["Type"]
        if kind == "AWS::S3::Bucket":
            if logical not in physical:
                raise StackError(f"{logical}: the stack created no bucket")
            applied = complete_bucket(aws, physical[logical], resolver.value(resource["Properties"]))
            if applied:
                say(f"completed {logical} ({kind}): {', '.join(applied)}")
            continue
        if kind not in COMPLETERS:
            if not physical.get(logical):
                raise StackError(f"{logical} ({kind}): skipped by CloudFormation and deploy cannot complete it")
            if aws.offline and kind in RECONCILERS:
                applied = RECONCILERS[kind](aws, physical[logical], resolver.value(resource["Properties"]))
                if applied:
                    say(f"completed {logical} ({kind}): {', '.join(applied)} through its service API")
            continue
        if stack_physical.get(logical):
            continue
        if aws.offline and kind == "AWS::S3::BucketPolicy":
            say(
                f"{logical} ({kind}): not applied offline (moto ignores policy conditions: its TLS-only Deny would refuse all)"
            )
            continue
        pid, created = COMPLETERS[kind](aws, resolver.value(resource["Properties"]))
        physical[logical] = pid
        if created or logical in record:
            completed[logical] = pid
        if created:
            say(f"completed {logical} ({kind}) through its service API")
    _write_record(aws, code_bucket, completed)
    return completed


def _read_record(aws: Aws, bucket: str) -> dict[str, str]:
    try:
        return json.loads(aws("s3").get_object(Bucket=bucket, Key=RECORD_KEY)["Body"].read())
    except ClientError:
        return {}


def _write_record(aws: Aws, bucket: str, completed: dict[str, str]) -> None:
    aws("s3").put_object(Bucket=bucket, Key=RECORD_KEY, Body=json.dumps(completed, indent=1).encode())


def stack_outputs(aws: Aws, stack: str, completed: Optional[dict[str, str]] = None) -> dict[str, str]:
    """InputBucket, OutputBucket, QueueUrl, DeadLetterQueueUrl, ApiUrl, ApiKeyId and the rest.

    Never the API key's value (issue #23, low): outputs are printed and logged; ``api_key_command`` says
    how its owner reads it."""
    description = aws("cloudformation").describe_stacks(StackName=stack)["Stacks"][0]
    outputs = {o["OutputKey"]: o.get("OutputValue", "") for o in description.get("Outputs", [])}
    if completed is None:
        completed = _read_record(aws, code_bucket_name(stack, aws.account()))
    key_id = completed.get("ApiKey") or outputs.get("ApiKeyId", "")
    if key_id and key_id != "ApiKey":
        outputs["ApiKeyId"] = key_id
    return {**{k: outputs.get(k, "") for k in OUTPUT_KEYS}, **outputs}


def api_key_command(key_id: str) -> str:
    """How the API key's owner reads its value (AWS CLI)."""
    return f"aws apigateway get-api-key --api-key {key_id} --include-value --query value --output text"


def api_key_value(aws: Aws, key_id: str) -> str:
    """The API key's value, read through API Gateway (for `emulate`, which checks callers' x-api-key)."""
    return aws("apigateway").get_api_key(apiKey=key_id, includeValue=True)["value"]


# ---------------------------------------------------------------- destroy


def _objects(aws: Aws, bucket: str) -> int:
    try:
        return sum(
            page.get("KeyCount", 0) for page in aws("s3").get_paginator("list_objects_v2").paginate(Bucket=bucket)
        )
    except ClientError:
        return -1


def _empty_and_delete(aws: Aws, bucket: str) -> None:
    s3 = aws("s3")
    for page in s3.get_paginator("list_object_versions").paginate(Bucket=bucket):
        items = [
            {"Key": v["Key"], "VersionId": v["VersionId"]}
            for v in page.get("Versions", []) + page.get("DeleteMarkers", [])
        ]
        if items:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": items})
    s3.delete_bucket(Bucket=bucket)


def destroy(aws: Aws, stack: str, delete_data: bool = False, say: Callable[[str], None] = print) -> dict[str, Any]:
    """Remove the stack and what deploy completed. Keeps the input and output buckets (and the code
    bucket) unless ``delete_data``; refuses while the dead-letter queue still holds messages."""
    cfn = aws("cloudformation")
    if _stack_status(cfn, stack) is None:
        raise StackError(f"{stack}: no such stack")
    outputs = stack_outputs(aws, stack)
    account = aws.account()
    code_bucket = code_bucket_name(stack, account)
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
    completed = _read_record(aws, code_bucket)
    api = aws("apigateway")
    for logical, pid in reversed(list(completed.items())):  # what deploy made outside the stack
        try:
            if logical == "UsagePlanKey":
                plan, key = pid.split(":")
                api.delete_usage_plan_key(usagePlanId=plan, keyId=key)
            elif logical == "UsagePlan":
                api.delete_usage_plan(usagePlanId=pid)
            elif logical == "ApiKey":
                api.delete_api_key(apiKey=pid)
            elif logical == "UploadSubscription":
                aws("sns").unsubscribe(SubscriptionArn=pid)
        except ClientError as error:
            say(f"{logical}: {error.response['Error']['Message']} (continuing)")
    cfn.delete_stack(StackName=stack)
    status = _wait(cfn, stack)
    if status != "DELETE_COMPLETE":
        raise StackError(f"{stack}: {status}")
    kept, deleted = {}, ["stack " + stack]
    for bucket in (outputs["InputBucket"], outputs["OutputBucket"], code_bucket):
        if not bucket:
            continue
        if delete_data:
            _empty_and_delete(aws, bucket)
            deleted.append(f"s3://{bucket}")
        else:
            kept[bucket] = _objects(aws, bucket)
    for bucket, count in kept.items():
        say(f"kept s3://{bucket} ({count} objects; delete it with --delete-data)")
    say(f"deleted: {', '.join(deleted)}")
    return {"kept": kept, "deleted": deleted}


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
