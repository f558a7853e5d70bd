"""The evaluation/ commands' AWS requests, checked with botocore's Stubber (no AWS, no Docker).

Run in .venv-sdk by tests/test_evaluation.py:
    .venv-sdk/bin/python -m pytest --noconftest tests/sdk/requests_check.py   (from the repository root)
Local mode cannot reach tuning, UpdateEndpoint, A/B variants or traffic shifting: here each
command's real main() runs against a stubbed SageMaker client and the requests are asserted.
"""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from .offline import ROLE, VIOLATIONS, guard_network, offline_environment

IMAGE = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sagemaker-deepar:1"
ARN = "arn:aws:sagemaker:us-east-1:123456789012:"
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
guard_network()


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    offline_environment(tmp_path)
    monkeypatch.delenv("SAGEMAKER_ROLE", raising=False)
    yield
    assert VIOLATIONS == []


@pytest.fixture
def stubbed(monkeypatch):
    """A real sagemaker.Session whose SageMaker client is stubbed; every command's open_session returns it."""
    import boto3
    import sagemaker
    from botocore.stub import Stubber

    from evaluation import common

    boto_session = boto3.Session(region_name="us-east-1")
    client = boto_session.client("sagemaker")
    session = sagemaker.Session(boto_session=boto_session, sagemaker_client=client)
    monkeypatch.setattr(common, "open_session", lambda args: session)
    monkeypatch.setattr("time.sleep", lambda seconds: None)
    with Stubber(client) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


def endpoint(status: str, config: str, variants: list[dict] | None = None) -> dict:
    return {
        "EndpointName": "e",
        "EndpointArn": "arn:aws:sagemaker:us-east-1:1:endpoint/e",
        "EndpointConfigName": config,
        "EndpointStatus": status,
        "CreationTime": NOW,
        "LastModifiedTime": NOW,
        **({"ProductionVariants": variants} if variants else {}),
    }


def config(name: str, *models: str) -> dict:
    return {
        "EndpointConfigName": name,
        "EndpointConfigArn": f"arn:aws:sagemaker:us-east-1:1:endpoint-config/{name}",
        "CreationTime": NOW,
        "ProductionVariants": [
            {"VariantName": f"variant-{i}", "ModelName": m, "InitialInstanceCount": 1, "InstanceType": "ml.m5.large"}
            for i, m in enumerate(models, 1)
        ],
    }


def not_found(stubber, method: str) -> None:
    stubber.add_client_error(method, "ValidationException", "Could not find endpoint", 400)


# --- tune --------------------------------------------------------------------------------------

TUNE_ARGS = [
    "--image",
    IMAGE,
    "--role",
    ROLE,
    "--train",
    "s3://b/d/train",
    "--test",
    "s3://b/d/test",
    "--output-path",
    "s3://b/out",
    "--max-jobs",
    "6",
    "--max-parallel-jobs",
    "2",
    "--fixed",
    "epochs",
    "--range",
    "context_length=24:96",
]


def test_tune_dry_run_builds_the_tuning_request(capsys):
    from evaluation import tune

    request = tune.main([*TUNE_ARGS, "--dry-run"])["request"]
    config_ = request["HyperParameterTuningJobConfig"]
    assert config_["HyperParameterTuningJobObjective"] == {"Type": "Minimize", "MetricName": "test:mean_wQuantileLoss"}
    assert config_["ResourceLimits"] == {"MaxNumberOfTrainingJobs": 6, "MaxParallelTrainingJobs": 2}
    ranges = config_["ParameterRanges"]
    integer = {r["Name"]: (r["MinValue"], r["MaxValue"]) for r in ranges["IntegerParameterRanges"]}
    continuous = {r["Name"]: r for r in ranges["ContinuousParameterRanges"]}
    assert integer == {
        "context_length": ("24", "96"),
        "mini_batch_size": ("32", "1028"),
        "num_cells": ("30", "200"),
        "num_layers": ("1", "8"),
        "embedding_dimension": ("1", "50"),
    }
    assert continuous["learning_rate"]["ScalingType"] == "Logarithmic"
    assert (continuous["dropout_rate"]["MinValue"], continuous["dropout_rate"]["MaxValue"]) == ("0.0", "0.2")
    definition = request["TrainingJobDefinition"]
    static = definition["StaticHyperParameters"]
    assert json.loads(static["epochs"]) == 40 and "context_length" not in static and "num_cells" not in static
    assert definition["AlgorithmSpecification"]["TrainingImage"] == IMAGE
    metrics = {m["Name"] for m in definition["AlgorithmSpecification"]["MetricDefinitions"]}
    assert {"test:RMSE", "test:mean_wQuantileLoss", "train:final_loss"} <= metrics
    assert [c["ChannelName"] for c in definition["InputDataConfig"]] == ["train", "test"]
    out = capsys.readouterr().out
    assert json.loads(out)["HyperParameterTuningJobConfig"]["Strategy"] == "Bayesian", out[:300]


def test_tune_runs_and_reports_the_best_job(stubbed, capsys):
    from botocore.stub import ANY

    from evaluation import tune

    stubbed.add_response(
        "create_hyper_parameter_tuning_job",
        {"HyperParameterTuningJobArn": ARN + "hyper-parameter-tuning-job/t"},
        {"HyperParameterTuningJobName": ANY, "HyperParameterTuningJobConfig": ANY, "TrainingJobDefinition": ANY},
    )
    described = {
        "HyperParameterTuningJobName": "deepar-t",
        "HyperParameterTuningJobArn": ARN + "hyper-parameter-tuning-job/t",
        "HyperParameterTuningJobConfig": {
            "Strategy": "Bayesian",
            "ResourceLimits": {"MaxNumberOfTrainingJobs": 6, "MaxParallelTrainingJobs": 2},
        },
        "HyperParameterTuningJobStatus": "Completed",
        "CreationTime": NOW,
        "TrainingJobStatusCounters": {},
        "ObjectiveStatusCounters": {},
        "BestTrainingJob": {
            "TrainingJobName": "deepar-t-003",
            "TrainingJobArn": ARN + "training-job/j",
            "CreationTime": NOW,
            "TrainingJobStatus": "Completed",
            "TunedHyperParameters": {"num_cells": "64"},
        },
    }
    for _ in range(2):  # wait, then best_training_job
        stubbed.add_response("describe_hyper_parameter_tuning_job", described)
    stubbed.add_response(
        "describe_training_job",
        {
            "TrainingJobName": "deepar-t-003",
            "TrainingJobArn": ARN + "training-job/j",
            "ModelArtifacts": {"S3ModelArtifacts": "s3://b/m"},
            "TrainingJobStatus": "Completed",
            "SecondaryStatus": "Completed",
            "CreationTime": NOW,
            "AlgorithmSpecification": {"TrainingInputMode": "File", "TrainingImage": IMAGE},
            "ResourceConfig": {"InstanceType": "ml.c5.2xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30},
            "StoppingCondition": {"MaxRuntimeInSeconds": 86400},
            "FinalMetricDataList": [{"MetricName": "test:mean_wQuantileLoss", "Value": 0.071, "Timestamp": NOW}],
        },
        {"TrainingJobName": "deepar-t-003"},
    )
    result = tune.main(TUNE_ARGS)
    assert result == {"best_training_job": "deepar-t-003", "metrics": {"test:mean_wQuantileLoss": 0.071}}
    assert "best training job: deepar-t-003" in capsys.readouterr().out


def test_tune_refuses_local_mode_and_a_missing_test_channel(capsys):
    from evaluation import common, tune

    assert common.run_command(tune.main, [*TUNE_ARGS, "--local"]) == 1
    assert capsys.readouterr().err.strip() == (
        "error: tuning jobs run only on SageMaker: drop --local (try --dry-run to see the request)"
    )
    args = [a for a in TUNE_ARGS if a not in ("--test", "s3://b/d/test")]
    assert common.run_command(tune.main, args) == 1
    assert "--test is required" in capsys.readouterr().err


# --- deploy ------------------------------------------------------------------------------------

DEPLOY = ["--name", "e", "--image", IMAGE, "--role", ROLE, "--timeout", "60"]


def test_deploy_create_builds_model_config_endpoint_and_waits(stubbed, capsys):
    from botocore.stub import ANY

    from evaluation import deploy

    not_found(stubbed, "describe_endpoint")
    stubbed.add_response(
        "create_model",
        {"ModelArn": ARN + "model/m"},
        {
            "ModelName": ANY,
            "ExecutionRoleArn": ROLE,
            "PrimaryContainer": {
                "Image": IMAGE,
                "ModelDataUrl": "s3://b/a.tar.gz",
                "Environment": {"SAGEMAKER_MODEL_SERVER_WORKERS": "2"},
            },
        },
    )
    stubbed.add_response(
        "create_endpoint_config",
        {"EndpointConfigArn": ARN + "endpoint-config/c"},
        {
            "EndpointConfigName": ANY,
            "ProductionVariants": [
                {
                    "VariantName": "variant-1",
                    "ModelName": ANY,
                    "InitialInstanceCount": 2,
                    "InstanceType": "ml.m5.large",
                    "InitialVariantWeight": 1.0,
                }
            ],
        },
    )
    stubbed.add_response(
        "create_endpoint", {"EndpointArn": ARN + "endpoint/e"}, {"EndpointName": "e", "EndpointConfigName": ANY}
    )
    stubbed.add_response("describe_endpoint", endpoint("Creating", "c1"))
    stubbed.add_response("describe_endpoint", endpoint("InService", "c1"))
    deploy.main(
        [
            "create",
            *DEPLOY,
            "--model-data",
            "s3://b/a.tar.gz",
            "--instance-type",
            "ml.m5.large",
            "--instance-count",
            "2",
            "--env",
            "SAGEMAKER_MODEL_SERVER_WORKERS=2",
        ]
    )
    out = capsys.readouterr().out
    assert "endpoint e: Creating" in out and "endpoint e: InService" in out


def test_deploy_update_is_blue_green_with_canary_and_retires_the_old_model(stubbed):
    from botocore.stub import ANY

    from evaluation import deploy

    stubbed.add_response("describe_endpoint", endpoint("InService", "c-old"))
    stubbed.add_response("describe_endpoint_config", config("c-old", "m-old"))
    stubbed.add_response(
        "create_model",
        {"ModelArn": ARN + "model/m"},
        {
            "ModelName": ANY,
            "ExecutionRoleArn": ROLE,
            "PrimaryContainer": {"Image": IMAGE, "ModelDataUrl": "s3://b/b.tar.gz", "Environment": {}},
        },
    )
    stubbed.add_response(
        "create_endpoint_config",
        {"EndpointConfigArn": ARN + "endpoint-config/c"},
        {
            "EndpointConfigName": ANY,
            "ProductionVariants": [
                {
                    "VariantName": "variant-1",
                    "ModelName": ANY,
                    "InitialInstanceCount": 1,
                    "InstanceType": "ml.m5.large",
                    "InitialVariantWeight": 1.0,
                }
            ],
        },
    )
    stubbed.add_response("describe_endpoint", endpoint("InService", "c-old"))
    stubbed.add_response(
        "update_endpoint",
        {"EndpointArn": ARN + "endpoint/e"},
        {
            "EndpointName": "e",
            "EndpointConfigName": ANY,
            "DeploymentConfig": {
                "BlueGreenUpdatePolicy": {
                    "TrafficRoutingConfiguration": {
                        "Type": "CANARY",
                        "WaitIntervalInSeconds": 120,
                        "CanarySize": {"Type": "CAPACITY_PERCENT", "Value": 10},
                    },
                    "TerminationWaitInSeconds": 0,
                }
            },
        },
    )
    stubbed.add_response("describe_endpoint", endpoint("Updating", "c-new"))
    stubbed.add_response("describe_endpoint", endpoint("InService", "c-new"))
    stubbed.add_response("describe_endpoint_config", config("c-new", "m-new"))
    stubbed.add_response("describe_endpoint_config", config("c-old", "m-old"))
    stubbed.add_response("delete_model", {}, {"ModelName": "m-old"})
    stubbed.add_response("delete_endpoint_config", {}, {"EndpointConfigName": "c-old"})
    deploy.main(["update", *DEPLOY, "--model-data", "s3://b/b.tar.gz", "--canary", "10", "--canary-wait", "120"])


def test_deploy_ab_variants_then_shift_traffic(stubbed, capsys):
    from botocore.stub import ANY

    from evaluation import deploy

    for data in ("s3://b/a.tar.gz", "s3://b/b.tar.gz"):
        stubbed.add_response(
            "create_model",
            {"ModelArn": ARN + "model/m"},
            {
                "ModelName": ANY,
                "ExecutionRoleArn": ROLE,
                "PrimaryContainer": {"Image": IMAGE, "ModelDataUrl": data, "Environment": {}},
            },
        )
    stubbed.add_response(
        "create_endpoint_config",
        {"EndpointConfigArn": ARN + "endpoint-config/c"},
        {
            "EndpointConfigName": ANY,
            "ProductionVariants": [
                {
                    "VariantName": "variant-1",
                    "ModelName": ANY,
                    "InitialInstanceCount": 1,
                    "InstanceType": "ml.c5.2xlarge",
                    "InitialVariantWeight": 0.9,
                },
                {
                    "VariantName": "variant-2",
                    "ModelName": ANY,
                    "InitialInstanceCount": 1,
                    "InstanceType": "ml.c5.2xlarge",
                    "InitialVariantWeight": 0.1,
                },
            ],
        },
    )
    not_found(stubbed, "describe_endpoint")
    stubbed.add_response(
        "create_endpoint", {"EndpointArn": ARN + "endpoint/e"}, {"EndpointName": "e", "EndpointConfigName": ANY}
    )
    stubbed.add_response("describe_endpoint", endpoint("InService", "c"))
    deploy.main(["ab", *DEPLOY, "--model-data", "s3://b/a.tar.gz", "s3://b/b.tar.gz", "--weights", "0.9", "0.1"])

    stubbed.add_response(
        "update_endpoint_weights_and_capacities",
        {"EndpointArn": ARN + "endpoint/e"},
        {
            "EndpointName": "e",
            "DesiredWeightsAndCapacities": [
                {"VariantName": "variant-1", "DesiredWeight": 0.5},
                {"VariantName": "variant-2", "DesiredWeight": 0.5},
            ],
        },
    )
    variants = [{"VariantName": f"variant-{i}", "CurrentWeight": 0.5} for i in (1, 2)]
    stubbed.add_response("describe_endpoint", endpoint("InService", "c", variants))
    deploy.main(["shift", *DEPLOY[:2], "--weight", "variant-1=0.5", "--weight", "variant-2=0.5"])
    assert "variant-2: weight 0.5" in capsys.readouterr().out


def test_deploy_delete_removes_endpoint_config_models_and_tolerates_missing(stubbed, capsys):
    from evaluation import deploy

    stubbed.add_response("describe_endpoint", endpoint("InService", "c"))
    stubbed.add_response("describe_endpoint_config", config("c", "m1", "m2"))
    stubbed.add_response("delete_endpoint", {}, {"EndpointName": "e"})
    stubbed.add_response("delete_endpoint_config", {}, {"EndpointConfigName": "c"})
    stubbed.add_response("delete_model", {}, {"ModelName": "m1"})
    stubbed.add_client_error("delete_model", "ValidationException", "Could not find model m2", 400)
    assert deploy.main(["delete", "--name", "e"]) == {"deleted": ["e", "c", "m1", "m2"]}
    not_found(stubbed, "describe_endpoint")
    assert deploy.main(["delete", "--name", "e"]) == {"deleted": []}
    assert "endpoint e: not found, nothing to delete" in capsys.readouterr().out


def test_aws_errors_are_one_clear_line_with_advice(stubbed, capsys):
    from evaluation import common, deploy

    not_found(stubbed, "describe_endpoint")
    stubbed.add_client_error(
        "create_model", "AccessDeniedException", "User is not authorized to perform: iam:PassRole", 400
    )
    assert common.run_command(deploy.main, ["create", *DEPLOY, "--model-data", "s3://b/a.tar.gz"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: CreateModel failed: AccessDeniedException: User is not authorized to perform: iam:PassRole "
        "-- the credentials or the role lack a permission (see the message)"
    ]

    stubbed.add_response("update_endpoint_weights_and_capacities", {"EndpointArn": ARN + "endpoint/e"})
    stubbed.add_response("describe_endpoint", endpoint("Failed", "c") | {"FailureReason": "quota: ml.p5.48xlarge"})
    assert common.run_command(deploy.main, ["shift", *DEPLOY[:2], "--weight", "variant-1=1"]) == 1
    assert "quota: ml.p5.48xlarge" in capsys.readouterr().err


def test_missing_role_and_image_say_what_to_pass(capsys):
    from evaluation import common, deploy

    assert common.run_command(deploy.main, ["create", "--name", "e", "--model-data", "s3://b/a"]) == 1
    assert "no execution role: pass --role" in capsys.readouterr().err


# --- prepare / train / invoke -----------------------------------------------------------------


def test_prepare_names_the_file_and_line_of_a_bad_series(tmp_path, capsys):
    from evaluation import common, prepare

    data = tmp_path / "series.json"
    data.write_text('{"start": "2024-01-01", "target": [1, 2, 3, 4, 5]}\n\n{"start": "2024-01-01", "target": [1, 2]}\n')
    assert (
        common.run_command(
            prepare.main,
            ["--local", "--data", str(data), "--prediction-length", "3", "--output", str(tmp_path / "out")],
        )
        == 1
    )
    assert capsys.readouterr().err.strip() == (
        f"error: {data}:3: 2 points, the test channel needs more than prediction_length=3"
    )
    data.write_text('{"start": "2024-01-01", "target": [1, 2, 3, 4, 5], "dynamic_feat": [[0, 1, 2, 3, 4, 5, 6, 7]]}\n')
    uris = prepare.main(["--local", "--data", str(data), "--prediction-length", "3", "--output", str(tmp_path / "out")])
    train = json.loads(Path(uris["train"].removeprefix("file://"), "train.json").read_text())
    assert train["target"] == [1, 2] and train["dynamic_feat"] == [[0, 1, 2, 3, 4]]
    assert (
        common.run_command(prepare.main, ["--data", str(data), "--prediction-length", "3", "--output", str(tmp_path)])
        == 1
    )
    assert "SageMaker reads channels from s3://" in capsys.readouterr().err


def test_train_refuses_spot_without_checkpoints(stubbed, capsys):
    from evaluation import common, train

    args = ["--image", IMAGE, "--role", ROLE, "--train", "s3://b/d/train", "--output-path", "s3://b/o", "--spot"]
    assert common.run_command(train.main, args) == 1
    assert "--spot without --checkpoint-s3-uri" in capsys.readouterr().err


def test_invoke_retries_adaptively_and_reports_model_errors(stubbed, capsys, monkeypatch):
    import argparse

    from botocore.stub import Stubber

    from evaluation import common, invoke

    session = common.open_session(None)
    runtime = common.runtime_client(session, argparse.Namespace(local=False))
    retries = runtime.meta.config.retries
    assert retries["mode"] == "adaptive" and retries["total_max_attempts"] == 11
    monkeypatch.setattr(common, "runtime_client", lambda session, args: runtime)
    with Stubber(runtime) as runtime_stub:
        runtime_stub.add_client_error(
            "invoke_endpoint",
            "ModelError",
            'Received client error (400) from primary: {"error": "instances[0]: target: missing"}',
            424,
        )
        assert common.run_command(invoke.main, ["--name", "e", "--prediction-length", "24", "--series", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: InvokeEndpoint failed: ModelError: Received client error (400)")
