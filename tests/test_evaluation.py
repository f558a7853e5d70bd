"""evaluation/: the SageMaker workflow commands, end to end in local mode against the image, plus the
AWS-side request construction (tests/sdk/requests_check.py, botocore Stubber, in .venv-sdk).

The local run: prepare -> train A and B (Estimator, local mode) -> deploy A -> invoke (report + PNG)
-> blue/green update to B -> invoke -> delete -> batch transform; no AWS traffic (a guard refuses any
non-loopback connection); the invoke report is checked against GluonTS's Evaluator.
"""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

from .conftest import IMAGE, REPO, SDK_PYTHON, containers_of, free_port, run_nested_pytest

PREDICTION_LENGTH = 12
SDK_ENV = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}


def run_guarded(python, command: str, workdir, args: list[str], timeout: float = 1200) -> tuple[dict, str]:
    """evaluation/<command>.py's main() in the SDK's env, offline and under the network guard."""
    result = subprocess.run(
        [str(python), "-m", "tests.sdk.run_guarded", command, "--workdir", str(workdir), "--", *args],
        cwd=REPO,
        env=SDK_ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("SUMMARY ")]
    assert result.returncode == 0 and lines, (result.stdout[-4000:], result.stderr[-4000:])
    summary = json.loads(lines[0].removeprefix("SUMMARY "))
    assert summary["network_violations"] == [] and summary["status"] == 0
    return summary, result.stdout


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    if not SDK_PYTHON.exists() or subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode:
        pytest.skip("needs .venv-sdk and the Docker image")
    work = tmp_path_factory.mktemp("workflow")
    before = containers_of(IMAGE)
    args = [
        "--local",
        "--workdir",
        str(work),
        "--serving-port",
        str(free_port()),
        "--image",
        IMAGE,
        "--prediction-length",
        str(PREDICTION_LENGTH),
        "--sensors",
        "1",
        "--days",
        "10",
        "--series",
        "4",
        "--summary",
        str(work / "summary.json"),
        "--hp=epochs=2",
        "--hp=num_batches_per_epoch=3",
        "--hp=num_cells=8",
        "--hp=num_layers=1",
        "--hp=context_length=24",
    ]
    summary, stdout = run_guarded(SDK_PYTHON, "workflow", work, args)
    summary["workflow"] = summary.pop("result")
    return {"work": work, "summary": summary, "stdout": stdout, "containers_before": before}


def test_workflow_runs_offline_and_cleans_up(workflow):
    summary = workflow["summary"]
    assert summary["network_violations"] == [] and summary["status"] == 0
    assert containers_of(IMAGE) - workflow["containers_before"] == set()  # every job's and endpoint's container
    assert summary["workflow"]["removed_local_containers"]  # ... was there, and is gone
    network = subprocess.run(["docker", "network", "inspect", "sagemaker-local"], capture_output=True)
    assert network.returncode != 0


def test_prepare_splits_channels(workflow):
    channels = workflow["summary"]["workflow"]["prepare"]
    test = [json.loads(line) for line in open(channels["test"].removeprefix("file://") + "/test.json")]
    train = [json.loads(line) for line in open(channels["train"].removeprefix("file://") + "/train.json")]
    assert len(train) == len(test) == 5
    assert all(tr["target"] == te["target"][:-PREDICTION_LENGTH] for tr, te in zip(train, test))


def test_train_reports_artifact_and_metrics(workflow):
    models = workflow["summary"]["workflow"]["train"]
    assert len(models) == 2 and models[0]["model_data"] != models[1]["model_data"]
    for model in models:
        assert os.path.exists(model["model_data"].removeprefix("file://"))
        assert {"train:final_loss", "test:RMSE", "test:mean_wQuantileLoss"} <= set(model["metrics"])
        assert all(np.isfinite(v) for v in model["metrics"].values())
    assert "test:mean_wQuantileLoss: " in workflow["stdout"] and "model artifact: file://" in workflow["stdout"]


def test_invoke_reports_accuracy_and_writes_plots(workflow):
    for key in ("invoke_a", "invoke_b"):
        report = workflow["summary"]["workflow"][key]
        assert [row["series"] for row in report["series"]] == [f"series-{i}" for i in range(4)]
        assert len(report["plots"]) == 4
        for plot in report["plots"]:
            with open(plot, "rb") as f:
                assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert workflow["stdout"].count("accuracy over 4 series x 12 steps") == 3  # A, B, batch


def test_blue_green_update_serves_model_b_then_delete_removes_everything(workflow):
    flow = workflow["summary"]["workflow"]
    update = flow["update"]
    assert update["EndpointStatus"] == "InService"
    assert flow["invoke_a"]["overall"] != flow["invoke_b"]["overall"]  # a different model answered
    endpoint, config, *models = flow["delete"]["deleted"]
    assert endpoint == "deepar-eval" and config == update["EndpointConfigName"] and len(models) == 1
    assert "endpoint deepar-eval: deleted" in workflow["stdout"]


def test_batch_transform_answers_every_line(workflow):
    batch = workflow["summary"]["workflow"]["batch"]
    assert batch["input_lines"] == batch["output_lines"] == 4
    assert len(batch["series"]) == 4


def test_invoke_report_matches_gluonts_evaluator(workflow):
    """The report's RMSE and mean_wQuantileLoss equal GluonTS's Evaluator on the same forecasts."""
    import pandas as pd
    from gluonts.model.forecast import QuantileForecast

    from sagemaker_deepar.training.metrics import evaluate_forecasts

    written = json.loads((workflow["work"] / "invoke-b.json").read_text())
    records = [json.loads(line) for line in open(workflow["work"] / "eval-data.json")][:4]
    entries, forecasts = [], []
    for record, prediction in zip(records, written["predictions"]):
        target = np.array([np.nan if v in (None, "NaN") else v for v in record["target"]], dtype=float)
        entries.append({"start": pd.Period(record["start"], freq="h"), "target": target})
        start = pd.Period(record["start"], freq="h") + len(target) - PREDICTION_LENGTH
        keys = ["0.1", "0.5", "0.9", "mean"]
        arrays = np.array([prediction["quantiles"][k] for k in keys[:3]] + [prediction["mean"]])
        forecasts.append(QuantileForecast(arrays, start_date=start, forecast_keys=keys))
    expected = evaluate_forecasts(entries, forecasts, [0.1, 0.5, 0.9])
    reported = written["overall"]
    assert reported["RMSE"] == pytest.approx(expected["RMSE"], rel=1e-6)
    assert reported["mean_wQuantileLoss"] == pytest.approx(expected["mean_wQuantileLoss"], rel=1e-6)


def test_request_construction_for_tune_deploy_and_errors():
    """tests/sdk/requests_check.py under pytest in .venv-sdk: requests checked with botocore's Stubber."""
    if not SDK_PYTHON.exists():
        pytest.skip("needs .venv-sdk")
    run_nested_pytest(SDK_PYTHON, str(REPO / "tests/sdk/requests_check.py"), SDK_ENV)
