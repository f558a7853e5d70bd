"""`mlops build --warm-start-model` in process (moto in process, botocore's Stubber for paging): auto
finds the production model (the newest Approved package, never a newer pending or rejected one); no
approved package, ``none``, an explicit URI; a non-s3 URI without --local is an error naming the flag;
the local model channel. The pipeline definition's ``model`` channel is checked through the real
entrypoint in tests/test_mlops_build.py (the SageMaker SDK lives in .venv-sdk only)."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber

from mlops import registry
from mlops.__main__ import parser as mlops_parser
from mlops.build import (
    AUTO,
    NONE,
    STARTED,
    BuildResult,
    BuildSettings,
    WarmStart,
    check_settings,
    describe,
    local_model_channel,
    network_hyperparameters,
    resolve_warm_start,
    settings_from,
)
from mlops.events import approve
from sagemaker_deepar.errors import UserError

pytestmark = pytest.mark.unit

GROUP = "warm-group"
ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"


@pytest.fixture
def sagemaker(offline_aws):
    return boto3.client("sagemaker", region_name="us-east-1")


def package(sagemaker, version: int, status: str) -> str:
    arn = registry.register(sagemaker, GROUP, "img:1", f"s3://models/v{version}/model.tar.gz", {"RMSE": 1.0})
    if status != registry.PENDING:
        sagemaker.update_model_package(ModelPackageArn=arn, ModelApprovalStatus=status)
    return arn


def settings(**overrides) -> BuildSettings:
    base = dict(
        lake_uri="s3://lake/curated/", image="123456789012.dkr.ecr.us-east-1.amazonaws.com/deepar:1", role=ROLE,
        bucket="mlops-artifacts", model_package_group=GROUP, pipeline_name="warm-test",
    )  # fmt: skip
    return BuildSettings(**{**base, **overrides})


def test_auto_is_the_newest_approved_package(sagemaker):
    package(sagemaker, 1, "Approved")
    production = package(sagemaker, 2, "Approved")
    package(sagemaker, 3, registry.PENDING)  # newer, not approved: never production
    package(sagemaker, 4, "Rejected")
    warm = resolve_warm_start(settings(), sagemaker)
    assert (warm.model, warm.package_arn) == ("s3://models/v2/model.tar.gz", production)
    assert warm.note == f"warm start from s3://models/v2/model.tar.gz (model package {production})"
    result = BuildResult(STARTED, 0.5, execution_arn="arn:x", warm_start=warm.note)
    assert describe(result).splitlines() == ["pipeline execution started: arn:x (threshold 0.5)", warm.note]


def test_auto_without_an_approved_package_starts_cold(sagemaker):
    assert resolve_warm_start(settings(), sagemaker) == WarmStart(
        None, None, f"cold start: no approved model in {GROUP}"
    )
    package(sagemaker, 1, registry.PENDING)  # the group exists now
    package(sagemaker, 2, "Rejected")
    assert resolve_warm_start(settings(), sagemaker) == WarmStart(
        None, None, f"cold start: no approved model in {GROUP}"
    )


def test_none_starts_cold_and_an_explicit_uri_is_used_as_given(sagemaker):
    package(sagemaker, 1, "Approved")
    none = WarmStart(None, None, "cold start: --warm-start-model none")
    assert resolve_warm_start(settings(warm_start_model=NONE), sagemaker) == none
    assert resolve_warm_start(settings(warm_start_model=None), sagemaker) == none  # library callers' "no model"
    explicit = resolve_warm_start(settings(warm_start_model="s3://elsewhere/model.tar.gz"), sagemaker)
    assert (explicit.model, explicit.package_arn) == ("s3://elsewhere/model.tar.gz", None)


def test_auto_on_sagemaker_skips_an_approved_model_outside_s3(sagemaker):
    arn = registry.register(sagemaker, GROUP, "img:1", "file:///tmp/model.tar.gz", {"RMSE": 1.0})
    sagemaker.update_model_package(ModelPackageArn=arn, ModelApprovalStatus="Approved")
    assert resolve_warm_start(settings(), sagemaker).note.startswith(f"cold start: model package {arn} holds file://")
    assert resolve_warm_start(settings(local=True), sagemaker).model == "file:///tmp/model.tar.gz"


def test_production_model_pages_through_the_newest_approved_first():
    client = boto3.client(
        "sagemaker", region_name="us-east-1", aws_access_key_id="t", aws_secret_access_key="t"
    )  # fmt: skip
    arn = "arn:aws:sagemaker:us-east-1:123456789012:model-package/g/7"
    query = {"ModelPackageGroupName": "g", "ModelApprovalStatus": "Approved", "SortBy": "CreationTime"}
    query["SortOrder"] = "Descending"
    summary = {"ModelPackageArn": arn, "ModelApprovalStatus": "Approved", "CreationTime": 0, "ModelPackageName": "g"}
    summary["ModelPackageStatus"] = "Completed"
    with Stubber(client) as stub:
        stub.add_response("describe_model_package_group", _group("g"), {"ModelPackageGroupName": "g"})
        stub.add_response("list_model_packages", {"ModelPackageSummaryList": [], "NextToken": "p2"}, query)
        stub.add_response("list_model_packages", {"ModelPackageSummaryList": [summary]}, {**query, "NextToken": "p2"})
        containers = [{"Image": "i", "ModelDataUrl": "s3://m/7/model.tar.gz"}]
        described = {
            "ModelPackageName": "g",
            "ModelPackageArn": arn,
            "CreationTime": 0,
            "ModelPackageStatus": "Completed",
        }
        described["ModelPackageStatusDetails"] = {"ValidationStatuses": []}
        described["InferenceSpecification"] = {"Containers": containers, "SupportedContentTypes": []}
        described["InferenceSpecification"]["SupportedResponseMIMETypes"] = []
        stub.add_response("describe_model_package", described, {"ModelPackageName": arn})
        assert registry.production_model(client, "g") == (arn, "s3://m/7/model.tar.gz", {})
        stub.assert_no_pending_responses()


def _group(name: str) -> dict:
    arn = f"arn:aws:sagemaker:us-east-1:123456789012:model-package-group/{name}"
    return {
        "ModelPackageGroupName": name, "ModelPackageGroupArn": arn, "CreationTime": 0, "CreatedBy": {},
        "ModelPackageGroupStatus": "Completed",
    }  # fmt: skip


def test_the_flag_defaults_to_auto_and_a_non_s3_uri_needs_local(tmp_path):
    args = mlops_parser().parse_args(["build", "--lake", "s3://lake/x/"])
    assert settings_from(args).warm_start_model == AUTO
    with pytest.raises(UserError, match=r"^--warm-start-model file:///m/model.tar.gz: SageMaker reads the model"):
        check_settings(settings(warm_start_model="file:///m/model.tar.gz"))
    check_settings(settings(warm_start_model="file:///m/model.tar.gz", local=True))
    check_settings(settings(warm_start_model="s3://m/model.tar.gz"))


def test_local_channel_is_a_folder_holding_only_the_model(tmp_path):
    output = tmp_path / "output"
    output.mkdir()
    (output / "model.tar.gz").write_bytes(b"model")
    (output / "output.tar.gz").write_bytes(b"other")
    channel = local_model_channel(f"file://{output / 'model.tar.gz'}", tmp_path / "warm")
    assert channel == f"file://{tmp_path / 'warm'}" and [p.name for p in (tmp_path / "warm").iterdir()] == [
        "model.tar.gz"
    ]
    assert local_model_channel(str(output), tmp_path / "unused") == f"file://{output}"
    assert local_model_channel("s3://m/model.tar.gz", tmp_path / "unused") == "s3://m/model.tar.gz"
    with pytest.raises(UserError, match=r"^--warm-start-model .*missing.tar.gz: no such file or folder"):
        local_model_channel(str(Path(tmp_path / "missing.tar.gz")), tmp_path / "unused")


def shaped(sagemaker, **hyperparameters) -> str:
    arn = registry.register(
        sagemaker, GROUP, "img:1", "s3://models/shaped/model.tar.gz", {"mean_wQuantileLoss": 0.25},
        hyperparameters=network_hyperparameters(settings(**hyperparameters)),
    )  # fmt: skip
    approve(sagemaker, arn, "test")  # as deploy does: moto's update clears metadata not re-sent
    return arn


def test_registration_records_the_network_shape(sagemaker):
    arn = shaped(sagemaker, num_cells=8)
    metadata = sagemaker.describe_model_package(ModelPackageName=arn)["CustomerMetadataProperties"]
    assert metadata == {
        "mean_wQuantileLoss": "0.25", "hyperparameters.time_freq": "H", "hyperparameters.prediction_length": "24",
        "hyperparameters.context_length": "72", "hyperparameters.num_cells": "8", "hyperparameters.num_layers": "2",
    }  # fmt: skip
    assert registry.production_model(sagemaker, GROUP).hyperparameters["num_cells"] == "8"


def test_auto_starts_cold_when_the_production_model_has_another_network_shape(sagemaker):
    arn = shaped(sagemaker, num_cells=8, time_freq="1H")
    assert (
        resolve_warm_start(settings(num_cells=8, time_freq="h"), sagemaker).model == "s3://models/shaped/model.tar.gz"
    )
    assert resolve_warm_start(settings(num_cells=16, context_length=48), sagemaker) == WarmStart(
        None,
        None,
        f"cold start: model package {arn} has another network shape (context_length 72 -> 48, num_cells 8 -> 16)",
    )


def test_every_command_module_must_import(monkeypatch):
    import mlops.__main__ as entry

    monkeypatch.setitem(entry.COMMANDS, "nosuch", "a command whose module is missing")
    with pytest.raises(ModuleNotFoundError, match="mlops.nosuch"):
        entry.parser()
