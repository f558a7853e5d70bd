"""mlops/ in process: the SSM threshold (get-or-create, unusable values), registration with metrics
(moto in process), the evaluate step's scores and its clear failures, evaluation.json parsing."""

from __future__ import annotations

import json

import boto3
import numpy as np
import pytest

from mlops import registry
from mlops.steps import evaluate as evaluate_step
from sagemaker_deepar.errors import UserError
from sagemaker_deepar.training.metrics import score_forecasts

pytestmark = pytest.mark.unit


@pytest.fixture
def aws(offline_aws):
    return lambda service: boto3.client(service, region_name="us-east-1")


def test_threshold_is_created_with_its_default_then_read(aws):
    ssm = aws("ssm")
    assert registry.threshold(ssm, "/t/wql", default=0.25) == 0.25
    assert ssm.get_parameter(Name="/t/wql")["Parameter"]["Value"] == "0.25"
    ssm.put_parameter(Name="/t/wql", Value="0.125", Overwrite=True, Type="String")
    assert registry.threshold(ssm, "/t/wql", default=0.25) == 0.125


@pytest.mark.parametrize("value", ["ten percent", "nan", "-1", "0", "inf"])
def test_unusable_threshold_names_the_parameter(aws, value):
    ssm = aws("ssm")
    ssm.put_parameter(Name="/t/bad", Value=value, Type="String")
    with pytest.raises(UserError, match=r"^SSM parameter /t/bad: .* is not a usable threshold: expected a positive"):
        registry.threshold(ssm, "/t/bad")


def test_missing_threshold_without_create_is_an_error(aws):
    with pytest.raises(UserError, match="SSM parameter /t/none: missing"):
        registry.threshold(aws("ssm"), "/t/none", create=False)


def test_register_creates_the_group_and_a_pending_version_with_metrics(aws):
    sagemaker = aws("sagemaker")
    metrics = {"mean_wQuantileLoss": 0.1234, "RMSE": 5.5}
    first = registry.register(sagemaker, "g", "img:1", "s3://b/model.tar.gz", metrics, evaluation_uri="s3://b/e.json")
    second = registry.register(sagemaker, "g", "img:1", "s3://b/model2.tar.gz", metrics)
    assert first.endswith("/g/1") and second.endswith("/g/2")  # one group, versions in order
    package = sagemaker.describe_model_package(ModelPackageName=first)
    assert package["ModelApprovalStatus"] == "PendingManualApproval"
    assert package["CustomerMetadataProperties"] == {"mean_wQuantileLoss": "0.1234", "RMSE": "5.5"}
    assert package["ModelMetrics"]["ModelQuality"]["Statistics"]["S3Uri"] == "s3://b/e.json"


def series(values, item="d1/ozone") -> dict:
    return {"start": "2024-01-01 00:00:00", "target": values, "item_id": item}


def forecast(mean, spread=1.0) -> dict:
    mean = np.asarray(mean, dtype=float)
    return {
        "mean": mean.tolist(),
        "quantiles": {"0.1": (mean - spread).tolist(), "0.5": mean.tolist(), "0.9": (mean + spread).tolist()},
    }


def test_evaluate_scores_the_held_out_points_as_the_metrics_module_does():
    tests = [
        ("test.json:1", series([1.0, 2.0, 3.0, 4.0, 5.0])),
        ("test.json:2", series([2.0, 2.0, 4.0, 6.0, 8.0], "d2")),
    ]
    forecasts = [("train.json.out:1", forecast([3.5, 5.5])), ("train.json.out:2", forecast([5.0, 9.0]))]
    document = evaluate_step.evaluate(tests, forecasts, prediction_length=2, freq="H")
    actuals, means = np.array([[4.0, 5.0], [6.0, 8.0]]), np.array([[3.5, 5.5], [5.0, 9.0]])
    expected = score_forecasts(actuals, means, {0.1: means - 1, 0.5: means, 0.9: means + 1})
    assert document["regression_metrics"]["mean_wQuantileLoss"]["value"] == pytest.approx(
        expected["mean_wQuantileLoss"]
    )
    assert document["regression_metrics"]["RMSE"]["value"] == pytest.approx(expected["RMSE"])
    assert [row["series"] for row in document["per_series"]] == ["d1/ozone (train.json.out:1)", "d2 (train.json.out:2)"]


def test_evaluate_that_yields_nan_is_a_clear_error():
    tests = [("test.json:1", series([1.0, 2.0, 0.0, 0.0]))]  # the held-out points are all zero: wQL is 0/0
    with pytest.raises(ValueError, match=r"yields mean_wQuantileLoss=nan.*all missing or all zero"):
        evaluate_step.evaluate(tests, [("train.json.out:1", forecast([0.5, 0.5]))], prediction_length=2, freq="H")


def test_evaluate_with_a_missing_forecast_line_names_the_counts():
    tests = [("test.json:1", series([1.0, 2.0, 3.0])), ("test.json:2", series([1.0, 2.0, 3.0]))]
    with pytest.raises(ValueError, match="1 forecasts for 2 test series"):
        evaluate_step.evaluate(tests, [("train.json.out:1", forecast([3.0]))], prediction_length=1, freq="H")


def test_evaluate_step_writes_evaluation_json_and_fails_in_one_line(tmp_path, capsys):
    (tmp_path / "test").mkdir()
    (tmp_path / "forecasts").mkdir()
    (tmp_path / "test" / "test.json").write_text(json.dumps(series([1.0, 2.0, 3.0, 4.0])) + "\n")
    (tmp_path / "forecasts" / "train.json.out").write_text(json.dumps(forecast([2.5, 4.5])) + "\n")
    args = [
        "--test",
        str(tmp_path / "test"),
        "--forecasts",
        str(tmp_path / "forecasts"),
        "--output",
        str(tmp_path / "out"),
    ]
    assert evaluate_step.main([*args, "--prediction-length", "2"]) == 0
    written = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert np.isfinite(written["regression_metrics"]["mean_wQuantileLoss"]["value"])
    assert evaluate_step.main([*args, "--prediction-length", "3"]) == 1  # the forecast has 2 points
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: ")


def test_parse_evaluation_rejects_nan_and_malformed_documents():
    from mlops.build import parse_evaluation

    good = {"regression_metrics": {"mean_wQuantileLoss": {"value": 0.2}, "RMSE": {"value": 3.0}}}
    assert parse_evaluation(json.dumps(good).encode(), "e.json") == (0.2, 3.0)
    good["regression_metrics"]["RMSE"]["value"] = float("nan")
    with pytest.raises(UserError, match="e.json: mean_wQuantileLoss 0.2, RMSE nan: the evaluation is not a number"):
        parse_evaluation(json.dumps(good).encode(), "e.json")
    with pytest.raises(UserError, match="e.json: not an evaluation document"):
        parse_evaluation(b'{"metrics": {}}', "e.json")
