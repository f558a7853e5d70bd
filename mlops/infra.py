"""The loop's AWS resources as one CloudFormation stack (mlops/template.yaml), deployed and torn down.

    python -m mlops deploy --infra up   --stack S --name N     create or update the stack, then complete it
    python -m mlops deploy --infra down --stack S --name N     delete it (and what `up` completed)

``up`` waits for the stack, then makes sure every resource of a type some CloudFormation
implementations skip (moto's: the model package group, the alarms, the queue policy; see
../shared/OFFLINE_AWS.md) exists through its own API, with the properties the template declares —
the template stays the one description. On AWS those checks find everything and change nothing.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Optional

from .events import LoopError

TEMPLATE = Path(__file__).resolve().parent / "template.yaml"
COMPLETED_TYPES = (
    "AWS::SageMaker::ModelPackageGroup",
    "AWS::CloudWatch::Alarm",
    "AWS::SQS::QueuePolicy",
    "AWS::S3::BucketPolicy",
    "AWS::S3::Bucket",  # its PublicAccessBlockConfiguration (moto applies name and encryption only)
)
ALARM_KEYS = (
    "AlarmName",
    "AlarmDescription",
    "Namespace",
    "MetricName",
    "Dimensions",
    "Statistic",
    "Period",
    "EvaluationPeriods",
    "Threshold",
    "ComparisonOperator",
    "TreatMissingData",
)


def load_template(path: Path = TEMPLATE) -> dict:
    """The template with !Ref/!Sub/!GetAtt as their long forms ({"Ref": ...}, {"Fn::Sub": ...})."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    def intrinsic(name: str):
        def construct(loader, node):
            if isinstance(node, yaml.ScalarNode):
                value: Any = loader.construct_scalar(node)
                if name == "Fn::GetAtt":
                    value = value.split(".", 1)
            else:
                value = loader.construct_sequence(node, deep=True)
            return {name: value}

        return construct

    for tag, name in (("!Ref", "Ref"), ("!Sub", "Fn::Sub"), ("!GetAtt", "Fn::GetAtt")):
        Loader.add_constructor(tag, intrinsic(name))
    return yaml.load(path.read_text(), Loader=Loader)


class Resolver:
    """Resolves the template's intrinsics against a deployed stack: parameters, pseudo parameters, the
    queues' URLs/ARNs and the rules'/roles' ARNs (what the completed resources refer to)."""

    def __init__(self, template: dict, parameters: dict[str, str], account: str, region: str, clients: Any):
        self.template, self.clients = template, clients
        self.values: dict[str, Any] = {
            **{k: v.get("Default") for k, v in template.get("Parameters", {}).items()},
            **parameters,
            "AWS::AccountId": account,
            "AWS::Region": region,
            "AWS::Partition": "aws",
        }

    def resource_name(self, logical: str) -> str:
        properties = self.template["Resources"][logical].get("Properties", {})
        for key in (
            "QueueName",
            "Name",
            "RoleName",
            "AlarmName",
            "ModelPackageGroupName",
            "BucketName",
            "LogGroupName",
        ):
            if key in properties:
                return self(properties[key])
        raise LoopError(f"template resource {logical}: no name property to resolve it by")

    def ref(self, name: str) -> str:
        if name in self.values:
            return self.values[name]
        kind = self.template["Resources"][name]["Type"]
        if kind == "AWS::SQS::Queue":
            return self.clients("sqs").get_queue_url(QueueName=self.resource_name(name))["QueueUrl"]
        return self.resource_name(name)

    def get_att(self, name: str, attribute: str) -> str:
        kind, resource = self.template["Resources"][name]["Type"], self.resource_name(name)
        account, region = self.values["AWS::AccountId"], self.values["AWS::Region"]
        if attribute == "Arn" and kind == "AWS::SQS::Queue":
            return f"arn:aws:sqs:{region}:{account}:{resource}"
        if attribute == "Arn" and kind == "AWS::Events::Rule":
            return f"arn:aws:events:{region}:{account}:rule/{resource}"
        if attribute == "Arn" and kind == "AWS::IAM::Role":
            return f"arn:aws:iam::{account}:role/{resource}"
        raise LoopError(f"template: !GetAtt {name}.{attribute} is not resolvable offline")

    def __call__(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self(v) for v in value]
        if isinstance(value, dict):
            if set(value) == {"Ref"}:
                return self.ref(value["Ref"])
            if set(value) == {"Fn::GetAtt"}:
                return self.get_att(*value["Fn::GetAtt"])
            if set(value) == {"Fn::Sub"}:
                return re.sub(r"\$\{([^}]+)\}", lambda m: self._sub(m.group(1)), value["Fn::Sub"])
            return {k: self(v) for k, v in value.items()}
        return value

    def _sub(self, name: str) -> str:
        if "." in name:
            return self.get_att(*name.split(".", 1))
        return str(self.ref(name))


def error_code(error: Exception) -> str:
    return getattr(error, "response", {}).get("Error", {}).get("Code", "")


def wait_stack(cloudformation: Any, stack: str, timeout: float = 900) -> Optional[dict]:
    """The stack once no operation is in progress (None once deleted); fails on a failed/rolled-back one."""
    from botocore.exceptions import ClientError

    deadline = time.monotonic() + timeout
    while True:
        try:
            description = cloudformation.describe_stacks(StackName=stack)["Stacks"][0]
        except ClientError as error:
            if "does not exist" in str(error):
                return None
            raise
        status = description["StackStatus"]
        if status == "DELETE_COMPLETE":
            return None
        if not status.endswith("_IN_PROGRESS"):
            if "ROLLBACK" in status or status.endswith("_FAILED"):
                raise LoopError(f"stack {stack}: {status}: {description.get('StackStatusReason', 'see its events')}")
            return description
        if time.monotonic() > deadline:
            raise LoopError(f"stack {stack} still {status} after {timeout:.0f} s")
        time.sleep(2)


def up(clients: Any, stack: str, name: str, template_path: Path = TEMPLATE) -> list[tuple[str, str, str]]:
    """Create or update the stack, then complete it. Returns (action, type, name) per completed resource."""
    from botocore.exceptions import ClientError

    cloudformation = clients("cloudformation")
    body, parameters = template_path.read_text(), [{"ParameterKey": "Name", "ParameterValue": name}]
    capabilities = ["CAPABILITY_NAMED_IAM"]
    current = wait_stack(cloudformation, stack)
    if current is None:
        cloudformation.create_stack(
            StackName=stack, TemplateBody=body, Parameters=parameters, Capabilities=capabilities
        )
        print(f"stack {stack}: creating", flush=True)
    else:
        try:
            cloudformation.update_stack(
                StackName=stack, TemplateBody=body, Parameters=parameters, Capabilities=capabilities
            )
            print(f"stack {stack}: updating", flush=True)
        except ClientError as error:
            if "No updates" not in str(error):
                raise
            print(f"stack {stack}: unchanged", flush=True)
    description = wait_stack(cloudformation, stack)
    assert description is not None
    print(f"stack {stack}: {description['StackStatus']}", flush=True)
    return complete(clients, load_template(template_path), {"Name": name})


def account_and_region(clients: Any) -> tuple[str, str]:
    sts = clients("sts")
    return sts.get_caller_identity()["Account"], sts.meta.region_name


def complete(clients: Any, template: dict, parameters: dict[str, str]) -> list[tuple[str, str, str]]:
    resolve = Resolver(template, parameters, *account_and_region(clients), clients)
    done = []
    for resource in template["Resources"].values():
        kind, properties = resource["Type"], resolve(resource.get("Properties", {}))
        if kind == "AWS::SageMaker::ModelPackageGroup":
            done.append(ensure_group(clients("sagemaker"), properties))
        elif kind == "AWS::CloudWatch::Alarm":
            done.append(ensure_alarm(clients("cloudwatch"), properties))
        elif kind == "AWS::SQS::QueuePolicy":
            done.extend(ensure_queue_policy(clients("sqs"), properties))
        elif kind == "AWS::S3::BucketPolicy":
            done.append(ensure_bucket_policy(clients("s3"), properties))
        elif kind == "AWS::S3::Bucket" and "PublicAccessBlockConfiguration" in properties:
            done.append(ensure_public_access_block(clients("s3"), properties))
    for action, kind, resource_name in done:
        print(f"{action:<10} {kind:<36} {resource_name}", flush=True)
    return done


def ensure_group(sagemaker: Any, properties: dict) -> tuple[str, str, str]:
    from botocore.exceptions import ClientError

    name = properties["ModelPackageGroupName"]
    try:
        sagemaker.describe_model_package_group(ModelPackageGroupName=name)
        return ("present", "AWS::SageMaker::ModelPackageGroup", name)
    except ClientError as error:
        if error_code(error) not in ("ValidationException", "ResourceNotFound"):
            raise
    sagemaker.create_model_package_group(
        ModelPackageGroupName=name, ModelPackageGroupDescription=properties.get("ModelPackageGroupDescription", "")
    )
    return ("created", "AWS::SageMaker::ModelPackageGroup", name)


def ensure_alarm(cloudwatch: Any, properties: dict) -> tuple[str, str, str]:
    wanted = {k: properties[k] for k in ALARM_KEYS if k in properties}
    wanted["Period"], wanted["EvaluationPeriods"] = int(wanted["Period"]), int(wanted["EvaluationPeriods"])
    wanted["Threshold"] = float(wanted["Threshold"])
    current = cloudwatch.describe_alarms(AlarmNames=[wanted["AlarmName"]])["MetricAlarms"]
    if current and all(current[0].get(k) == v for k, v in wanted.items()):
        return ("present", "AWS::CloudWatch::Alarm", wanted["AlarmName"])
    cloudwatch.put_metric_alarm(**wanted)
    return ("created" if not current else "updated", "AWS::CloudWatch::Alarm", wanted["AlarmName"])


def ensure_queue_policy(sqs: Any, properties: dict) -> list[tuple[str, str, str]]:
    policy = json.dumps(properties["PolicyDocument"], sort_keys=True)
    done = []
    for url in properties["Queues"]:
        current = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"]).get("Attributes", {}).get("Policy")
        if current and json.dumps(json.loads(current), sort_keys=True) == policy:
            done.append(("present", "AWS::SQS::QueuePolicy", url))
            continue
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": policy})
        done.append(("created", "AWS::SQS::QueuePolicy", url))
    return done


def ensure_bucket_policy(s3: Any, properties: dict) -> tuple[str, str, str]:
    """The bucket's policy as the template declares it (moto's CloudFormation skips AWS::S3::BucketPolicy)."""
    from botocore.exceptions import ClientError

    bucket, policy = properties["Bucket"], json.dumps(properties["PolicyDocument"], sort_keys=True)
    try:
        current: Optional[str] = s3.get_bucket_policy(Bucket=bucket)["Policy"]
    except ClientError as error:
        if error_code(error) != "NoSuchBucketPolicy":
            raise
        current = None
    if current and json.dumps(json.loads(current), sort_keys=True) == policy:
        return ("present", "AWS::S3::BucketPolicy", bucket)
    s3.put_bucket_policy(Bucket=bucket, Policy=policy)
    return ("created" if current is None else "updated", "AWS::S3::BucketPolicy", bucket)


def ensure_public_access_block(s3: Any, properties: dict) -> tuple[str, str, str]:
    """The bucket's PublicAccessBlockConfiguration as declared (moto's CloudFormation leaves it out)."""
    from botocore.exceptions import ClientError

    bucket = properties["BucketName"]
    wanted = {k: bool(v) for k, v in properties["PublicAccessBlockConfiguration"].items()}
    try:
        current = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    except ClientError as error:
        if error_code(error) != "NoSuchPublicAccessBlockConfiguration":
            raise
        current = None
    if current == wanted:
        return ("present", "AWS::S3::Bucket", f"{bucket} (public access block)")
    s3.put_public_access_block(Bucket=bucket, PublicAccessBlockConfiguration=wanted)
    return ("created" if current is None else "updated", "AWS::S3::Bucket", f"{bucket} (public access block)")


def down(clients: Any, stack: str, name: str, template_path: Path = TEMPLATE) -> list[tuple[str, str, str]]:
    """Delete what ``up`` completed (a group that still holds model versions is kept), then the stack."""
    from botocore.exceptions import ClientError

    template = load_template(template_path)
    resolve = Resolver(template, {"Name": name}, *account_and_region(clients), clients)
    done = []
    for resource in template["Resources"].values():
        kind = resource["Type"]
        if kind == "AWS::CloudWatch::Alarm":
            alarm = resolve(resource["Properties"]["AlarmName"])
            clients("cloudwatch").delete_alarms(AlarmNames=[alarm])
            done.append(("deleted", kind, alarm))
        elif kind == "AWS::SageMaker::ModelPackageGroup":
            group = resolve(resource["Properties"]["ModelPackageGroupName"])
            sagemaker = clients("sagemaker")
            try:
                versions = sagemaker.list_model_packages(ModelPackageGroupName=group)["ModelPackageSummaryList"]
                if versions:
                    done.append(("kept", kind, f"{group} ({len(versions)} model version(s): delete them first)"))
                    continue
                sagemaker.delete_model_package_group(ModelPackageGroupName=group)
                done.append(("deleted", kind, group))
            except ClientError as error:
                if error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 500:
                    done.append(("kept", kind, f"{group} (this endpoint cannot delete model package groups)"))
                    continue
                if error_code(error) not in ("ValidationException", "ResourceNotFound"):
                    raise
                done.append(("absent", kind, group))
    cloudformation = clients("cloudformation")
    if wait_stack(cloudformation, stack) is not None:
        cloudformation.delete_stack(StackName=stack)
        wait_stack(cloudformation, stack)
        done.append(("deleted", "AWS::CloudFormation::Stack", stack))
    else:
        done.append(("absent", "AWS::CloudFormation::Stack", stack))
    for action, kind, resource_name in done:
        print(f"{action:<10} {kind:<36} {resource_name}", flush=True)
    return done


def run_infra(action: str, stack: str, name: str) -> int:
    import boto3

    session = boto3.session.Session()
    cache: dict[str, Any] = {}

    def clients(service: str) -> Any:
        if service not in cache:
            cache[service] = session.client(service)
        return cache[service]

    (up if action == "up" else down)(clients, stack, name)
    return 0
