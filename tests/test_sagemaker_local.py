"""The real SageMaker Python SDK v2 in local mode drives the image end to end (tests/sdk/v2_local_mode.py).

Estimator.fit on file:// train and test channels -> deploy -> Predictor.predict with the JSON
serializer -> boto3-shaped invoke_endpoint -> Transformer batch transform (MultiRecord, SplitType
Line, AssembleWith Line) -> delete. No AWS traffic (fake credentials, telemetry opt-out, a
connection guard). Skipped without Docker, docker-compose or .venv-sdk on a laptop; fails in CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from .conftest import REPO, free_port

IMAGE = os.environ.get("DEEPAR_IMAGE", "sagemaker-deepar:latest")
SDK_PYTHON = REPO / ".venv-sdk" / "bin" / "python"


def containers_of(image: str) -> set[str]:
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"ancestor={image}"], capture_output=True, text=True)
    return set(out.stdout.split())


@pytest.fixture
def sdk_ready():
    missing = [what for what, ok in [
        ("a Docker engine with the image", subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True).returncode == 0
         if shutil.which("docker") else False),
        ("docker-compose", shutil.which("docker-compose") is not None),
        (".venv-sdk (scripts/bootstrap.sh)", SDK_PYTHON.exists()),
    ] if not ok]
    if missing:
        if os.environ.get("CI"):
            pytest.fail(f"required in CI: {', '.join(missing)}")
        pytest.skip(f"not available: {', '.join(missing)}")
    before = containers_of(IMAGE)
    yield
    leftover = containers_of(IMAGE) - before  # local mode leaves its containers and network behind
    if leftover:
        subprocess.run(["docker", "rm", "-f", *leftover], capture_output=True)
    subprocess.run(["docker", "network", "rm", "sagemaker-local"], capture_output=True)


def test_sdk_v2_local_mode_fit_deploy_predict_invoke_transform(sdk_ready, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    result = subprocess.run([str(SDK_PYTHON), str(REPO / "tests/sdk/v2_local_mode.py"), "--image", IMAGE,
                             "--workdir", str(tmp_path), "--port", str(free_port())],
                            env={**env, "SAGEMAKER_SUPPRESS_V2_WARNING": "1"}, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    [line] = [line for line in result.stdout.splitlines() if line.startswith("SUMMARY ")]
    summary = json.loads(line.removeprefix("SUMMARY "))

    assert summary["network_violations"] == []
    assert {"deepar-metadata.json", "predictor/predictor.json", "predictor/prediction-net-state.pt"} <= set(summary["model_files"])
    assert set(summary["test_metrics"]) == {"RMSE", "mean_wQuantileLoss", "wQuantileLoss[0.1]", "wQuantileLoss[0.5]",
                                            "wQuantileLoss[0.9]"}
    hp = summary["hyperparameters"]  # the SDK sent them as strings; they arrived typed and complete
    assert (hp["prediction_length"], hp["test_quantiles"], hp["early_stopping_patience"]) == (6, [0.1, 0.5, 0.9], 5)
    for answer in (summary["predict"], summary["invoke_endpoint"]):
        predictions = answer["predictions"]
        assert len(predictions) == 2
        assert all(set(p) == {"mean", "quantiles"} and len(p["mean"]) == 6 and list(p["quantiles"]) == ["0.5"]
                   for p in predictions)
    batch = summary["batch_output"]
    assert len(batch) == summary["batch_input_lines"] == 5
    assert [b.get("item_id") for b in batch[:4]] == ["s0", "s1", "s2", "s3"] and all(len(b["mean"]) == 6 for b in batch[:4])
    assert batch[4]["error"].startswith("line 5: target[1]: 'x' is not a number")


def test_sdk_v3_model_trainer_trains_in_local_container_mode(sdk_ready, tmp_path):
    python = REPO / ".venv-sdk3" / "bin" / "python"
    if not python.exists():
        if os.environ.get("CI"):
            pytest.fail("required in CI: .venv-sdk3 (scripts/bootstrap.sh)")
        pytest.skip("not available: .venv-sdk3")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    result = subprocess.run([str(python), str(REPO / "tests/sdk/v3_model_trainer.py"), "--image", IMAGE,
                             "--workdir", str(tmp_path)], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.stdout[-3000:], result.stderr[-3000:])
    [line] = [line for line in result.stdout.splitlines() if line.startswith("SUMMARY ")]
    summary = json.loads(line.removeprefix("SUMMARY "))
    assert summary["network_violations"] == [] and summary["model_tar"]
    assert summary["metadata"]["backend"] == "mxnet"  # hyperparameters arrived as v3 writes them (JSON)
    assert summary["metadata"]["hyperparameters"]["test_quantiles"] == [0.1, 0.9]
