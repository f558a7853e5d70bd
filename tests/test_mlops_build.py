"""`python -m mlops build` through its real entrypoint in the SDK's environment (.venv-sdk):

- ``--local``: the SDK's local pipeline session runs every step in real containers of the image
  (prepare from a curated Parquet lake in moto S3 -> train -> model -> batch transform -> evaluate ->
  accuracy gate) and the passing model is registered in moto's model registry, PendingManualApproval,
  with its metrics; the SSM threshold is created with its default; no container is left behind.
- without --local, against a moto server: the pipeline definition is upserted with every step and
  parameter (Register and Fail behind the condition) and one execution is started; the Train step
  has no model channel while the group holds no approved package, and the approved one's model
  (--warm-start-model auto) once it does.
"""

from __future__ import annotations

import json
import os
import subprocess

import boto3
import numpy as np
import pytest

from mlops import registry

from .conftest import IMAGE, REPO, SDK_PYTHON, containers_of, running_mlflow

PREDICTION_LENGTH = 12
THRESHOLD_PARAMETER = "/mlops/test/wql-threshold"
TINY = [
    "--prediction-length", str(PREDICTION_LENGTH), "--context-length", "24", "--epochs", "1",
    "--num-batches-per-epoch", "3", "--num-cells", "8", "--num-layers", "1",
]  # fmt: skip


def mlops(args: list[str], endpoint: str, timeout: float, **extra_env: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env.update(
        **extra_env,
        AWS_ENDPOINT_URL=endpoint,
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_REGION="us-east-1",
        PYTHONPATH=str(REPO),
    )
    return subprocess.run(
        [str(SDK_PYTHON), "-m", "mlops", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def result_of(run: subprocess.CompletedProcess) -> dict:
    assert run.returncode == 0, (run.stdout[-4000:], run.stderr[-4000:])
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def moto():
    """A moto server on loopback the commands are pointed at (AWS_ENDPOINT_URL), so its state can be checked."""
    from moto.server import ThreadedMotoServer

    from .helpers import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    session = boto3.Session(aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")
    yield endpoint, lambda service: session.client(service, endpoint_url=endpoint)
    server.stop()


def test_build_upserts_the_pipeline_and_starts_an_execution(moto):
    if not SDK_PYTHON.exists():
        pytest.skip("needs .venv-sdk")
    endpoint, client = moto
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/deepar:1"
    args = ["build", "--lake", "s3://lake/curated/readings/", "--image", image, "--pipeline-name", "deepar-aws"]
    args += ["--role", "arn:aws:iam::123456789012:role/SageMakerRole", "--threshold-parameter", "/mlops/aws/wql"]
    args += ["--model-package-group", "deepar-aws"]  # its own: the local build's group must stay unapproved
    tracking = {"MLFLOW_TRACKING_URI": "https://mlflow.example.com", "MLFLOW_REGISTERED_MODEL_NAME": "deepar"}
    result = result_of(mlops([*args, "--json"], endpoint, timeout=300, **tracking))
    assert result["status"] == "started" and result["threshold"] == 0.5
    # --warm-start-model auto (the default) on an empty group: random weights, and said so
    assert result["warm_start"] == "cold start: no approved model in deepar-aws"
    assert result["warm_start_model"] is None

    sagemaker = client("sagemaker")
    definition = json.loads(sagemaker.describe_pipeline(PipelineName="deepar-aws")["PipelineDefinition"])
    steps = {step["Name"]: step for step in definition["Steps"]}
    assert list(steps) == ["Prepare", "Train", "CreateModel-CreateModel", "Forecast", "Evaluate", "CheckAccuracy"]
    check = steps["CheckAccuracy"]["Arguments"]
    assert [s["Name"] for s in check["IfSteps"]] == ["Register-RegisterModel"]
    assert [s["Name"] for s in check["ElseSteps"]] == ["Fail"]
    register = check["IfSteps"][0]["Arguments"]
    assert register["ModelApprovalStatus"] == "PendingManualApproval"
    assert register["ModelMetrics"]["ModelQuality"]["Statistics"]["ContentType"] == "application/json"
    # the network shape it was trained with, for a later build's warm-start decision
    assert register["CustomerMetadataProperties"]["hyperparameters.num_cells"] == {
        "Std:Join": {"On": "", "Values": [{"Get": "Parameters.NumCells"}]}
    }
    assert set(register["CustomerMetadataProperties"]) == {
        f"hyperparameters.{name}"
        for name in ("time_freq", "prediction_length", "context_length", "num_cells", "num_layers")
    }
    condition = check["Conditions"][0]
    assert condition["Type"] == "LessThanOrEqualTo"
    assert condition["LeftValue"]["Std:JsonGet"]["Path"] == "regression_metrics.mean_wQuantileLoss.value"
    assert condition["RightValue"] == {"Get": "Parameters.AccuracyThreshold"}
    fail_message = json.dumps(check["ElseSteps"][0]["Arguments"]["ErrorMessage"])
    assert "Parameters.AccuracyThreshold" in fail_message and "Parameters.ThresholdParameterName" in fail_message
    assert {p["Name"] for p in definition["Parameters"]} == {
        "LakeUri", "ImageUri", "TrainInstanceType", "TransformInstanceType", "ProcessingInstanceType", "TimeFreq",
        "PredictionLength", "ContextLength", "Epochs", "NumBatchesPerEpoch", "NumCells", "NumLayers",
        "Forecaster", "AccuracyThreshold", "ThresholdParameterName", "ModelPackageGroupName",
    }  # fmt: skip
    assert steps["Train"]["Arguments"]["AlgorithmSpecification"]["TrainingImage"] == {"Get": "Parameters.ImageUri"}
    assert steps["Train"]["Arguments"]["Environment"] == tracking  # the job records its run in mlflow
    assert set(steps["Train"]["Arguments"]["HyperParameters"]) >= {"prediction_length", "context_length", "epochs"}
    assert steps["Train"]["Arguments"]["HyperParameters"]["forecaster"] == {"Get": "Parameters.Forecaster"}
    assert steps["Evaluate"]["PropertyFiles"][0]["FilePath"] == "evaluation.json"
    assert [c["ChannelName"] for c in steps["Train"]["Arguments"]["InputDataConfig"]] == ["train", "test"]

    executions = sagemaker.list_pipeline_executions(PipelineName="deepar-aws")["PipelineExecutionSummaries"]
    assert [e["PipelineExecutionArn"] for e in executions] == [result["execution_arn"]]
    assert client("ssm").get_parameter(Name="/mlops/aws/wql")["Parameter"]["Value"] == "0.5"  # created
    assert sagemaker.describe_model_package_group(ModelPackageGroupName="deepar-aws")

    # a production model now exists (approved), and a newer pending one that must not be picked
    model_data = "s3://mlops-artifacts/models/v1/model.tar.gz"
    approved = registry.register(sagemaker, "deepar-aws", image, model_data, {"mean_wQuantileLoss": 0.2})
    sagemaker.update_model_package(ModelPackageArn=approved, ModelApprovalStatus="Approved")
    registry.register(sagemaker, "deepar-aws", image, "s3://mlops-artifacts/models/v2/model.tar.gz", {})
    again = result_of(mlops([*args, "--json"], endpoint, timeout=300))  # upsert: same pipeline, a second run
    assert again["execution_arn"] != result["execution_arn"]
    assert len(sagemaker.list_pipeline_executions(PipelineName="deepar-aws")["PipelineExecutionSummaries"]) == 2
    assert (again["warm_start_model"], again["warm_start_package_arn"]) == (model_data, approved)
    assert again["warm_start"] == f"warm start from {model_data} (model package {approved})"
    definition = json.loads(sagemaker.describe_pipeline(PipelineName="deepar-aws")["PipelineDefinition"])
    (train,) = (step for step in definition["Steps"] if step["Name"] == "Train")
    channels = {c["ChannelName"]: c for c in train["Arguments"]["InputDataConfig"]}
    assert channels["model"]["DataSource"]["S3DataSource"]["S3Uri"] == model_data
    assert channels["model"]["ContentType"] == "application/x-sagemaker-model"


def test_non_numeric_threshold_is_a_clear_error(moto):
    if not SDK_PYTHON.exists():
        pytest.skip("needs .venv-sdk")  # the first test already fails in CI without it
    endpoint, client = moto
    client("ssm").put_parameter(Name="/mlops/broken", Value="ten percent", Type="String")
    run = mlops(
        ["build", "--lake", "s3://lake/x/", "--image", "i", "--role", "arn:aws:iam::1:role/R",
         "--threshold-parameter", "/mlops/broken"],
        endpoint,
        timeout=300,
    )  # fmt: skip
    assert run.returncode == 1
    assert run.stderr.strip().splitlines()[-1] == (
        "error: SSM parameter /mlops/broken: 'ten percent' is not a usable threshold: expected a positive number "
        "(the highest mean_wQuantileLoss to accept, e.g. 0.3)"
    )


def test_local_build_registers_a_passing_model(moto, sdk_ready, tmp_path):
    """The whole pipeline in containers of the image; the lake is read from moto S3; the Train step's job
    records its run in mlflow (python -m mlflow_local --docker)."""
    from mlflow.tracking import MlflowClient

    from mlops.lake import write_sample_lake

    endpoint, client = moto
    lake = write_sample_lake(tmp_path / "lake", sensors=1, days=10)
    s3 = client("s3")
    s3.create_bucket(Bucket="lake")
    for path in lake.rglob("*.parquet"):
        s3.upload_file(str(path), "lake", f"curated/{path.relative_to(lake)}")
    before = containers_of(IMAGE)
    # the training container records its run on a tracking server it can reach (the Docker bridge)
    with running_mlflow(tmp_path / "mlflow", "--docker") as tracking_uri:
        run = mlops(
            ["build", "--local", "--lake", "s3://lake/curated/", "--image", IMAGE, "--workdir", str(tmp_path / "work"),
             "--threshold-parameter", THRESHOLD_PARAMETER, "--default-threshold", "5", *TINY, "--json"],
            endpoint,
            timeout=900,
            MLFLOW_TRACKING_URI=tracking_uri,
            MLFLOW_EXPERIMENT_NAME="mlops-build",
        )  # fmt: skip
        result = result_of(run)
        tracked = MlflowClient(tracking_uri).search_runs(
            [MlflowClient(tracking_uri).get_experiment_by_name("mlops-build").experiment_id]
        )
    assert containers_of(IMAGE) - before == set()  # every step's container is removed
    (training_run,) = tracked
    assert training_run.info.status == "FINISHED" and training_run.data.params["num_cells"] == "8"
    assert "train_loss" in training_run.data.metrics and training_run.outputs.model_outputs  # the pyfunc, logged

    assert result["status"] == "registered" and result["threshold"] == 5.0
    assert result["warm_start"] == "cold start: no approved model in deepar-forecasts"
    assert set(result["steps"].values()) == {"Succeeded"} and len(result["steps"]) == 6
    assert np.isfinite(result["wql"]) and 0 < result["wql"] <= 5.0 and result["rmse"] > 0
    assert "evaluation over 5 series x 12 steps" in run.stdout  # one series per pollutant of the one device
    assert os.path.exists(result["model_data"].removeprefix("file://"))

    package = client("sagemaker").describe_model_package(ModelPackageName=result["model_package_arn"])
    assert package["ModelApprovalStatus"] == "PendingManualApproval"
    assert package["ModelPackageGroupName"] == "deepar-forecasts"
    assert package["InferenceSpecification"]["Containers"][0]["Image"] == IMAGE
    assert package["InferenceSpecification"]["Containers"][0]["ModelDataUrl"] == result["model_data"]
    assert float(package["CustomerMetadataProperties"]["mean_wQuantileLoss"]) == pytest.approx(result["wql"])
    assert float(package["CustomerMetadataProperties"]["RMSE"]) == pytest.approx(result["rmse"])
    assert package["CustomerMetadataProperties"]["hyperparameters.num_cells"] == "8"
    evaluation_uri = package["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"]
    bucket, _, key = evaluation_uri.removeprefix("s3://").partition("/")
    evaluation = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    assert evaluation["regression_metrics"]["mean_wQuantileLoss"]["value"] == pytest.approx(result["wql"])
    assert len(evaluation["per_series"]) == 5
    assert client("ssm").get_parameter(Name=THRESHOLD_PARAMETER)["Parameter"]["Value"] == "5.0"
