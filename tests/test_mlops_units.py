"""mlops deploy/promote/monitor in process: the exact SageMaker blue/green requests (botocore Stubber,
since moto has no UpdateEndpoint), rollback, the threshold's errors, refusing a failed evaluation,
and starting a retrain only once."""

from __future__ import annotations

import boto3
import pytest
from botocore.stub import ANY, Stubber

from mlops import endpoints, events, monitor

pytestmark = pytest.mark.unit

REGION = "eu-west-1"
ROLE = "arn:aws:iam::123456789012:role/deepar-model-execution"
IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/sagemaker-deepar:1"
PACKAGE = "arn:aws:sagemaker:eu-west-1:123456789012:model-package/deepar-models/2"


def client(service: str):
    return boto3.client(service, region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")


def not_found(stub: Stubber, method: str, code: str = "ValidationException") -> None:
    stub.add_client_error(method, service_error_code=code, service_message="Could not find endpoint")


def expect_new_model_and_config(stub: Stubber, model_data: str) -> None:
    stub.add_response(
        "create_model",
        {"ModelArn": "arn:aws:sagemaker:eu-west-1:123456789012:model/m"},
        {
            "ModelName": ANY,
            "ExecutionRoleArn": ROLE,
            "PrimaryContainer": {"Image": IMAGE, "ModelDataUrl": model_data, "Environment": {}},
        },
    )
    stub.add_response(
        "create_endpoint_config",
        {"EndpointConfigArn": "arn:aws:sagemaker:eu-west-1:123456789012:endpoint-config/c"},
        {
            "EndpointConfigName": ANY,
            "ProductionVariants": [
                {
                    "VariantName": "variant-1",
                    "ModelName": ANY,
                    "InitialInstanceCount": 1,
                    "InstanceType": "ml.c5.xlarge",
                    "InitialVariantWeight": 1.0,
                }
            ],
        },
    )


def capture_names(sagemaker) -> dict[str, str]:
    """The generated model/config names, as the requests carried them."""
    seen: dict[str, str] = {}

    def keep(params, model, **_):
        if model.name == "CreateModel":
            seen["model"] = params["ModelName"]
        if model.name == "CreateEndpointConfig":
            seen["config"] = params["EndpointConfigName"]

    sagemaker.meta.events.register("provide-client-params.sagemaker.*", keep)
    return seen


def test_update_is_blue_green_with_alarm_rollback_and_retires_the_old_fleet():
    sagemaker = client("sagemaker")
    names = capture_names(sagemaker)
    stub = Stubber(sagemaker)
    endpoint = "deepar-staging"
    stub.add_response("describe_endpoint", serving(endpoint, "old-config", "InService"), {"EndpointName": endpoint})
    stub.add_response("describe_endpoint", serving(endpoint, "old-config", "InService"), {"EndpointName": endpoint})
    expect_new_model_and_config(stub, "s3://b/v2/model.tar.gz")
    stub.add_response(
        "update_endpoint",
        {"EndpointArn": "arn:aws:sagemaker:eu-west-1:123456789012:endpoint/deepar-staging"},
        {
            "EndpointName": endpoint,
            "EndpointConfigName": ANY,
            "DeploymentConfig": {
                "BlueGreenUpdatePolicy": {
                    "TrafficRoutingConfiguration": {"Type": "ALL_AT_ONCE", "WaitIntervalInSeconds": 300},
                    "TerminationWaitInSeconds": 300,
                    "MaximumExecutionTimeoutInSeconds": 3600,
                },
                "AutoRollbackConfiguration": {"Alarms": [{"AlarmName": "deepar-staging-errors"}]},
            },
        },
    )
    stub.add_response("describe_endpoint", serving(endpoint, "old-config", "Updating"), {"EndpointName": endpoint})
    stub.add_response("describe_endpoint", serving(endpoint, ANY_CONFIG, "InService"), {"EndpointName": endpoint})
    # the old config and its model go; the new model stays
    stub.add_response(
        "describe_endpoint_config", config_of("old-config", "old-model"), {"EndpointConfigName": "old-config"}
    )
    stub.add_response("delete_model", {}, {"ModelName": "old-model"})
    stub.add_response("delete_endpoint_config", {}, {"EndpointConfigName": "old-config"})
    with stub, follow_config(sagemaker, names):
        rollout = endpoints.SageMakerEndpoints(sagemaker, ROLE, poll=0).roll_out(
            endpoint, "s3://b/v2/model.tar.gz", IMAGE
        )
        stub.assert_no_pending_responses()
    assert rollout.created is False and rollout.target == names["config"]


def test_a_rolled_back_update_fails_clearly_and_keeps_the_old_fleet():
    sagemaker = client("sagemaker")
    names = capture_names(sagemaker)
    stub = Stubber(sagemaker)
    endpoint = "deepar-prod"
    stub.add_response("describe_endpoint", serving(endpoint, "old-config", "InService"), {"EndpointName": endpoint})
    stub.add_response("describe_endpoint", serving(endpoint, "old-config", "InService"), {"EndpointName": endpoint})
    expect_new_model_and_config(stub, "s3://b/broken/model.tar.gz")
    stub.add_response("update_endpoint", {"EndpointArn": "arn:aws:sagemaker:eu-west-1:123456789012:endpoint/x"}, None)
    rolled_back = serving(endpoint, "old-config", "InService")
    rolled_back["FailureReason"] = "Alarm deepar-prod-errors fired: rolled back to the previous configuration"
    stub.add_response("describe_endpoint", rolled_back, {"EndpointName": endpoint})
    # only the new (unused) config and model are deleted; nothing touches old-config or old-model
    stub.add_response("describe_endpoint_config", config_of("new", "new-model"), {"EndpointConfigName": ANY})
    stub.add_response("delete_model", {}, {"ModelName": "new-model"})
    stub.add_response("delete_endpoint_config", {}, {"EndpointConfigName": ANY})
    with stub, pytest.raises(events.DeployFailed) as failure:
        endpoints.SageMakerEndpoints(sagemaker, ROLE, poll=0).roll_out(endpoint, "s3://b/broken/model.tar.gz", IMAGE)
    stub.assert_no_pending_responses()
    assert str(failure.value) == (
        "endpoint deepar-prod: rollout of s3://b/broken/model.tar.gz failed: Alarm deepar-prod-errors fired: "
        "rolled back to the previous configuration; deepar-prod keeps serving old-config"
    )
    assert "config" in names


def test_first_rollout_creates_the_endpoint():
    sagemaker = client("sagemaker")
    names = capture_names(sagemaker)
    stub = Stubber(sagemaker)
    not_found(stub, "describe_endpoint")
    expect_new_model_and_config(stub, "s3://b/v1/model.tar.gz")
    stub.add_response(
        "create_endpoint",
        {"EndpointArn": "arn:aws:sagemaker:eu-west-1:123456789012:endpoint/deepar-staging"},
        {"EndpointName": "deepar-staging", "EndpointConfigName": ANY},
    )
    stub.add_response("describe_endpoint", serving("deepar-staging", ANY_CONFIG, "Creating"), None)
    stub.add_response("describe_endpoint", serving("deepar-staging", ANY_CONFIG, "InService"), None)
    with stub, follow_config(sagemaker, names):
        rollout = endpoints.SageMakerEndpoints(sagemaker, ROLE, poll=0).roll_out(
            "deepar-staging", "s3://b/v1/model.tar.gz", IMAGE
        )
    assert rollout.created and rollout.target == names["config"]


ANY_CONFIG = "__the-new-config__"


def serving(endpoint: str, config: str, status: str) -> dict:
    return {
        "EndpointName": endpoint,
        "EndpointArn": f"arn:aws:sagemaker:eu-west-1:123456789012:endpoint/{endpoint}",
        "EndpointConfigName": config,
        "EndpointStatus": status,
        "CreationTime": 0,
        "LastModifiedTime": 0,
    }


def config_of(config: str, model: str) -> dict:
    return {
        "EndpointConfigName": config,
        "EndpointConfigArn": f"arn:aws:sagemaker:eu-west-1:123456789012:endpoint-config/{config}",
        "ProductionVariants": [{"VariantName": "variant-1", "ModelName": model}],
        "CreationTime": 0,
    }


class follow_config:
    """Stubbed describe_endpoint answers name the config the code just created (ANY_CONFIG placeholder)."""

    def __init__(self, sagemaker, names: dict[str, str]):
        self.sagemaker, self.names = sagemaker, names

    def __enter__(self):
        self.sagemaker.meta.events.register("after-call.sagemaker.DescribeEndpoint", self._after)
        return self

    def _after(self, parsed, **kwargs):
        if parsed.get("EndpointConfigName") == ANY_CONFIG:
            parsed["EndpointConfigName"] = self.names["config"]

    def __exit__(self, *exc):
        self.sagemaker.meta.events.unregister("after-call.sagemaker.DescribeEndpoint", self._after)


# --- threshold, packages, events -----------------------------------------------------------------


def ssm_with(value: str | None):
    ssm = client("ssm")
    stub = Stubber(ssm)
    if value is None:
        stub.add_client_error("get_parameter", service_error_code="ParameterNotFound", service_message="no")
    else:
        stub.add_response("get_parameter", {"Parameter": {"Name": "/p", "Value": value, "Type": "String"}})
    return ssm, stub


def test_threshold_missing_or_not_a_number_is_named():
    ssm, stub = ssm_with(None)
    with (
        stub,
        pytest.raises(
            events.ThresholdError, match=r"SSM parameter /p \(the mean_wQuantileLoss threshold\) does not exist"
        ),
    ):
        events.read_threshold(ssm, "/p")
    for bad in ("abc", "nan", "-1", ""):
        ssm, stub = ssm_with(bad)
        with stub, pytest.raises(events.ThresholdError) as failure:
            events.read_threshold(ssm, "/p")
        assert (
            str(failure.value) == f"SSM parameter /p: {bad!r} is not a usable threshold: expected a positive number "
            "(the highest mean_wQuantileLoss to accept, e.g. 0.3)"
        )


def test_raise_bar_lowers_only():
    ssm, stub = ssm_with("0.3")
    stub.add_response(
        "put_parameter", {"Version": 2}, {"Name": "/p", "Value": "0.2", "Type": "String", "Overwrite": True}
    )
    with stub:
        assert events.raise_bar(ssm, "/p", 0.2) == (0.3, 0.2)
    ssm, stub = ssm_with("0.3")
    with stub:  # no put_parameter expected: a worse model never loosens the bar
        assert events.raise_bar(ssm, "/p", 0.4) == (0.3, 0.3)


def package_description(**metadata: str) -> dict:
    return {
        "ModelPackageName": "deepar-models",
        "ModelPackageGroupName": "deepar-models",
        "ModelPackageArn": PACKAGE,
        "ModelPackageStatus": "Completed",
        "ModelPackageStatusDetails": {"ValidationStatuses": []},
        "CreationTime": 0,
        "ModelApprovalStatus": "PendingManualApproval",
        "InferenceSpecification": {
            "Containers": [{"Image": IMAGE, "ModelDataUrl": "s3://b/v2/model.tar.gz"}],
            "SupportedContentTypes": ["application/json"],
            "SupportedResponseMIMETypes": ["application/json"],
        },
        "CustomerMetadataProperties": metadata,
    }


@pytest.mark.parametrize(
    "metadata, message",
    [
        (
            {"evaluation_status": "Failed", "evaluation_reason": "mean_wQuantileLoss is NaN"},
            f"model package {PACKAGE}: its evaluation failed (mean_wQuantileLoss is NaN): it cannot be approved or deployed",
        ),
        (
            {"mean_wQuantileLoss": "nan"},
            f"model package {PACKAGE}: no evaluated mean_wQuantileLoss (CustomerMetadataProperties has 'nan'): "
            "it cannot be approved or deployed",
        ),
    ],
)
def test_approving_a_failed_evaluation_is_refused_and_changes_nothing(metadata, message):
    sagemaker = client("sagemaker")
    stub = Stubber(sagemaker)
    stub.add_response("describe_model_package", package_description(**metadata), {"ModelPackageName": PACKAGE})
    with stub, pytest.raises(events.PackageRejected) as failure:  # no update_model_package stubbed: none made
        events.approve(sagemaker, PACKAGE, "alice")
    assert str(failure.value) == message


def test_approval_event_parsing():
    event = events.approval_event(PACKAGE, "deepar-models")
    body = {
        "detail-type": event["DetailType"],
        "source": event["Source"],
        "detail": __import__("json").loads(event["Detail"]),
    }
    assert events.parse_approval_event(body) == events.ApprovalEvent(PACKAGE, "deepar-models", "Approved")
    assert events.parse_approval_event('{"detail-type": "Scheduled Event", "detail": {}}') is None


# --- monitor: once ---------------------------------------------------------------------------------


def executions(*statuses: str) -> dict:
    return {
        "PipelineExecutionSummaries": [
            {
                "PipelineExecutionArn": f"arn:aws:sagemaker:eu-west-1:123456789012:pipeline/p/execution/{i}",
                "PipelineExecutionStatus": s,
                "StartTime": 100 - i,
            }
            for i, s in enumerate(statuses)
        ]
    }


def test_no_second_retrain_while_one_is_executing():
    sagemaker = client("sagemaker")
    stub = Stubber(sagemaker)
    stub.add_response(
        "list_pipeline_executions",
        executions("Executing", "Succeeded"),
        {"PipelineName": "deepar-build", "SortBy": "CreationTime", "SortOrder": "Descending", "MaxResults": 10},
    )
    ssm = client("ssm")
    with stub, Stubber(ssm):  # start_pipeline_execution (or any SSM call) is not stubbed: it would fail the test
        arn, started = monitor.start_retrain(
            sagemaker, "deepar-build", None, "breach", ssm=ssm, threshold_parameter="/p", window="w"
        )
    assert (arn, started) == ("arn:aws:sagemaker:eu-west-1:123456789012:pipeline/p/execution/0", False)


def test_retrain_starts_when_the_last_one_finished_and_registered():
    import json

    sagemaker, ssm = client("sagemaker"), client("ssm")
    stub, ssm_stub = Stubber(sagemaker), Stubber(ssm)
    stub.add_response("list_pipeline_executions", executions("Succeeded"), None)
    newest = {
        "ModelPackageSummaryList": [
            {"ModelPackageArn": PACKAGE, "CreationTime": 200, "ModelPackageStatus": "Completed"}
        ]
    }
    stub.add_response("list_model_packages", newest, None)
    gate = [{"Name": "AccuracyThreshold", "Type": "Float", "DefaultValue": 0.5}]
    stub.add_response("describe_pipeline", {"PipelineDefinition": json.dumps({"Parameters": gate, "Steps": []})})
    ssm_stub.add_response("get_parameter", {"Parameter": {"Name": "/d/mlops/t", "Value": "0.25", "Type": "String"}})
    stub.add_response("list_model_packages", newest, None)
    token = monitor.breach_token("deepar-build", "deepar-models", PACKAGE, "w")
    lock = f"/d/mlops/retrains/{token}"
    ssm_stub.add_response("put_parameter", {"Version": 1}, {"Name": lock, "Value": ANY, "Type": "String",
                                                           "Overwrite": False, "Description": ANY})  # fmt: skip
    stub.add_client_error(
        "describe_model_package_group", "ValidationException", "Model Package Group deepar-models does not exist"
    )  # no production model: the pipeline's own warm-start choice stands
    stub.add_response(
        "start_pipeline_execution",
        {"PipelineExecutionArn": "arn:new"},
        {
            "PipelineName": "deepar-build",
            "PipelineExecutionDescription": "breach; gate mean_wQuantileLoss <= 0.25 (SSM parameter /d/mlops/t); "
            "no approved model in deepar-models: the pipeline's own warm-start choice stands",
            "PipelineExecutionDisplayName": "monitor-retrain",
            "PipelineParameters": [{"Name": "AccuracyThreshold", "Value": "0.25"}],
            "ClientRequestToken": token,
        },
    )
    ssm_stub.add_response(
        "put_parameter", {"Version": 2}, {"Name": lock, "Value": "arn:new", "Type": "String", "Overwrite": True}
    )
    with stub, ssm_stub:
        assert monitor.start_retrain(
            sagemaker, "deepar-build", "deepar-models", "breach", ssm=ssm, threshold_parameter="/d/mlops/t", window="w"
        ) == ("arn:new", True)
        stub.assert_no_pending_responses()
        ssm_stub.assert_no_pending_responses()


def _train_definition(num_cells: str) -> dict:
    """A stored pipeline definition as the SDK writes it: hyperparameters joined from parameters."""
    joined = {"Std:Join": {"On": "", "Values": [{"Get": "Parameters.NumCells"}]}}
    return {
        "Version": "2020-12-01",
        "Parameters": [
            {"Name": "NumCells", "Type": "Integer", "DefaultValue": int(num_cells)},
            {"Name": "AccuracyThreshold", "Type": "Float", "DefaultValue": 0.5},
        ],
        "Steps": [
            {
                "Name": "Train",
                "Type": "Training",
                "Arguments": {
                    "HyperParameters": {"num_cells": joined, "prediction_length": "24"},
                    "InputDataConfig": [
                        {"ChannelName": "train", "DataSource": {"S3DataSource": {"S3Uri": "s3://b/t"}}}
                    ],
                },
            }
        ],
    }


@pytest.mark.parametrize("pipeline_cells, used", [("40", True), ("16", False)])
def test_a_monitor_retrain_warm_starts_from_the_production_model(pipeline_cells, used):
    """build fixes its warm-start choice into the definition; a retrain the monitor starts later must
    use the model in production now (unless its network shape differs from the Train step's)."""
    import json

    from moto import mock_aws

    from mlops import registry

    with mock_aws():
        sagemaker = client("sagemaker")
        sagemaker.create_pipeline(
            PipelineName="deepar-build",
            PipelineDefinition=json.dumps(_train_definition(pipeline_cells)),
            RoleArn="arn:aws:iam::123456789012:role/R",
        )
        registry.ensure_group(sagemaker, "deepar-models")
        shape, metrics = {"num_cells": "40", "prediction_length": "24"}, {"mean_wQuantileLoss": 0.2}
        packages = [
            registry.register(
                sagemaker, "deepar-models", "i", f"s3://b/v{v}/model.tar.gz", metrics, hyperparameters=shape
            )
            for v in (1, 2, 3)
        ]
        for approved in packages[:2]:  # v3 stays pending: v2 is production
            events.approve(sagemaker, approved, "test")
        prod = packages[1]

        ssm = client("ssm")
        ssm.put_parameter(Name="/d/mlops/t", Value="0.4", Type="String")
        arn, started = monitor.start_retrain(
            sagemaker, "deepar-build", "deepar-models", "breach", ssm=ssm, threshold_parameter="/d/mlops/t", window="w"
        )

        assert started
        stored = json.loads(sagemaker.describe_pipeline(PipelineName="deepar-build")["PipelineDefinition"])
        channels = {c["ChannelName"]: c for c in stored["Steps"][0]["Arguments"]["InputDataConfig"]}
        description = sagemaker.describe_pipeline_execution(PipelineExecutionArn=arn)["PipelineExecutionDescription"]
    if used:
        assert set(channels) == {"train", "model"}
        assert channels["model"]["DataSource"]["S3DataSource"]["S3Uri"] == "s3://b/v2/model.tar.gz"
        assert channels["model"]["ContentType"] == "application/x-sagemaker-model"
        assert description == (
            "breach; gate mean_wQuantileLoss <= 0.4 (SSM parameter /d/mlops/t); "
            f"warm start from s3://b/v2/model.tar.gz (model package {prod})"
        )
    else:
        assert set(channels) == {"train"}
        assert "another network shape (num_cells 40 -> 16): not used" in description
