"""The project-wide completers: what a CloudFormation implementation may skip (moto's: see
docs/extending-aws.md), created or corrected through each service's own API from the template's
resolved properties; the deleters for what they create; and the ``!GetAtt`` readers.

On AWS every check finds the resource as CloudFormation made it and changes nothing.
"""

from __future__ import annotations

import ast
import json
from typing import Any, Callable

from botocore.exceptions import ClientError

from .clients import Aws, client, retries
from .errors import StackError, error_code, http_status
from .registry import Completed, attribute, completer, deleted_by_call, deleter, exists
from .template import Resolver

# ---------------------------------------------------------------- GetAtt


@attribute("AWS::SQS::Queue", "Arn")
def _queue_arn(aws: Any, url: str) -> str:
    return str(aws("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"])


@attribute("AWS::SQS::Queue", "QueueName")
def _queue_name(aws: Any, url: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[-1]


@attribute("AWS::S3::Bucket", "Arn")
def _bucket_arn(aws: Any, name: str) -> str:
    return f"arn:aws:s3:::{name}"


@attribute("AWS::SNS::Topic", "TopicArn")
def _topic_arn(aws: Any, arn: str) -> str:
    return arn


@attribute("AWS::Lambda::Function", "Arn")
def _function_arn(aws: Any, name: str) -> str:
    return str(aws("lambda").get_function(FunctionName=name)["Configuration"]["FunctionArn"])


@attribute("AWS::IAM::Role", "Arn")
def _role_arn(aws: Any, name: str) -> str:
    return str(aws("iam").get_role(RoleName=name)["Role"]["Arn"])


@attribute("AWS::Events::Rule", "Arn")
def _rule_arn(aws: Any, name: str) -> str:
    return str(aws("events").describe_rule(Name=name)["Arn"])


@attribute("AWS::Logs::LogGroup", "Arn")
def _log_group_arn(aws: Any, name: str) -> str:
    groups = aws("logs").describe_log_groups(logGroupNamePrefix=name)["logGroups"]
    return str(next(g["arn"] for g in groups if g["logGroupName"] == name))


@attribute("AWS::ApiGateway::RestApi", "RootResourceId")
def _api_root(aws: Any, api_id: str) -> str:
    items = aws("apigateway").get_resources(restApiId=api_id)["items"]
    return str(next(i["id"] for i in items if i["path"] == "/"))


# ---------------------------------------------------------------- SNS, SQS


@completer("AWS::SNS::TopicPolicy")
def topic_policy(aws: Any, logical: str, props: dict, resolver: Resolver) -> Completed:
    created = False
    sids = [s.get("Sid", "") for s in props["PolicyDocument"]["Statement"]]
    for topic in props["Topics"]:
        current = aws("sns").get_topic_attributes(TopicArn=topic)["Attributes"].get("Policy", "")
        if any(sid not in current for sid in sids):
            policy = json.dumps(props["PolicyDocument"])
            aws("sns").set_topic_attributes(TopicArn=topic, AttributeName="Policy", AttributeValue=policy)
            created = True
    return Completed(",".join(props["Topics"]), "created" if created else "present")


def _normalised(policy: Any) -> str:
    return json.dumps(json.loads(policy) if isinstance(policy, str) else policy, sort_keys=True)


@completer("AWS::SQS::QueuePolicy", when="always")
def queue_policy(aws: Any, logical: str, props: dict, resolver: Resolver) -> Completed:
    """Every queue's policy equals the template's (moto's CloudFormation skips queue policies)."""
    wanted = _normalised(props["PolicyDocument"])
    parts = []
    for url in props["Queues"]:
        current = aws("sqs").get_queue_attributes(QueueUrl=url, AttributeNames=["Policy"]).get("Attributes", {})
        if current.get("Policy") and _normalised(current["Policy"]) == wanted:
            parts.append(("present", url))
            continue
        aws("sqs").set_queue_attributes(QueueUrl=url, Attributes={"Policy": wanted})
        parts.append(("created", url))
    created = any(action == "created" for action, _ in parts)
    return Completed(",".join(props["Queues"]), "created" if created else "present", parts=tuple(parts))


@completer("AWS::SNS::Subscription")
def subscription(aws: Any, logical: str, props: dict, resolver: Resolver) -> Completed:
    subscriptions = aws("sns").list_subscriptions_by_topic(TopicArn=props["TopicArn"])["Subscriptions"]
    for s in subscriptions:
        if s["Endpoint"] == props["Endpoint"] and s["Protocol"] == props["Protocol"]:
            return Completed(s["SubscriptionArn"])
    attributes = {"RawMessageDelivery": "true"} if str(props.get("RawMessageDelivery")).lower() == "true" else {}
    arn = aws("sns").subscribe(
        TopicArn=props["TopicArn"],
        Protocol=props["Protocol"],
        Endpoint=props["Endpoint"],
        Attributes=attributes,
        ReturnSubscriptionArn=True,
    )["SubscriptionArn"]
    return Completed(arn, "created")


deleted_by_call("AWS::SNS::Subscription", "sns", "unsubscribe", lambda arn: {"SubscriptionArn": arn})


# ---------------------------------------------------------------- API Gateway


@completer("AWS::ApiGateway::Stage")
def stage(aws: Any, logical: str, props: dict, resolver: Resolver) -> Completed:
    api = aws("apigateway")
    if exists(lambda: api.get_stage(restApiId=props["RestApiId"], stageName=props["StageName"])):
        return Completed(props["StageName"])
    api.create_stage(restApiId=props["RestApiId"], stageName=props["StageName"], deploymentId=props["DeploymentId"])
    return Completed(props["StageName"], "created")


def _found_or_created(items: list[dict], name: str, create: Callable[[], dict]) -> Completed:
    """The API Gateway item called ``name`` among ``items`` (its id), else the one ``create`` makes."""
    found = [item["id"] for item in items if item["name"] == name]
    return Completed(found[0]) if found else Completed(create()["id"], "created")


@completer("AWS::ApiGateway::ApiKey")
def api_key(aws: Any, logical: str, props: dict, resolver: Resolver) -> Completed:
    api, name = aws("apigateway"), props["Name"]
    return _found_or_created(
        api.get_api_keys(nameQuery=name)["items"],
        name,
        lambda: api.create_api_key(name=name, enabled=bool(props.get("Enabled", True))),
    )


deleted_by_call("AWS::ApiGateway::ApiKey", "apigateway", "delete_api_key", lambda key: {"apiKey": key})


@completer("AWS::ApiGateway::UsagePlan")
def usage_plan(aws: Any, logical: str, props: dict, resolver: Resolver) -> Completed:
    api = aws("apigateway")
    return _found_or_created(
        api.get_usage_plans()["items"], props["UsagePlanName"], lambda: api.create_usage_plan(**_usage_plan(props))
    )


def _usage_plan(props: dict) -> dict[str, Any]:
    """create_usage_plan's arguments from the template's properties."""
    extra: dict[str, Any] = {}
    if "Throttle" in props:
        extra["throttle"] = {
            "rateLimit": float(props["Throttle"]["RateLimit"]),
            "burstLimit": int(props["Throttle"]["BurstLimit"]),
        }
    if "Quota" in props:
        extra["quota"] = {"limit": int(props["Quota"]["Limit"]), "period": props["Quota"]["Period"]}
    return {
        "name": props["UsagePlanName"],
        "apiStages": [{"apiId": s["ApiId"], "stage": s["Stage"]} for s in props.get("ApiStages", [])],
        **extra,
    }


deleted_by_call("AWS::ApiGateway::UsagePlan", "apigateway", "delete_usage_plan", lambda plan: {"usagePlanId": plan})


@completer("AWS::ApiGateway::UsagePlanKey")
def usage_plan_key(aws: Any, logical: str, props: dict, resolver: Resolver) -> Completed:
    api = aws("apigateway")
    keys = api.get_usage_plan_keys(usagePlanId=props["UsagePlanId"])["items"]
    pid = f"{props['UsagePlanId']}:{props['KeyId']}"
    if any(k["id"] == props["KeyId"] for k in keys):
        return Completed(pid)
    api.create_usage_plan_key(usagePlanId=props["UsagePlanId"], keyId=props["KeyId"], keyType=props["KeyType"])
    return Completed(pid, "created")


@deleter("AWS::ApiGateway::UsagePlanKey")
def _delete_usage_plan_key(aws: Any, pid: str) -> str:
    plan, key = pid.split(":")
    aws("apigateway").delete_usage_plan_key(usagePlanId=plan, keyId=key)
    return "deleted"


@completer("AWS::ApiGateway::Method")
def method(aws: Any, logical: str, props: dict, resolver: Resolver) -> Completed:
    """Only checked: a method missing means the API cannot work, and the template says how to make it."""
    try:
        aws("apigateway").get_method(
            restApiId=props["RestApiId"], resourceId=props["ResourceId"], httpMethod=props["HttpMethod"]
        )
    except ClientError:
        raise StackError(f"API method {props['HttpMethod']} on {props['ResourceId']} was not created") from None
    return Completed(props["HttpMethod"])


@completer("AWS::ApiGateway::Deployment")
def deployment(aws: Any, logical: str, props: dict, resolver: Resolver) -> Completed:
    deployments = aws("apigateway").get_deployments(restApiId=props["RestApiId"])["items"]
    if deployments:
        return Completed(deployments[0]["id"])
    return Completed(aws("apigateway").create_deployment(restApiId=props["RestApiId"])["id"], "created")


# ---------------------------------------------------------------- Lambda


@completer("AWS::Lambda::Permission")
def permission(aws: Any, logical: str, props: dict, resolver: Resolver) -> Completed:
    try:
        policy = json.loads(aws("lambda").get_policy(FunctionName=props["FunctionName"])["Policy"])
        for statement in policy.get("Statement", []):
            if statement.get("Principal", {}).get("Service") == props["Principal"]:
                return Completed(statement["Sid"])
    except ClientError:
        pass
    sid = logical if logical != "ApiPermission" else "api-gateway-invokes"  # the id earlier deploys used
    extra = {"SourceArn": props["SourceArn"]} if "SourceArn" in props else {}
    aws("lambda").add_permission(
        FunctionName=props["FunctionName"],
        StatementId=sid,
        Action=props["Action"],
        Principal=props["Principal"],
        **extra,
    )
    return Completed(sid, "created")


@completer("AWS::Lambda::LayerVersion")
def layer(aws: Any, logical: str, props: dict, resolver: Resolver) -> Completed:
    versions = aws("lambda").list_layer_versions(LayerName=props["LayerName"]).get("LayerVersions", [])
    if versions:
        return Completed(versions[0]["LayerVersionArn"])
    arn = aws("lambda").publish_layer_version(
        LayerName=props["LayerName"],
        Description=props.get("Description", ""),
        Content={"S3Bucket": props["Content"]["S3Bucket"], "S3Key": props["Content"]["S3Key"]},
        CompatibleRuntimes=props.get("CompatibleRuntimes", []),
    )["LayerVersionArn"]
    return Completed(arn, "created")


@completer("AWS::Lambda::Function", when="offline")
def function_configuration(aws: Any, logical: str, props: dict, resolver: Resolver) -> Completed:
    """Offline: what moto's stack update missed on a function (a parameter used only inside a Sub
    does not mark it changed; layers are not its to attach) -> updated through Lambda's API."""
    name = resolver.physical[logical]
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
    return Completed(name, "updated" if changes else "present", tuple(sorted(changes)))


# ---------------------------------------------------------------- IAM


@completer("AWS::IAM::Role", when="offline")
def role_policies(aws: Any, logical: str, props: dict, resolver: Resolver) -> Completed:
    """Offline: a role's inline policies as the template resolves them now (moto's update misses
    Sub-only changes)."""
    name = resolver.physical[logical]
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
    return Completed(name, "updated" if changed else "present", tuple(changed))


# ---------------------------------------------------------------- S3


@completer("AWS::S3::Bucket", when="always")
def bucket(aws: Any, logical: str, props: dict, resolver: Resolver) -> Completed:
    """Apply the bucket properties CloudFormation may have ignored (moto applies only the name and
    encryption): public access block, versioning, topic notifications."""
    name = resolver.physical.get(logical)
    if not name:
        raise StackError(f"{logical}: the stack created no bucket")
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
        current_topics = s3.get_bucket_notification_configuration(Bucket=name).get("TopicConfigurations", [])
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
        if {c["TopicArn"] for c in current_topics} != {w["TopicArn"] for w in wanted}:
            s3.put_bucket_notification_configuration(
                Bucket=name, NotificationConfiguration={"TopicConfigurations": wanted}
            )
            applied.append("NotificationConfiguration")
    return Completed(name, "updated" if applied else "present", tuple(applied))


@completer("AWS::S3::BucketPolicy")
def bucket_policy(aws: Any, logical: str, props: dict, resolver: Resolver) -> Completed:
    """A bucket's policy (moto's CloudFormation skips AWS::S3::BucketPolicy), put when a statement is
    missing. Not against a local stand-in: moto applies a conditional Deny unconditionally, so the
    TLS-only Deny (aws:SecureTransport) would refuse every request, ours included."""
    bucket_name = props["Bucket"]
    if getattr(aws, "offline", False):
        return Completed(
            bucket_name, "skipped", ("offline: moto ignores policy conditions, its TLS-only Deny would refuse all",)
        )
    s3 = aws("s3")
    try:
        current = s3.get_bucket_policy(Bucket=bucket_name)["Policy"]
    except ClientError:
        current = ""
    statements = props["PolicyDocument"]["Statement"]
    if current and all(statement.get("Sid") and statement["Sid"] in current for statement in statements):
        return Completed(bucket_name)
    s3.put_bucket_policy(Bucket=bucket_name, Policy=json.dumps(props["PolicyDocument"]))
    return Completed(bucket_name, "created")


# ---------------------------------------------------------------- KMS


@completer("AWS::KMS::Key", when="offline")
def key_policy(aws: Any, logical: str, props: dict, resolver: Resolver) -> Completed:
    """Offline: a KMS key's policy as the template says (moto's CloudFormation stores a KeyPolicy object
    unserialised, and KMS's own API then fails on that key)."""
    key_id = resolver.physical[logical]
    wanted = json.loads(json.dumps(props["KeyPolicy"]))
    try:
        current = json.loads(aws("kms").get_key_policy(KeyId=key_id, PolicyName="default")["Policy"])
    except (ClientError, TypeError, ValueError):
        current = None
    if current == wanted:
        return Completed(key_id)
    aws("kms").put_key_policy(KeyId=key_id, PolicyName="default", Policy=json.dumps(wanted))
    return Completed(key_id, "updated", ("KeyPolicy",))


# ---------------------------------------------------------------- SageMaker, CloudWatch

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


@completer("AWS::SageMaker::ModelPackageGroup", when="always")
def model_package_group(aws: Any, logical: str, props: dict, resolver: Resolver) -> Completed:
    name = props["ModelPackageGroupName"]
    sagemaker = aws("sagemaker")
    try:
        sagemaker.describe_model_package_group(ModelPackageGroupName=name)
        return Completed(name)
    except ClientError as error:
        if error_code(error) not in ("ValidationException", "ResourceNotFound"):
            raise
    sagemaker.create_model_package_group(
        ModelPackageGroupName=name, ModelPackageGroupDescription=props.get("ModelPackageGroupDescription", "")
    )
    return Completed(name, "created")


def _without_retries(aws: Any, service: str) -> Any:
    """A client that asks once: moto's server answers 500 to calls it does not implement, which
    standard retries would repeat ten times with back-off (about a minute) for the same answer."""
    if isinstance(aws, Aws):
        return client(service, aws.session, retries(max_attempts=0))
    return aws(service)


@deleter("AWS::SageMaker::ModelPackageGroup")
def _delete_model_package_group(aws: Any, name: str) -> str:
    """Kept while it holds model versions (they are the registry's history: delete them first)."""
    sagemaker = aws("sagemaker")
    try:
        versions = sagemaker.list_model_packages(ModelPackageGroupName=name)["ModelPackageSummaryList"]
        if versions:
            return f"kept ({len(versions)} model version(s): delete them first)"
        _without_retries(aws, "sagemaker").delete_model_package_group(ModelPackageGroupName=name)
        return "deleted"
    except NotImplementedError:  # in-process moto; its server answers 500
        return "kept (this endpoint cannot delete model package groups)"
    except ClientError as error:
        if http_status(error) == 500:
            return "kept (this endpoint cannot delete model package groups)"
        if error_code(error) not in ("ValidationException", "ResourceNotFound"):
            raise
        return "absent"


@completer("AWS::CloudWatch::Alarm", when="always")
def alarm(aws: Any, logical: str, props: dict, resolver: Resolver) -> Completed:
    wanted = {k: props[k] for k in ALARM_KEYS if k in props}
    wanted["Period"], wanted["EvaluationPeriods"] = int(wanted["Period"]), int(wanted["EvaluationPeriods"])
    wanted["Threshold"] = float(wanted["Threshold"])
    cloudwatch = aws("cloudwatch")
    current = cloudwatch.describe_alarms(AlarmNames=[wanted["AlarmName"]])["MetricAlarms"]
    if current and all(current[0].get(k) == v for k, v in wanted.items()):
        return Completed(wanted["AlarmName"])
    cloudwatch.put_metric_alarm(**wanted)
    return Completed(wanted["AlarmName"], "updated" if current else "created", () if not current else ("properties",))


deleted_by_call("AWS::CloudWatch::Alarm", "cloudwatch", "delete_alarms", lambda name: {"AlarmNames": [name]})
