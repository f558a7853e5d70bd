"""Issue #23, "The loop" (items 6-9): the bar of now gates every retrain, deploy and promote; a Reject
during a rollout stands; two monitors start one retrain; LoopRole allows every call the loop makes.

In process against moto (``offline_aws``), except the concurrency test, whose two monitors (threads,
each with its own clients) share one moto server (``moto_env``)."""

from __future__ import annotations

import io
import json
import threading
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import boto3
import pytest

from mlops import deploy, events, monitor, promote, registry
from mlops.endpoints import Rollout

from .conftest import MOTO_REGION

REGION = "us-east-1"
ACCOUNT = "123456789012"
NAME = "looptest"  # the template's Name: its resources and the LoopRole's scopes
GROUP, PIPELINE, THRESHOLD = f"{NAME}-models", f"{NAME}-build", f"/{NAME}/mlops/wql-threshold"
BUCKET = f"{NAME}-mlops-{ACCOUNT}-{REGION}"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/sagemaker-deepar:1"
MODEL_ROLE = f"arn:aws:iam::{ACCOUNT}:role/{NAME}-model-execution"


# --- fixtures: a registry, a lake and forecasts, a pipeline as build stores it ----------------------------


@dataclass
class FakeEndpoints:
    """Endpoints that serve at once; ``during`` runs in the middle of each rollout (an approver's click)."""

    during: Any = None
    rollouts: list[tuple[str, str]] = field(default_factory=list)

    def roll_out(self, endpoint: str, model_data: str, image: str) -> Rollout:
        if self.during:
            self.during()
        self.rollouts.append((endpoint, model_data))
        return Rollout(endpoint, True, f"http://{endpoint}")


def package(sagemaker: Any, wql: float, approve: bool = True, **metadata: str) -> str:
    registry.ensure_group(sagemaker, GROUP)
    arn = registry.register(sagemaker, GROUP, IMAGE, f"s3://{BUCKET}/m/model.tar.gz", {"mean_wQuantileLoss": wql})
    if metadata:
        sagemaker.update_model_package(
            ModelPackageArn=arn,
            ModelApprovalStatus="PendingManualApproval",
            CustomerMetadataProperties={**events.describe_package(sagemaker, arn).metadata, **metadata},
        )
    if approve:
        events.approve(sagemaker, arn, "alice")
    return arn


def threshold(ssm: Any, value: str, name: str = THRESHOLD) -> None:
    ssm.put_parameter(Name=name, Value=value, Type="String", Overwrite=True)


LAKE_KEY = "readings/year=2024/part-0.parquet"


def lake_readings(level: float) -> bytes:
    """Two devices' hourly readings of 2024-03-01 and 02 (+ ``level``), as the lake's one Parquet file."""
    import pandas as pd

    timestamps = pd.date_range("2024-03-01", periods=48, freq="h")
    frame = pd.DataFrame(
        {
            "device_id": [d for d in ("d1", "d2") for _ in timestamps],
            "timestamp": list(timestamps) * 2,
            "particulate_matter": [level + 10 + (i % 5) for i in range(48)] + [level + 20 + (i % 3) for i in range(48)],
        }
    )
    buffer = io.BytesIO()
    frame.to_parquet(buffer)
    return buffer.getvalue()


def put_lake_and_forecasts(s3: Any, level: float, bucket: str = BUCKET) -> None:
    """Two devices' hourly readings (+ ``level``) and the forecasts the prod endpoint stored for them."""
    s3.put_object(Bucket=bucket, Key=LAKE_KEY, Body=lake_readings(level))
    lines = []
    for device, base in (("d1", 10), ("d2", 20)):
        mean = [base + ((40 + i) % (5 if device == "d1" else 3)) for i in range(6)]
        quantiles = {"0.1": [m - 2 for m in mean], "0.5": mean, "0.9": [m + 2 for m in mean]}
        lines.append({"item_id": device, "start": "2024-03-02 16:00:00", "mean": mean, "quantiles": quantiles})
    body = "".join(json.dumps(line) + "\n" for line in lines)
    s3.put_object(Bucket=bucket, Key="forecasts/prod.jsonl.out", Body=body.encode())


def build_definition(stored_threshold: float, gate_parameter: str = THRESHOLD) -> str:
    """What ``build`` upserts, reduced to what the monitor reads: the gate's parameters and the Train step."""
    return json.dumps(
        {
            "Version": "2020-12-01",
            "Parameters": [
                {"Name": "AccuracyThreshold", "Type": "Float", "DefaultValue": stored_threshold},
                {"Name": "ThresholdParameterName", "Type": "String", "DefaultValue": gate_parameter},
                {"Name": "NumCells", "Type": "Integer", "DefaultValue": 40},
            ],
            "Steps": [
                {
                    "Name": "Train",
                    "Type": "Training",
                    "Arguments": {
                        "HyperParameters": {
                            "num_cells": {"Std:Join": {"On": "", "Values": [{"Get": "Parameters.NumCells"}]}}
                        },
                        "InputDataConfig": [
                            {"ChannelName": "train", "DataSource": {"S3DataSource": {"S3Uri": "s3://x"}}}
                        ],
                    },
                }
            ],
        }
    )


def loop_resources(clients: Any, stored_threshold: float = 0.5) -> None:
    clients("s3").create_bucket(Bucket=BUCKET)
    clients("sagemaker").create_pipeline(
        PipelineName=PIPELINE, PipelineDefinition=build_definition(stored_threshold), RoleArn=MODEL_ROLE
    )
    put_lake_and_forecasts(clients("s3"), level=30)  # drifted: the monitor breaches


def monitor_run(
    clients: Any, threshold_parameter: str = THRESHOLD, group: str | None = GROUP, bucket: str = BUCKET
) -> monitor.MonitorResult:
    return monitor.monitor_once(
        forecasts=f"s3://{bucket}/forecasts/", lake=f"s3://{bucket}/readings/", pipeline=PIPELINE,
        threshold_parameter=threshold_parameter, endpoint=f"{NAME}-prod", group=group,
        sagemaker=clients("sagemaker"), ssm=clients("ssm"), cloudwatch=clients("cloudwatch"), s3=clients("s3"),
    )  # fmt: skip


def session_clients(session: Any = None):
    session = session or boto3.Session(region_name=REGION)
    made: dict[str, Any] = {}

    def client(service: str) -> Any:
        if service not in made:
            made[service] = session.client(service)
        return made[service]

    return client


# --- item 6: the bar of now ------------------------------------------------------------------------------


@pytest.mark.unit
def test_item6_a_monitor_retrain_carries_the_current_threshold(offline_aws):
    """#23 item 6: build stored AccuracyThreshold 0.5 in the definition; the bar is 0.2 now (deploy
    lowered it): the execution the monitor starts gets 0.2 and the gate's parameter name."""
    clients = session_clients()
    loop_resources(clients, stored_threshold=0.5)
    threshold(clients("ssm"), "0.2")

    result = monitor_run(clients)

    assert result.status == "retrain-started", result.message
    parameters = clients("sagemaker").list_pipeline_parameters_for_execution(PipelineExecutionArn=result.execution_arn)
    assert {p["Name"]: p["Value"] for p in parameters["PipelineParameters"]} == {
        "AccuracyThreshold": "0.2",
        "ThresholdParameterName": THRESHOLD,
    }


@pytest.mark.unit
def test_item6_the_gate_is_the_pipelines_threshold_parameter_not_the_monitors_alert_bar(offline_aws):
    """#23 item 6: the demo alerts on its own parameter; the retrain is gated by the one build named."""
    clients = session_clients()
    loop_resources(clients)
    threshold(clients("ssm"), "0.3")
    threshold(clients("ssm"), "0.05", name=f"{THRESHOLD}-alert")

    result = monitor_run(clients, threshold_parameter=f"{THRESHOLD}-alert")

    assert result.status == "retrain-started" and result.threshold == 0.05
    parameters = clients("sagemaker").list_pipeline_parameters_for_execution(PipelineExecutionArn=result.execution_arn)
    assert {p["Name"]: p["Value"] for p in parameters["PipelineParameters"]}["AccuracyThreshold"] == "0.3"


@pytest.mark.unit
def test_item6_a_pipeline_without_the_gate_parameter_is_not_started(offline_aws):
    """#23 item 6: a definition with no AccuracyThreshold cannot be gated by the bar: an error, no execution."""
    clients = session_clients()
    loop_resources(clients)
    clients("sagemaker").update_pipeline(
        PipelineName=PIPELINE, PipelineDefinition=json.dumps({"Version": "2020-12-01", "Steps": []})
    )
    threshold(clients("ssm"), "0.2")
    with pytest.raises(events.LoopError, match=f"pipeline {PIPELINE} declares no AccuracyThreshold parameter"):
        monitor_run(clients)
    assert clients("sagemaker").list_pipeline_executions(PipelineName=PIPELINE)["PipelineExecutionSummaries"] == []


@pytest.mark.unit
def test_item6_deploy_and_promote_refuse_a_model_above_the_current_bar(offline_aws):
    """#23 item 6: the package passed its build's gate (0.5) but the bar is 0.3 now: deploy refuses it
    before any rollout; once deployed, a bar lowered since refuses its promotion."""
    clients = session_clients()
    sagemaker, ssm = clients("sagemaker"), clients("ssm")
    arn = package(sagemaker, 0.4)
    threshold(ssm, "0.3")
    endpoints = FakeEndpoints()
    with pytest.raises(events.PackageRejected) as refused:
        deploy.deploy_to_staging(sagemaker, ssm, endpoints, arn, NAME, THRESHOLD)
    assert str(refused.value) == (
        f"model package {arn}: mean_wQuantileLoss 0.4 is above the current threshold 0.3 "
        f"(SSM parameter {THRESHOLD}): it cannot be deployed to {NAME}-staging"
    )
    assert endpoints.rollouts == [] and "staging_status" not in events.describe_package(sagemaker, arn).metadata

    threshold(ssm, "0.5")
    deployed = deploy.deploy_to_staging(sagemaker, ssm, endpoints, arn, NAME, THRESHOLD)
    assert (deployed.threshold_before, deployed.threshold_after) == (0.5, 0.4)
    threshold(ssm, "0.35")  # a better model went through staging meanwhile
    with pytest.raises(events.PackageRejected, match="above the current threshold 0.35 .*promoted to looptest-prod"):
        promote.promote(sagemaker, ssm, endpoints, arn, NAME, "bob", THRESHOLD)
    assert endpoints.rollouts == [(f"{NAME}-staging", f"s3://{BUCKET}/m/model.tar.gz")]


@pytest.mark.unit
def test_item6_a_model_whose_wql_set_the_bar_meets_it(offline_aws):
    """#23 item 6: the bar is stored with 6 significant digits; the model that set it is not refused."""
    clients = session_clients()
    sagemaker, ssm = clients("sagemaker"), clients("ssm")
    arn = package(sagemaker, 0.23043712345)
    threshold(ssm, "0.5")
    endpoints = FakeEndpoints()
    assert deploy.deploy_to_staging(sagemaker, ssm, endpoints, arn, NAME, THRESHOLD).threshold_after == 0.230437
    assert promote.promote(sagemaker, ssm, endpoints, arn, NAME, "bob", THRESHOLD).endpoint == f"{NAME}-prod"


# --- item 7: a Reject always wins ------------------------------------------------------------------------


def reject(sagemaker: Any, arn: str) -> None:
    sagemaker.update_model_package(
        ModelPackageArn=arn, ModelApprovalStatus="Rejected", ApprovalDescription="rejected by carol: bad data",
        CustomerMetadataProperties=events.describe_package(sagemaker, arn).metadata,
    )  # fmt: skip


@pytest.mark.unit
def test_item7_a_rejection_during_the_staging_rollout_stands(offline_aws):
    """#23 item 7: record() re-sent the approval read before the rollout and turned the Reject back
    into Approved; now the Reject stays, the outcome is still recorded, and the bar is not raised."""
    clients = session_clients()
    sagemaker, ssm = clients("sagemaker"), clients("ssm")
    arn = package(sagemaker, 0.2)
    threshold(ssm, "0.5")
    endpoints = FakeEndpoints(during=lambda: reject(sagemaker, arn))
    with pytest.raises(events.PackageRejected) as rejected:
        deploy.deploy_to_staging(sagemaker, ssm, endpoints, arn, NAME, THRESHOLD)
    assert str(rejected.value).startswith(f"model package {arn} was rejected during its rollout to {NAME}-staging")
    after = sagemaker.describe_model_package(ModelPackageName=arn)
    assert after["ModelApprovalStatus"] == "Rejected"
    assert after["CustomerMetadataProperties"]["staging_status"].startswith("InService at ")
    assert ssm.get_parameter(Name=THRESHOLD)["Parameter"]["Value"] == "0.5"


@pytest.mark.unit
def test_item7_a_rejection_during_the_prod_rollout_stands(offline_aws):
    """#23 item 7: the same for promote: the prod_status is recorded, the Reject is not reverted."""
    clients = session_clients()
    sagemaker, ssm = clients("sagemaker"), clients("ssm")
    arn = package(sagemaker, 0.2)
    threshold(ssm, "0.5")
    deploy.deploy_to_staging(sagemaker, ssm, FakeEndpoints(), arn, NAME, THRESHOLD)
    with pytest.raises(events.PackageRejected, match=f"rejected during its rollout to {NAME}-prod"):
        promote.promote(
            sagemaker, ssm, FakeEndpoints(during=lambda: reject(sagemaker, arn)), arn, NAME, "bob", THRESHOLD
        )
    after = sagemaker.describe_model_package(ModelPackageName=arn)
    assert after["ModelApprovalStatus"] == "Rejected"
    assert after["CustomerMetadataProperties"]["prod_status"].startswith("InService at ")
    assert after["CustomerMetadataProperties"]["promoted_by"] == "bob"


@pytest.mark.unit
def test_item7_record_keeps_what_others_wrote_meanwhile(offline_aws):
    """#23 item 7: record() merges into the package as it is now, not as it was read."""
    sagemaker = session_clients()("sagemaker")
    arn = package(sagemaker, 0.2)
    stale = events.describe_package(sagemaker, arn)
    reject(sagemaker, arn)
    sagemaker.update_model_package(
        ModelPackageArn=arn, ModelApprovalStatus="Rejected",
        CustomerMetadataProperties={**events.describe_package(sagemaker, arn).metadata, "note": "by carol"},
    )  # fmt: skip
    recorded = events.record(sagemaker, stale, staging_status="InService")
    after = sagemaker.describe_model_package(ModelPackageName=arn)
    assert recorded.approval == after["ModelApprovalStatus"] == "Rejected"
    assert after["CustomerMetadataProperties"]["note"] == "by carol"
    assert after["CustomerMetadataProperties"]["staging_status"] == "InService"


# --- item 8: two monitors, one retrain -------------------------------------------------------------------


def test_item8_two_concurrent_monitors_start_one_retrain(moto_env, monkeypatch):
    """#23 item 8: two monitors see the same breach at once (both pass the "none running" check before
    either starts: a barrier holds each after its ListPipelineExecutions); exactly one execution starts,
    with the breach's ClientRequestToken, and the other monitor answers that execution."""
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(key, moto_env[key])
    setup = session_clients(boto3.Session(region_name=MOTO_REGION))
    bucket = f"{NAME}-mlops-{ACCOUNT}-{MOTO_REGION}"
    setup("s3").create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": MOTO_REGION})
    setup("sagemaker").create_pipeline(
        PipelineName=PIPELINE, PipelineDefinition=build_definition(0.5), RoleArn=MODEL_ROLE
    )
    put_lake_and_forecasts(setup("s3"), level=30, bucket=bucket)
    threshold(setup("ssm"), "0.2")

    both_checked = threading.Barrier(2, timeout=60)
    tokens: list[str] = []
    results: dict[int, Any] = {}

    def one_monitor(index: int) -> None:
        session = boto3.Session(region_name=MOTO_REGION)
        session.events.register("after-call.sagemaker.ListPipelineExecutions", lambda **_: both_checked.wait())
        session.events.register(
            "provide-client-params.sagemaker.StartPipelineExecution",
            lambda params, **_: tokens.append(params.get("ClientRequestToken", "")),
        )
        try:
            results[index] = monitor_run(session_clients(session), group=None, bucket=bucket)
        except Exception as error:  # the assertion below shows it
            results[index] = error

    threads = [threading.Thread(target=one_monitor, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert all(isinstance(r, monitor.MonitorResult) for r in results.values()), results
    statuses = sorted(r.status for r in results.values())
    assert statuses == ["retrain-running", "retrain-started"]
    executions = setup("sagemaker").list_pipeline_executions(PipelineName=PIPELINE)["PipelineExecutionSummaries"]
    assert [e["PipelineExecutionArn"] for e in executions] == [results[0].execution_arn] == [results[1].execution_arn]
    window = "2024-03-02 16:00:00..2024-03-02 16:00:00 x6"
    assert tokens == [monitor.breach_token(PIPELINE, None, "", window)]

    # the next run (same breach, the execution finished): still none started
    again = monitor_run(setup, group=None, bucket=bucket)
    assert again.status == "retrain-running" and again.execution_arn == results[0].execution_arn
    assert len(setup("sagemaker").list_pipeline_executions(PipelineName=PIPELINE)["PipelineExecutionSummaries"]) == 1


def test_item8_the_monitor_queue_outlives_a_run():
    """#23 item 8: the schedule's trigger stays invisible to other monitors for longer than a run."""
    from mlops.infra import load_template

    queue = load_template()["Resources"]["MonitorQueue"]["Properties"]
    assert queue["VisibilityTimeout"] >= 3600


# --- item 9: the LoopRole allows every call the loop makes -----------------------------------------------


IAM_PREFIX = {"monitoring": "cloudwatch"}  # botocore's signing name -> IAM's service prefix
NO_PERMISSION_NEEDED = {"sts:GetCallerIdentity"}


def queue_arn(url: str) -> str:
    *_, account, name = url.rstrip("/").split("/")
    return f"arn:aws:sqs:{REGION}:{account}:{name}"


def requirements(service: str, operation: str, params: dict) -> list[tuple[str, str, dict]]:
    """The IAM (action, resource, condition values) one API call needs; an operation not listed here
    fails the test, so a new call in the loop cannot go unchecked."""
    sm = f"arn:aws:sagemaker:{REGION}:{ACCOUNT}"
    action = f"{service}:{operation}"
    if service == "sagemaker":
        if operation in ("DescribeModelPackage", "UpdateModelPackage"):
            return [(action, params.get("ModelPackageName") or params["ModelPackageArn"], {})]
        if operation == "DescribeModelPackageGroup":
            return [(action, f"{sm}:model-package-group/{params['ModelPackageGroupName']}", {})]
        if operation == "ListModelPackages":
            return [(action, "*", {})]
        if operation in ("DescribePipeline", "UpdatePipeline", "StartPipelineExecution", "ListPipelineExecutions"):
            return [(action, f"{sm}:pipeline/{params['PipelineName']}", {})]
        if operation == "CreateModel":
            passed = ("iam:PassRole", params["ExecutionRoleArn"], {"iam:PassedToService": "sagemaker.amazonaws.com"})
            return [(action, f"{sm}:model/{params['ModelName']}", {}), passed]
        if operation == "DeleteModel":
            return [(action, f"{sm}:model/{params['ModelName']}", {})]
        if operation in ("CreateEndpointConfig", "DescribeEndpointConfig", "DeleteEndpointConfig"):
            return [(action, f"{sm}:endpoint-config/{params['EndpointConfigName']}", {})]
        if operation in ("CreateEndpoint", "UpdateEndpoint", "DescribeEndpoint"):
            return [(action, f"{sm}:endpoint/{params['EndpointName']}", {})]
    if service == "ssm" and operation in ("GetParameter", "PutParameter", "DeleteParameter"):
        return [(action, f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/{params['Name'].lstrip('/')}", {})]
    if service == "cloudwatch" and operation == "PutMetricData":
        return [(action, "*", {"cloudwatch:namespace": params["Namespace"]})]
    if service == "s3" and operation == "ListObjectsV2":
        return [("s3:ListBucket", f"arn:aws:s3:::{params['Bucket']}", {})]
    if service == "s3" and operation in ("GetObject", "HeadObject"):
        return [("s3:GetObject", f"arn:aws:s3:::{params['Bucket']}/{params['Key']}", {})]
    if service == "sqs" and operation in ("ReceiveMessage", "DeleteMessage", "GetQueueAttributes"):
        return [(action, queue_arn(params["QueueUrl"]), {})]
    if action in NO_PERMISSION_NEEDED:
        return []
    raise AssertionError(f"{action}: the loop calls it; say which IAM action and resource it needs")


def allowed(statements: list[dict], action: str, resource: str, context: dict) -> bool:
    """An Allow statement matches the action and the resource, and each of its conditions holds on
    ``context`` (a condition on a key the call does not set does not hold)."""
    for statement in statements:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        resources = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
        if statement["Effect"] != "Allow" or not any(fnmatchcase(action.lower(), a.lower()) for a in actions):
            continue
        if not any(fnmatchcase(resource, r) for r in resources):
            continue
        conditions = [
            (key, value if isinstance(value, list) else [value])
            for operator, pairs in statement.get("Condition", {}).items()
            for key, value in pairs.items()
            if operator in ("StringEquals", "ArnEquals")
        ]
        if len(conditions) == sum(len(pairs) for pairs in statement.get("Condition", {}).values()) and all(
            context.get(key) in values for key, values in conditions
        ):
            return True
    return False


def loop_role_statements() -> list[dict]:
    """LoopRole's statements resolved for Name=looptest (queue and role ARNs from their names)."""
    from awsinfra.template import Resolver
    from mlops.infra import load_template

    template = load_template()
    pseudo = {"AWS::AccountId": ACCOUNT, "AWS::Region": REGION, "AWS::Partition": "aws"}
    names = Resolver(template, {"Name": NAME}, {}, pseudo, lambda *_: "")
    resources = template["Resources"]

    def arn(logical: str, kind: str, attribute: str) -> str:
        props = resources[logical]["Properties"]
        if kind == "AWS::SQS::Queue":
            return f"arn:aws:sqs:{REGION}:{ACCOUNT}:{names.value(props['QueueName'])}"
        if kind == "AWS::IAM::Role":
            return f"arn:aws:iam::{ACCOUNT}:role/{names.value(props['RoleName'])}"
        raise AssertionError(f"{logical}.{attribute}: not expected in LoopRole")

    resolve = Resolver(template, {"Name": NAME}, {}, pseudo, arn)
    [policy] = resources["LoopRole"]["Properties"]["Policies"]
    return resolve.value(policy["PolicyDocument"]["Statement"])


@pytest.mark.unit
def test_item9_loop_role_allows_every_call_deploy_promote_and_monitor_make(offline_aws):
    """#23 item 9: every botocore operation of a deploy from the queue (create and blue/green update),
    a promote, a monitor run from the schedule's queue that starts a warm-started retrain, and reading
    a pipeline-registered package's metrics, each checked against LoopRole's statements in
    mlops/template.yaml (actions, resources resolved for Name=looptest, conditions)."""
    from botocore.awsrequest import AWSResponse

    from mlops.endpoints import SageMakerEndpoints

    calls: list[tuple[str, str, dict]] = []
    session = boto3.Session(region_name=REGION)
    clients = session_clients(session)
    setup = session_clients()  # the operator's and approver's calls are not the loop's
    loop_resources(setup)
    threshold(setup("ssm"), "0.5")
    sqs = setup("sqs")
    approvals = sqs.create_queue(QueueName=f"{NAME}-approvals")["QueueUrl"]
    runs = sqs.create_queue(QueueName=f"{NAME}-monitor-runs")["QueueUrl"]
    evaluation = {"regression_metrics": {"mean_wQuantileLoss": {"value": 0.2}, "RMSE": {"value": 3.0}}}
    setup("s3").put_object(Bucket=BUCKET, Key="exec/evaluation/evaluation.json", Body=json.dumps(evaluation).encode())
    v1 = pipeline_registered(setup("sagemaker"), f"s3://{BUCKET}/exec/evaluation/evaluation.json")
    events.approve(setup("sagemaker"), v1, "alice")
    v2 = package(setup("sagemaker"), 0.1)
    for arn in (v1, v2):
        sqs.send_message(QueueUrl=approvals, MessageBody=json.dumps(approval_body(arn)))
    sqs.send_message(QueueUrl=runs, MessageBody=json.dumps({"detail-type": "Scheduled Event", "detail": {}}))

    def record(params, model, **_):
        service = IAM_PREFIX.get(model.service_model.signing_name, model.service_model.signing_name)
        calls.append((service, model.name, dict(params)))

    def update_endpoint(**_):  # moto has no UpdateEndpoint: answer it; the endpoint stays on its config
        return AWSResponse("", 200, {}, None), {"EndpointArn": f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:endpoint/x"}

    session.events.register("before-parameter-build", record)
    session.events.register("before-call.sagemaker.UpdateEndpoint", update_endpoint)
    sagemaker, ssm = clients("sagemaker"), clients("ssm")
    endpoints = SageMakerEndpoints(sagemaker, MODEL_ROLE, poll=0, timeout=600)

    outcomes = deploy.consume_queue(
        clients("sqs"), approvals,
        lambda arn: deploy.deploy_to_staging(sagemaker, ssm, endpoints, arn, NAME, THRESHOLD), GROUP,
    )  # fmt: skip
    assert [kind for kind, _ in outcomes] == ["deployed", "failed"]  # v2's update: moto cannot switch configs
    promote.promote(sagemaker, ssm, endpoints, v1, NAME, "bob", THRESHOLD)
    triggers = monitor.scheduled_messages(clients("sqs"), runs)
    assert triggers
    result = monitor_run(clients)
    assert result.status == "retrain-started", result.message
    started = setup("sagemaker").describe_pipeline_execution(PipelineExecutionArn=result.execution_arn)
    assert "warm start from" in started["PipelineExecutionDescription"]
    for message in triggers:  # as monitor.run deletes them after a completed run
        clients("sqs").delete_message(QueueUrl=runs, ReceiptHandle=message["ReceiptHandle"])

    statements = loop_role_statements()
    needed = [need for service, operation, params in calls for need in requirements(service, operation, params)]
    operations = {f"{service}:{operation}" for service, operation, _ in calls}
    for expected in ("sagemaker:DescribePipeline", "sagemaker:UpdatePipeline", "sagemaker:DescribeModelPackageGroup",
                     "sagemaker:UpdateEndpoint", "sagemaker:DeleteEndpointConfig", "ssm:PutParameter",
                     "s3:GetObject", "sqs:DeleteMessage", "cloudwatch:PutMetricData"):  # fmt: skip
        assert expected in operations  # the run did exercise each path
    denied = sorted({f"{action} on {resource}" for action, resource, context in needed
                     if not allowed(statements, action, resource, context)})  # fmt: skip
    assert denied == []


@pytest.mark.unit
def test_item9_loop_role_resources_are_scoped():
    """#23 item 9: "*" only for the calls IAM cannot scope (ListModelPackages; PutMetricData under a
    namespace condition); no wildcard action."""
    for statement in loop_role_statements():
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert all("*" not in action for action in actions)
        if statement["Resource"] == "*":
            assert set(actions) <= {"sagemaker:ListModelPackages", "cloudwatch:PutMetricData"}, statement
            if "cloudwatch:PutMetricData" in actions:
                assert statement["Condition"] == {"StringEquals": {"cloudwatch:namespace": monitor.NAMESPACE}}
    # the checker itself: a call outside the scopes is denied
    statements = loop_role_statements()
    assert not allowed(
        statements, "sagemaker:UpdatePipeline", f"arn:aws:sagemaker:{REGION}:{ACCOUNT}:pipeline/other", {}
    )
    assert not allowed(statements, "cloudwatch:PutMetricData", "*", {"cloudwatch:namespace": "AWS/EC2"})
    assert not allowed(statements, "ssm:PutParameter", f"arn:aws:ssm:{REGION}:{ACCOUNT}:parameter/other", {})


def approval_body(arn: str) -> dict:
    event = events.approval_event(arn, GROUP)
    return {"detail-type": event["DetailType"], "source": event["Source"], "detail": json.loads(event["Detail"])}


def pipeline_registered(sagemaker: Any, evaluation_uri: str) -> str:
    """A package as the pipeline's Register step creates it: hyperparameters in its metadata, the
    metrics only as ModelMetrics (the Evaluate step's evaluation.json)."""
    registry.ensure_group(sagemaker, GROUP)
    return sagemaker.create_model_package(
        ModelPackageGroupName=GROUP,
        ModelApprovalStatus="PendingManualApproval",
        InferenceSpecification={
            "Containers": [{"Image": IMAGE, "ModelDataUrl": f"s3://{BUCKET}/exec/models/model.tar.gz"}],
            "SupportedContentTypes": list(registry.CONTENT_TYPES),
            "SupportedResponseMIMETypes": list(registry.CONTENT_TYPES),
        },
        CustomerMetadataProperties=registry.hyperparameter_metadata({"num_cells": "40"}),
        ModelMetrics={"ModelQuality": {"Statistics": {"ContentType": "application/json", "S3Uri": evaluation_uri}}},
    )["ModelPackageArn"]


@pytest.mark.unit
def test_item9_a_package_the_pipeline_registered_is_judged_by_its_model_metrics(offline_aws):
    """#23 item 9: Package.wql read only CustomerMetadataProperties, so every package the pipeline's
    Register step created was refused; now its ModelMetrics' evaluation.json is read."""
    clients = session_clients()
    clients("s3").create_bucket(Bucket=BUCKET)
    evaluation = {"regression_metrics": {"mean_wQuantileLoss": {"value": 0.21}, "RMSE": {"value": 3.5}}}
    clients("s3").put_object(Bucket=BUCKET, Key="e/evaluation.json", Body=json.dumps(evaluation).encode())
    arn = pipeline_registered(clients("sagemaker"), f"s3://{BUCKET}/e/evaluation.json")
    approved = events.approve(clients("sagemaker"), arn, "alice")
    assert approved.approval == "Approved" and approved.wql == 0.21
    assert approved.metadata["RMSE"] == "3.5" and approved.metadata["hyperparameters.num_cells"] == "40"
    threshold(clients("ssm"), "0.5")
    assert (
        deploy.deploy_to_staging(
            clients("sagemaker"), clients("ssm"), FakeEndpoints(), arn, NAME, THRESHOLD
        ).threshold_after
        == 0.21
    )
    # recorded on the package from then on (readable without S3)
    stored = clients("sagemaker").describe_model_package(ModelPackageName=arn)["CustomerMetadataProperties"]
    assert stored["mean_wQuantileLoss"] == "0.21"

    # an unreadable or malformed evaluation is a refusal naming it, not a traceback
    clients("s3").put_object(Bucket=BUCKET, Key="e/bad.json", Body=b'{"metrics": {}}')
    bad = pipeline_registered(clients("sagemaker"), f"s3://{BUCKET}/e/bad.json")
    with pytest.raises(events.PackageRejected, match=f"s3://{BUCKET}/e/bad.json: not an evaluation document"):
        events.approve(clients("sagemaker"), bad, "alice")
    gone = pipeline_registered(clients("sagemaker"), f"s3://{BUCKET}/e/missing.json")
    with pytest.raises(events.PackageRejected, match=f"s3://{BUCKET}/e/missing.json unreadable"):
        events.approve(clients("sagemaker"), gone, "alice")
