"""The real SageMaker Python SDK v2 in local mode drives the image end to end (tests/sdk/v2_local_mode.py).

Estimator.fit on file:// train and test channels -> deploy -> Predictor.predict with the JSON
serializer -> boto3-shaped invoke_endpoint -> Transformer batch transform (MultiRecord, SplitType
Line, AssembleWith Line) -> delete. No AWS traffic (fake credentials, telemetry opt-out, a
connection guard). SDK v3: evaluation.train_v3 trains in v3's local-container mode and builds
the CreateTrainingJob request. Skipped without Docker, docker-compose or the SDK envs on a laptop;
fails in CI.
"""

from __future__ import annotations

import json
import math
import os
import subprocess

import pytest

from .conftest import IMAGE, REPO, SDK_PYTHON, free_port


def test_sdk_v2_local_mode_fit_deploy_predict_invoke_transform(sdk_ready, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    result = subprocess.run(
        [
            str(SDK_PYTHON),
            "-m",
            "tests.sdk.v2_local_mode",
            "--image",
            IMAGE,
            "--workdir",
            str(tmp_path),
            "--port",
            str(free_port()),
        ],
        cwd=REPO,
        env={**env, "SAGEMAKER_SUPPRESS_V2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    [line] = [line for line in result.stdout.splitlines() if line.startswith("SUMMARY ")]
    summary = json.loads(line.removeprefix("SUMMARY "))

    assert summary["network_violations"] == []
    assert {"deepar-metadata.json", "predictor/predictor.json", "predictor/prediction-net-state.pt"} <= set(
        summary["model_files"]
    )
    assert set(summary["test_metrics"]) == {
        "RMSE",
        "mean_wQuantileLoss",
        "wQuantileLoss[0.1]",
        "wQuantileLoss[0.5]",
        "wQuantileLoss[0.9]",
    }
    hp = summary["hyperparameters"]  # the SDK sent them as strings; they arrived typed and complete
    assert (hp["prediction_length"], hp["test_quantiles"], hp["early_stopping_patience"]) == (6, [0.1, 0.5, 0.9], 5)
    for answer in (summary["predict"], summary["invoke_endpoint"]):
        predictions = answer["predictions"]
        assert len(predictions) == 2
        assert all(
            set(p) == {"mean", "quantiles"} and len(p["mean"]) == 6 and list(p["quantiles"]) == ["0.5"]
            for p in predictions
        )
    batch = summary["batch_output"]
    assert len(batch) == summary["batch_input_lines"] == 5
    assert [b.get("item_id") for b in batch[:4]] == ["s0", "s1", "s2", "s3"] and all(
        len(b["mean"]) == 6 for b in batch[:4]
    )
    assert batch[4]["error"].startswith("line 5: target[1]: 'x' is not a number")


def test_sdk_v3_model_trainer_trains_in_local_container_mode(sdk_ready, tmp_path):
    """evaluation.train_v3 --local: v3 starts the container with no command; the image trains."""
    from .test_evaluation import run_guarded

    python = REPO / ".venv-sdk3" / "bin" / "python"
    if not python.exists():
        pytest.skip("not available: .venv-sdk3")
    train = tmp_path / "data" / "train"
    train.mkdir(parents=True)
    train.joinpath("train.json").write_text(
        "".join(
            json.dumps({"start": "2024-01-01 00:00:00", "target": [20 + 5 * math.sin(t / 4) + i for t in range(60)]})
            + "\n"
            for i in range(3)
        )
    )
    summary, stdout = run_guarded(
        python,
        "train_v3",
        tmp_path,
        [
            "--local",
            "--image",
            IMAGE,
            "--train",
            f"file://{train}",
            "--local-root",
            str(tmp_path / "root"),
            "--quiet",
            "--hp=prediction_length=6",
            "--hp=context_length=12",
            "--hp=epochs=1",
            "--hp=num_batches_per_epoch=2",
            "--hp=num_cells=8",
            "--hp=num_layers=1",
            "--hp=backend=mxnet",
            "--hp=test_quantiles=[0.1, 0.9]",
        ],
    )
    result = summary["result"]
    assert result["model_data"].endswith("compressed_artifacts/model.tar.gz")
    assert os.path.exists(result["model_data"].removeprefix("file://"))
    metadata = json.loads((tmp_path / "root" / "model" / "deepar-metadata.json").read_text())
    assert metadata["backend"] == "mxnet"  # hyperparameters arrived as v3 writes them (JSON)
    assert metadata["hyperparameters"]["test_quantiles"] == [0.1, 0.9]
    assert result["metrics"]["train:final_loss"] == metadata["train"]["final_loss"]
    assert "model artifact: file://" in stdout


def test_sdk_v3_dry_run_request_for_sagemaker(tmp_path):
    """evaluation.train_v3 --dry-run: the CreateTrainingJob request v3 would send (spot, checkpoints, metrics)."""
    from .test_evaluation import run_guarded

    python = REPO / ".venv-sdk3" / "bin" / "python"
    if not python.exists():
        pytest.skip("not available: .venv-sdk3")
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/sagemaker-deepar:1"
    summary, _ = run_guarded(
        python,
        "train_v3",
        tmp_path,
        [
            "--dry-run",
            "--image",
            image,
            "--role",
            "arn:aws:iam::123456789012:role/SageMakerRole",
            "--region",
            "us-east-1",
            "--train",
            "s3://b/d/train",
            "--test",
            "s3://b/d/test",
            "--output-path",
            "s3://b/out",
            "--spot",
            "--checkpoint-s3-uri",
            "s3://b/ckpt",
            "--max-run",
            "3600",
            "--hp",
            "epochs=3",
        ],
    )
    request = summary["result"]["request"]
    assert request["AlgorithmSpecification"]["TrainingImage"] == image
    assert {m["Name"] for m in request["AlgorithmSpecification"]["MetricDefinitions"]} >= {
        "test:RMSE",
        "test:mean_wQuantileLoss",
        "train:final_loss",
        "train:loss",
    }
    hp = request["HyperParameters"]
    assert hp["epochs"] == "3" and hp["time_freq"] == "H" and json.loads(hp["test_quantiles"]) == [0.1, 0.5, 0.9]
    assert [c["ChannelName"] for c in request["InputDataConfig"]] == ["train", "test"]
    assert request["EnableManagedSpotTraining"] is True
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200}
    assert request["CheckpointConfig"]["S3Uri"] == "s3://b/ckpt"
    assert request["OutputDataConfig"]["S3OutputPath"] == "s3://b/out"
