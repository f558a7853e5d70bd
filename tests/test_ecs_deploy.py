"""The ECS stack offline (issue #25, items 2-3): ecs/template.yaml linted, `python -m ecs deploy` against a
moto server, every piece checked through its own service's API (what moto's CloudFormation skipped
or ignored included), re-deploys (no change; a new image is an update of the same stack; a changed
maximum), bad input, destroy. The task role is checked against the S3 calls the model fetch makes."""

from __future__ import annotations

import ast
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from .conftest import REPO

STACK = "fc-ecs"
IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/deepar:1"
MODEL = "s3://models/deepar/model.tar.gz"


def cli(env: dict, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ecs", *args],
        cwd=REPO,
        env={**env, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def client(env: dict, service: str):
    import boto3

    return boto3.client(
        service,
        endpoint_url=env["AWS_ENDPOINT_URL"],
        region_name=env["AWS_REGION"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def deploy(env: dict, *extra: str, image: str = IMAGE) -> tuple[dict, list[str]]:
    result = cli(env, "deploy", "--stack", STACK, "--image", image, "--model", MODEL, *extra)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.strip().splitlines()
    return json.loads(lines[-1]), lines


@pytest.fixture(scope="module")
def deployed(moto_env) -> dict:
    outputs, lines = deploy(moto_env)
    # moto skipped or ignored these; deploy completed them through their APIs and said so
    for piece in ("ScalableTarget", "RequestScalingPolicy", "CpuScalingPolicy", "LoadBalancerToTasks", "Service"):
        assert any(line.startswith(f"completed {piece} ") for line in lines), lines
    return {**outputs, "env": moto_env}


def resources(env: dict) -> dict[str, str]:
    listed = client(env, "cloudformation").list_stack_resources(StackName=STACK)["StackResourceSummaries"]
    return {r["LogicalResourceId"]: r.get("PhysicalResourceId", "") for r in listed}


def test_template_passes_cfn_lint():
    result = subprocess.run(
        [str(Path(sys.executable).with_name("cfn-lint")), str(REPO / "ecs" / "template.yaml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_outputs_name_what_was_deployed(deployed):
    env = deployed["env"]
    assert set(deployed) - {"env"} == {
        "ClusterName",
        "ServiceName",
        "LoadBalancerDNS",
        "TargetGroupArn",
        "ScalableTargetId",
    }
    balancers = client(env, "elbv2").describe_load_balancers()["LoadBalancers"]
    assert [lb["DNSName"] for lb in balancers] == [deployed["LoadBalancerDNS"]]
    assert deployed["ScalableTargetId"] == f"service/{STACK}/{STACK}|ecs:service:DesiredCount|ecs"


def test_service_runs_the_image_on_fargate_behind_the_target_group(deployed):
    env, ecs = deployed["env"], client(deployed["env"], "ecs")
    cluster = ecs.describe_clusters(clusters=[deployed["ClusterName"]], include=["SETTINGS"])["clusters"][0]
    assert {"name": "containerInsights", "value": "enabled"} in cluster["settings"]
    service = ecs.describe_services(cluster=deployed["ClusterName"], services=[deployed["ServiceName"]])["services"][0]
    assert service["launchType"] == "FARGATE"
    assert service["loadBalancers"] == [
        {"targetGroupArn": deployed["TargetGroupArn"], "containerName": "deepar", "containerPort": 8080}
    ]
    assert service["deploymentConfiguration"]["deploymentCircuitBreaker"] == {"enable": True, "rollback": True}
    assert service["deploymentConfiguration"]["minimumHealthyPercent"] == 100
    groups = service["networkConfiguration"]["awsvpcConfiguration"]["securityGroups"]
    assert groups == [resources(env)["ServiceSecurityGroup"]]

    task = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"]
    assert (task["networkMode"], task["requiresCompatibilities"], task["cpu"], task["memory"]) == (
        "awsvpc",
        ["FARGATE"],
        "1024",
        "2048",
    )
    (container,) = task["containerDefinitions"]
    assert container["image"] == IMAGE and container["command"] == ["serve"]
    assert container["portMappings"][0]["containerPort"] == 8080
    assert {"name": "DEEPAR_MODEL_URL", "value": MODEL} in container["environment"]
    assert container["healthCheck"]["command"] == ["CMD", "/opt/program/container/healthcheck"]
    group = container["logConfiguration"]["options"]["awslogs-group"]
    (logs,) = client(env, "logs").describe_log_groups(logGroupNamePrefix=group)["logGroups"]
    assert logs["retentionInDays"] == 14
    roles = resources(env)
    assert task["taskRoleArn"].endswith("/" + roles["TaskRole"])
    assert task["executionRoleArn"].endswith("/" + roles["ExecutionRole"])


def test_load_balancer_checks_ping_and_reaches_only_the_tasks(deployed):
    env, elb, ec2 = deployed["env"], client(deployed["env"], "elbv2"), client(deployed["env"], "ec2")
    (group,) = elb.describe_target_groups(TargetGroupArns=[deployed["TargetGroupArn"]])["TargetGroups"]
    assert (group["HealthCheckPath"], group["Matcher"]["HttpCode"], group["Port"], group["TargetType"]) == (
        "/ping",
        "200",
        8080,
        "ip",
    )
    attributes = elb.describe_target_group_attributes(TargetGroupArn=deployed["TargetGroupArn"])["Attributes"]
    assert {"Key": "deregistration_delay.timeout_seconds", "Value": "30"} in attributes
    lb_arn = group["LoadBalancerArns"][0]
    lb_attributes = elb.describe_load_balancer_attributes(LoadBalancerArn=lb_arn)["Attributes"]
    assert {"Key": "idle_timeout.timeout_seconds", "Value": "65"} in lb_attributes
    (listener,) = elb.describe_listeners(LoadBalancerArn=lb_arn)["Listeners"]
    assert listener["Port"] == 80 and listener["DefaultActions"][0]["TargetGroupArn"] == deployed["TargetGroupArn"]

    ids = resources(env)
    lb_group, task_group = (
        ec2.describe_security_groups(GroupIds=[ids[name]])["SecurityGroups"][0]
        for name in ("LoadBalancerSecurityGroup", "ServiceSecurityGroup")
    )
    (task_in,) = task_group["IpPermissions"]
    assert (task_in["FromPort"], [p["GroupId"] for p in task_in["UserIdGroupPairs"]], task_in["IpRanges"]) == (
        8080,
        [lb_group["GroupId"]],
        [],
    )
    assert [(r["IpProtocol"], r.get("FromPort")) for r in task_group["IpPermissionsEgress"]] == [("tcp", 443)]
    out_of_lb = [r for r in lb_group["IpPermissionsEgress"] if r["IpProtocol"] != "icmp"]
    assert [(r["FromPort"], [p["GroupId"] for p in r["UserIdGroupPairs"]]) for r in out_of_lb] == [
        (8080, [task_group["GroupId"]])
    ]
    assert not any(r["IpProtocol"] == "-1" for r in lb_group["IpPermissionsEgress"]), "default allow-all kept"


def test_autoscaling_tracks_requests_per_task_and_cpu(deployed):
    scaling = client(deployed["env"], "application-autoscaling")
    resource = f"service/{STACK}/{STACK}"
    (target,) = scaling.describe_scalable_targets(ServiceNamespace="ecs", ResourceIds=[resource])["ScalableTargets"]
    assert (target["MinCapacity"], target["MaxCapacity"], target["ScalableDimension"]) == (
        1,
        4,
        "ecs:service:DesiredCount",
    )
    policies = {
        p["PolicyName"]: p["TargetTrackingScalingPolicyConfiguration"]
        for p in scaling.describe_scaling_policies(ServiceNamespace="ecs", ResourceId=resource)["ScalingPolicies"]
    }
    requests, cpu = policies[f"{STACK}-requests"], policies[f"{STACK}-cpu"]
    assert requests["PredefinedMetricSpecification"]["PredefinedMetricType"] == "ALBRequestCountPerTarget"
    lb_arn = client(deployed["env"], "elbv2").describe_target_groups(TargetGroupArns=[deployed["TargetGroupArn"]])[
        "TargetGroups"
    ][0]["LoadBalancerArns"][0]
    label = requests["PredefinedMetricSpecification"]["ResourceLabel"]
    assert label == lb_arn.split(":loadbalancer/")[1] + "/" + deployed["TargetGroupArn"].split(":")[-1]
    assert cpu["PredefinedMetricSpecification"]["PredefinedMetricType"] == "ECSServiceAverageCPUUtilization"
    assert (requests["TargetValue"], cpu["TargetValue"]) == (3000.0, 60.0)


def test_task_role_may_read_only_the_model_object_and_that_is_what_the_fetch_calls(deployed, monkeypatch, tmp_path):
    env, iam = deployed["env"], client(deployed["env"], "iam")
    role = resources(env)["TaskRole"]
    statements = []
    for name in iam.list_role_policies(RoleName=role)["PolicyNames"]:
        document = iam.get_role_policy(RoleName=role, PolicyName=name)["PolicyDocument"]
        if isinstance(document, str):  # moto keeps what its CloudFormation wrote as a Python repr
            document = ast.literal_eval(document)
        statements += document["Statement"]
    assert iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"] == []
    allowed = {
        (a, s["Resource"]) for s in statements for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert allowed == {("s3:GetObject", "arn:aws:s3:::models/deepar/model.tar.gz")}

    # the calls sagemaker_deepar.serving.model_fetch makes for that URL, recorded from botocore
    from sagemaker_deepar.serving import model_fetch
    from sagemaker_deepar.serving.server_config import ModelSource

    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
        monkeypatch.setenv(name, env[name])
    s3 = client(env, "s3")
    s3.create_bucket(Bucket="models", CreateBucketConfiguration={"LocationConstraint": env["AWS_REGION"]})
    s3.put_object(Bucket="models", Key="deepar/model.tar.gz", Body=_tarball_without_model())
    source = ModelSource.from_env({"DEEPAR_MODEL_URL": MODEL})
    assert source is not None
    made = model_fetch._s3_client(source)
    operations: list[str] = []
    made.meta.events.register("before-call.s3.*", lambda model, **_: operations.append(model.name))
    monkeypatch.setattr(model_fetch, "_s3_client", lambda _source: made)
    with pytest.raises(model_fetch.ModelFetchError, match="holds no model"):  # fetched, then checked
        model_fetch.fetch_model(source, tmp_path / "model")
    assert operations and {(f"s3:{op}", "arn:aws:s3:::models/deepar/model.tar.gz") for op in operations} <= allowed


def _tarball_without_model() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        info = tarfile.TarInfo("README.txt")
        info.size = 2
        archive.addfile(info, io.BytesIO(b"hi"))
    return out.getvalue()


def test_redeploys_same_inputs_change_nothing_a_new_image_updates_the_same_stack(deployed):
    env = deployed["env"]
    cfn, ecs = client(env, "cloudformation"), client(env, "ecs")
    stack_id = cfn.describe_stacks(StackName=STACK)["Stacks"][0]["StackId"]
    outputs, lines = deploy(env)
    assert any("no changes" in line for line in lines) and outputs == {k: v for k, v in deployed.items() if k != "env"}

    new_image = IMAGE.replace(":1", ":2")
    outputs, lines = deploy(env, image=new_image)
    assert any(line.startswith(f"updating stack {STACK}") for line in lines), lines
    assert cfn.describe_stacks(StackName=STACK)["Stacks"][0]["StackId"] == stack_id
    assert [s["StackName"] for s in cfn.describe_stacks()["Stacks"] if s["StackStatus"] != "DELETE_COMPLETE"] == [STACK]
    service = ecs.describe_services(cluster=STACK, services=[STACK])["services"][0]
    task = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"]
    assert task["containerDefinitions"][0]["image"] == new_image and task["networkMode"] == "awsvpc"
    assert outputs["TargetGroupArn"] == deployed["TargetGroupArn"]

    deploy(env, "--max-tasks", "6", image=new_image)
    scaling = client(env, "application-autoscaling")
    (target,) = scaling.describe_scalable_targets(ServiceNamespace="ecs", ResourceIds=[f"service/{STACK}/{STACK}"])[
        "ScalableTargets"
    ]
    assert target["MaxCapacity"] == 6


@pytest.mark.parametrize(
    "extra, message",
    [
        (("--model", "s3://models/deepar/"), "--model 's3://models/deepar/': expected s3://bucket/path/model.tar.gz"),
        (("--model", "/local/model.tar.gz"), "expected s3://bucket/path/model.tar.gz"),
        (("--model", MODEL, "--min-tasks", "3", "--max-tasks", "2"), "need 1 <= min <= max"),
        (("--model", MODEL, "--vpc", "vpc-1"), "--vpc and --subnets go together"),
    ],
)
def test_bad_input_is_one_named_line(moto_env, extra, message):
    result = cli(moto_env, "deploy", "--stack", "bad-input", "--image", IMAGE, *extra)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: {result.stderr.strip()[7:]}"]
    assert message in result.stderr, result.stderr


def test_destroy_removes_the_stack_and_what_deploy_completed(deployed):
    env = deployed["env"]
    result = cli(env, "destroy", "--stack", STACK)
    assert result.returncode == 0, result.stderr
    for piece in ("ScalableTarget", "RequestScalingPolicy", "CpuScalingPolicy"):
        assert f"{piece} (AWS::ApplicationAutoScaling" in result.stdout and "deleted" in result.stdout
    with pytest.raises(ClientError):
        client(env, "cloudformation").describe_stacks(StackName=STACK)
    scaling = client(env, "application-autoscaling")
    assert scaling.describe_scalable_targets(ServiceNamespace="ecs")["ScalableTargets"] == []
    assert scaling.describe_scaling_policies(ServiceNamespace="ecs")["ScalingPolicies"] == []
    again = cli(env, "destroy", "--stack", STACK)
    assert again.returncode == 1 and "no such stack" in again.stderr
