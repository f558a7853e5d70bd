"""`python -m mlops deploy|promote|monitor` through their entrypoints, against moto server and (deploy,
promote) real containers of our image as the local endpoints.

The staging/prod flow: an approval event goes through an EventBridge rule to SQS, deploy consumes it and
creates <name>-staging, promote records the approval and creates <name>-prod; then a broken model is
approved: its staging rollout fails with a clear message, it is refused for prod, the bar is not
raised, and both endpoints answer forecasts throughout. Monitor: healthy run publishes the metric, a
drift starts the pipeline once, a second breach does not start another, bad thresholds are named.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import tarfile
import threading
import time

import pytest

from .conftest import IMAGE, MOTO_REGION, REPO
from .test_mlops_loop_rules import LAKE_KEY, lake_readings

NAME = "dtest"
GROUP = f"{NAME}-models"
THRESHOLD = f"/{NAME}/mlops/wql-threshold"
BUCKET = "dtest-artifacts"


@pytest.fixture
def aws(moto_env, monkeypatch):
    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, moto_env[key])
    import boto3

    clients = {}

    def client(service: str):
        if service not in clients:
            clients[service] = boto3.client(service, region_name=MOTO_REGION)
        return clients[service]

    if not client("s3").list_buckets()["Buckets"]:
        client("s3").create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": MOTO_REGION})
    return client


@pytest.fixture
def image_ready():
    ok = (
        shutil.which("docker")
        and subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode == 0
    )
    if not ok:
        pytest.skip(f"not available: a Docker engine with {IMAGE}")


def mlops(env: dict, command: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", f"mlops.{command}", *args],
        env={**env, "DEEPAR_IMAGE": IMAGE},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def upload_model(aws, key: str, files: dict[str, bytes]) -> str:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    aws("s3").put_object(Bucket=BUCKET, Key=key, Body=buffer.getvalue())
    return f"s3://{BUCKET}/{key}"


def register(aws, model_data: str, **metadata: str) -> str:
    return aws("sagemaker").create_model_package(
        ModelPackageGroupName=GROUP,
        ModelApprovalStatus="PendingManualApproval",
        InferenceSpecification={
            "Containers": [{"Image": IMAGE, "ModelDataUrl": model_data}],
            "SupportedContentTypes": ["application/json"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
        CustomerMetadataProperties=metadata,
    )["ModelPackageArn"]


class Prober(threading.Thread):
    """Asks each endpoint (name -> URL, re-read from the map each time) for a forecast every 0.5 s."""

    def __init__(self, endpoints):
        super().__init__(daemon=True)
        self.endpoints, self.statuses, self.halt = endpoints, [], threading.Event()

    def run(self):
        import requests

        body = {
            "instances": [{"start": "2024-01-01 00:00:00", "target": [float(i % 7) for i in range(30)]}],
            "configuration": {"num_samples": 20},  # light: the probe must not be what slows the rollouts
        }
        while not self.halt.is_set():
            for name in ("dtest-staging", "dtest-prod"):
                try:
                    response = requests.post(self.endpoints.url(name) + "/invocations", json=body, timeout=30)
                    self.statuses.append((name, response.status_code))
                except requests.RequestException as error:
                    self.statuses.append((name, type(error).__name__))
            time.sleep(0.5)


def test_staging_then_prod_and_a_broken_model_never_reaches_prod(aws, moto_env, image_ready, torch_model, tmp_path):
    from mlops.endpoints import LocalEndpoints
    from mlops.events import DeployFailed, approval_event, approve, describe_package

    sagemaker, ssm, sqs, events = (aws(s) for s in ("sagemaker", "ssm", "sqs", "events"))
    sagemaker.create_model_package_group(ModelPackageGroupName=GROUP)
    ssm.put_parameter(Name=THRESHOLD, Value="0.5", Type="String", Overwrite=True)
    queue = sqs.create_queue(QueueName=f"{NAME}-approvals")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    events.put_rule(
        Name=f"{NAME}-approved",
        EventPattern=json.dumps(
            {
                "source": ["aws.sagemaker"],
                "detail-type": ["SageMaker Model Package State Change"],
                "detail": {"ModelPackageGroupName": [GROUP], "ModelApprovalStatus": ["Approved"]},
            }
        ),
    )
    events.put_targets(Rule=f"{NAME}-approved", Targets=[{"Id": "q", "Arn": queue_arn}])

    model_dir = torch_model / "model"
    good = upload_model(
        aws,
        "v1/model.tar.gz",
        {str(p.relative_to(model_dir)): p.read_bytes() for p in model_dir.rglob("*") if p.is_file()},
    )
    broken = upload_model(aws, "v2/model.tar.gz", {"deepar-metadata.json": b'{"garbage": 1}'})
    state = tmp_path / "state"
    local = ["--local", "--name", NAME, "--threshold-parameter", THRESHOLD, "--state-dir", str(state)]
    endpoints = LocalEndpoints(state)
    prober = Prober(endpoints)
    try:
        v1 = register(aws, good, mean_wQuantileLoss="0.3")
        approve(sagemaker, v1, "alice")
        events.put_events(Entries=[approval_event(v1, GROUP)])
        staged = mlops(moto_env, "deploy", "--from-queue", queue, "--group", GROUP, *local)
        assert staged.returncode == 0, staged.stdout + staged.stderr[-3000:]
        assert f"dtest-staging: created with {v1} (mean_wQuantileLoss 0.3; threshold 0.5 -> 0.3)" in staged.stdout
        assert "1 message(s): 1 deployed, 0 refused or failed, 0 skipped" in staged.stdout
        assert ssm.get_parameter(Name=THRESHOLD)["Parameter"]["Value"] == "0.3"

        promoted = mlops(moto_env, "promote", "--package-arn", v1, "--approved-by", "bob", *local)
        assert promoted.returncode == 0, promoted.stderr[-3000:]
        assert f"dtest-prod: created with {v1}" in promoted.stdout
        package = describe_package(sagemaker, v1)
        assert package.approval == "Approved" and package.metadata["promoted_by"] == "bob"
        assert package.metadata["staging_status"].startswith("InService") and package.metadata[
            "prod_status"
        ].startswith("InService")
        assert sagemaker.describe_model_package(ModelPackageName=v1)["ApprovalDescription"].startswith(
            "promoted to dtest-prod by bob at "
        )
        serving = endpoints.endpoints()

        prober.start()
        time.sleep(1)
        v2 = register(aws, broken, mean_wQuantileLoss="0.1")
        failed = mlops(moto_env, "deploy", "--package-arn", v2, "--approve", "--approved-by", "carol", *local)
        assert failed.returncode == 1
        [error] = failed.stderr.strip().splitlines()
        assert error.startswith(
            f"error: endpoint dtest-staging: the new model {broken} is unhealthy (the container exited); rolled back; dtest-staging keeps serving {serving['dtest-staging']['url']} ({good})"
        )
        assert "deepar-metadata.json: missing field(s)" in error  # the container's own reason
        assert ssm.get_parameter(Name=THRESHOLD)["Parameter"]["Value"] == "0.3"  # a broken model does not raise the bar
        assert describe_package(sagemaker, v2).metadata["staging_status"].startswith("Failed at ")

        # a prod rollout that fails (the same broken artifact, straight to the endpoint): prod keeps serving
        with pytest.raises(DeployFailed, match=f"dtest-prod keeps serving {serving['dtest-prod']['url']}"):
            endpoints.roll_out("dtest-prod", broken, IMAGE)
        refused = mlops(moto_env, "promote", "--package-arn", v2, "--approved-by", "bob", *local)
        assert refused.returncode == 1
        assert refused.stderr.startswith(
            f"error: model package {v2} has not served from dtest-staging (staging_status: Failed at "
        )
        time.sleep(1)
        prober.halt.set()
        prober.join(timeout=40)
        assert endpoints.endpoints() == serving  # same containers, same models
        assert {name for name, _ in prober.statuses} == {"dtest-staging", "dtest-prod"}
        assert [s for s in prober.statuses if s[1] != 200] == []  # never a failed forecast, during or after
        assert len(prober.statuses) >= 10

        v3 = register(aws, good, evaluation_status="Failed", evaluation_reason="mean_wQuantileLoss is NaN")
        rejected = mlops(moto_env, "deploy", "--package-arn", v3, "--approve", *local)
        assert rejected.returncode == 1
        assert rejected.stderr.strip() == (
            f"error: model package {v3}: its evaluation failed (mean_wQuantileLoss is NaN): it cannot be approved or deployed"
        )
        assert sagemaker.describe_model_package(ModelPackageName=v3)["ModelApprovalStatus"] == "PendingManualApproval"
    finally:
        prober.halt.set()
        endpoints.delete_all()
        leaked = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"name=^{NAME}-"], capture_output=True, text=True
        ).stdout.split()
        if leaked:  # a rollout interrupted by a failing assertion
            subprocess.run(["docker", "rm", "-f", *leaked], capture_output=True)


# --- monitor ----------------------------------------------------------------------------------------


def write_lake(aws, level: float) -> None:
    aws("s3").put_object(Bucket=BUCKET, Key=LAKE_KEY, Body=lake_readings(level))


def write_forecasts(aws) -> None:
    lines = []
    for device, base in (("d1", 10), ("d2", 20)):
        mean = [base + ((40 + i) % (5 if device == "d1" else 3)) for i in range(6)]
        lines.append(
            {
                "item_id": device,
                "start": "2024-03-02 16:00:00",
                "mean": mean,
                "quantiles": {"0.1": [m - 2 for m in mean], "0.5": mean, "0.9": [m + 2 for m in mean]},
            }
        )
    body = "\n".join(json.dumps(line) for line in lines) + "\n"
    aws("s3").put_object(Bucket=BUCKET, Key="forecasts/prod.jsonl.out", Body=body.encode())


def test_monitor_publishes_and_starts_one_retrain_on_drift(aws, moto_env):
    from mlops.monitor import monitor_once

    sagemaker, ssm, cloudwatch = aws("sagemaker"), aws("ssm"), aws("cloudwatch")
    gate = [{"Name": "AccuracyThreshold", "Type": "Float", "DefaultValue": 0.5}]  # what build declares (#23 item 6)
    sagemaker.create_pipeline(
        PipelineName=f"{NAME}-build",
        PipelineDefinition=json.dumps({"Version": "2020-12-01", "Parameters": gate, "Steps": []}),
        RoleArn="arn:aws:iam::123456789012:role/x",
    )
    monitor_args = [
        "--forecasts", f"s3://{BUCKET}/forecasts/", "--lake", f"s3://{BUCKET}/readings/",
        "--pipeline", f"{NAME}-build", "--name", NAME, "--threshold-parameter", f"{THRESHOLD}-monitor",
    ]  # fmt: skip
    ssm.put_parameter(Name=f"{THRESHOLD}-monitor", Value="0.2x", Type="String")
    bad = mlops(moto_env, "monitor", *monitor_args)
    assert bad.returncode == 1
    assert bad.stderr.strip() == (
        f"error: SSM parameter {THRESHOLD}-monitor: '0.2x' is not a usable threshold: expected a positive number "
        "(the highest mean_wQuantileLoss to accept, e.g. 0.3)"
    )
    ssm.put_parameter(Name=f"{THRESHOLD}-monitor", Value="0.2", Type="String", Overwrite=True)

    write_lake(aws, level=0)
    write_forecasts(aws)
    healthy = mlops(moto_env, "monitor", *monitor_args)
    assert healthy.returncode == 0, healthy.stderr[-2000:]
    # means hit the actuals; the 0.1 and 0.9 bands sit 2 below/above: pinball 0.2 per point each, over
    # 12 points whose actuals sum to 196: wQL = (2 * 12 * 0.2 / 196) * 2 / 3 = 0.016327
    assert healthy.stdout.startswith("healthy: mean_wQuantileLoss 0.01633 (threshold 0.2), RMSE 0, 12 point(s)")
    [datapoint] = cloudwatch.get_metric_statistics(
        Namespace="DeepAR/MLOps",
        MetricName="mean_wQuantileLoss",
        Dimensions=[{"Name": "Endpoint", "Value": f"{NAME}-prod"}],
        StartTime=time.time() - 600,
        EndTime=time.time() + 600,
        Period=3600,
        Statistics=["Maximum"],
    )["Datapoints"]
    assert datapoint["Maximum"] == pytest.approx(2 * 12 * 0.2 / 196 * 2 / 3)

    write_lake(aws, level=30)  # the drift: a level shift in the new actuals
    result = monitor_once(
        forecasts=f"s3://{BUCKET}/forecasts/",
        lake=f"s3://{BUCKET}/readings/",
        pipeline=f"{NAME}-build",
        threshold_parameter=f"{THRESHOLD}-monitor",
        endpoint=f"{NAME}-prod",
    )
    assert result.status == "retrain-started" and result.breached and result.points == 12
    assert result.wql > 0.2 and result.execution_arn
    # the next scheduled run (moto never fires schedules: put the rule's trigger on its queue ourselves)
    sqs = aws("sqs")
    runs = sqs.create_queue(QueueName=f"{NAME}-monitor-runs")["QueueUrl"]
    sqs.send_message(QueueUrl=runs, MessageBody=json.dumps({"detail-type": "Scheduled Event", "detail": {}}))
    again = mlops(moto_env, "monitor", *monitor_args, "--group", GROUP, "--from-queue", runs)
    assert again.returncode == 2, again.stderr[-2000:]
    assert f"retrain {result.execution_arn} already running, none started" in again.stdout
    assert sqs.receive_message(QueueUrl=runs, WaitTimeSeconds=0).get("Messages", []) == []  # consumed
    executions = sagemaker.list_pipeline_executions(PipelineName=f"{NAME}-build")["PipelineExecutionSummaries"]
    assert [e["PipelineExecutionArn"] for e in executions] == [result.execution_arn]
