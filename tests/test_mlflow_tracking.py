"""mlflow tracking from ``container/train``: a real ``mlflow server`` on SQLite (``python -m mlflow_local``,
started here on a free port and stopped by PID), checked through ``MlflowClient``; a down server costs
nothing but the record, within a bounded time. Settings and retries in process (unit tier)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from typing import Iterator

import numpy as np
import pandas as pd
import pytest

from sagemaker_deepar.training.tracking import (
    Budget,
    TrackingSettings,
    TrackingSettingsError,
    metric_name,
    settings_problem_report,
)

from .conftest import TRAIN, OptMl, entrypoint_env, running_mlflow, standard_job
from .helpers import free_port

# ---------------------------------------------------------------- settings and retries (unit tier)


@pytest.mark.unit
def test_settings_come_from_the_environment_once_with_defaults():
    assert TrackingSettings.from_env({}) is None and TrackingSettings.from_env({"MLFLOW_TRACKING_URI": " "}) is None
    settings = TrackingSettings.from_env(
        {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000", "TRAINING_JOB_NAME": "job-7", "MLFLOW_EXPERIMENT_NAME": ""}
    )
    assert settings is not None
    assert (settings.experiment_name, settings.run_name, settings.registered_model_name) == ("deepar", "job-7", None)
    assert settings.retry_seconds == 60


@pytest.mark.unit
@pytest.mark.parametrize(
    "env, variable",
    [
        ({"MLFLOW_TRACKING_URI": "127.0.0.1:5000"}, "MLFLOW_TRACKING_URI"),
        ({"MLFLOW_TRACKING_URI": "htp://host:5000"}, "MLFLOW_TRACKING_URI"),
        ({"MLFLOW_TRACKING_URI": "http://:5000"}, "MLFLOW_TRACKING_URI"),
        ({"MLFLOW_TRACKING_URI": "http://host:99999"}, "MLFLOW_TRACKING_URI"),
        ({"MLFLOW_TRACKING_URI": "http://host", "DEEPAR_MLFLOW_RETRY_SECONDS": "soon"}, "DEEPAR_MLFLOW_RETRY_SECONDS"),
        (
            {"MLFLOW_TRACKING_URI": "http://host", "MLFLOW_REGISTERED_MODEL_NAME": "x" * 300},
            "MLFLOW_REGISTERED_MODEL_NAME",
        ),
    ],
)
def test_unusable_settings_name_their_variable(env, variable):
    with pytest.raises(TrackingSettingsError) as error:
        TrackingSettings.from_env(env)
    assert str(error.value).startswith(variable + "=")


@pytest.mark.unit
def test_an_unusable_setting_is_written_to_mlflow_json(tmp_path, caplog):
    env = {"MLFLOW_TRACKING_URI": "not a uri"}
    with pytest.raises(TrackingSettingsError) as error:
        TrackingSettings.from_env(env)
    settings_problem_report(tmp_path, env, str(error.value))
    report = json.loads((tmp_path / "mlflow.json").read_text())
    assert report["complete"] is False and report["tracking_uri"] == "not a uri"
    assert report["not_recorded"][0]["reason"].startswith("tracking settings: MLFLOW_TRACKING_URI='not a uri'")
    assert "MLFLOW_TRACKING_URI" in caplog.text and "the model is saved regardless" in caplog.text


class Refused(Exception):
    error_code = "PERMISSION_DENIED"


@pytest.mark.unit
def test_budget_retries_with_back_off_but_not_refusals_and_not_past_its_deadline():
    calls: list[float] = []

    def flaky() -> str:
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise ConnectionError("connection refused")
        return "ok"

    assert Budget(10).call("run", flaky) == "ok"
    assert len(calls) == 3 and calls[2] - calls[1] > calls[1] - calls[0] >= 0.45  # 0.5 s, then 1 s

    refusals: list[int] = []

    def refuse() -> None:
        refusals.append(1)
        raise Refused("no")

    with pytest.raises(Refused):
        Budget(10).call("run", refuse)
    assert refusals == [1]
    started = time.monotonic()
    with pytest.raises(ConnectionError):
        Budget(1.2).call("run", lambda: (_ for _ in ()).throw(ConnectionError("down")))
    assert time.monotonic() - started < 2.0
    stop = threading.Event()
    stop.set()  # SIGTERM during tracking: no more retries
    with pytest.raises(ConnectionError):
        Budget(30, stop).call("run", lambda: (_ for _ in ()).throw(ConnectionError("down")))


@pytest.mark.unit
def test_metric_names_are_what_mlflow_accepts():
    assert metric_name("test_wQuantileLoss[0.5]") == "test_wQuantileLoss_0.5"
    assert metric_name("data_train_target_mean") == "data_train_target_mean"


# ---------------------------------------------------------------- container/train against a real server


@pytest.fixture(scope="module")
def tracking_server(tmp_path_factory) -> Iterator[str]:
    with running_mlflow(tmp_path_factory.mktemp("mlflow")) as uri:
        yield uri


def train(opt_ml: OptMl, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """container/train with TRAINING_JOB_NAME allowed through (entrypoint_env drops an inherited one)."""
    return subprocess.run(
        [sys.executable, str(TRAIN)],
        env={**entrypoint_env(opt_ml.root), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_training_records_one_run_with_params_epoch_losses_model_and_version(opt_ml, tracking_server, monkeypatch):
    import mlflow
    from mlflow.tracking import MlflowClient

    # Every client call of this test goes to the server (mlflow's default would be ./mlflow.db).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking_server)

    standard_job(opt_ml, epochs="3")
    leaderboard = {"models": [{"name": "deepar", "mean_wQuantileLoss": 0.1}]}
    (opt_ml.root / "output" / "data").mkdir(parents=True)
    (opt_ml.root / "output" / "data" / "leaderboard.json").write_text(json.dumps(leaderboard))
    result = train(
        opt_ml,
        MLFLOW_TRACKING_URI=tracking_server,
        MLFLOW_EXPERIMENT_NAME="deepar-tests",
        MLFLOW_REGISTERED_MODEL_NAME="deepar-tracked",
        TRAINING_JOB_NAME="deepar-job-42",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((opt_ml.root / "output" / "data" / "mlflow.json").read_text())
    assert report["complete"] is True, report
    assert report["recorded"] == ["params", "metrics", "statistics", "leaderboard", "model", "registered model"]

    client = MlflowClient(tracking_server)
    experiment = client.get_experiment_by_name("deepar-tests")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [report["run_id"]]
    run = runs[0]
    assert run.info.run_name == "deepar-job-42" and run.info.status == "FINISHED"
    assert run.data.tags["sagemaker.training_job_name"] == "deepar-job-42"
    hyperparameters = opt_ml.metadata["hyperparameters"]
    assert run.data.params == {k: v if isinstance(v, str) else json.dumps(v) for k, v in hyperparameters.items()}
    assert run.data.params["epochs"] == "3" and run.data.params["context_length"] == "12"
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in history] == [0, 1, 2]
    metrics_lines = [line for line in result.stdout.splitlines() if ", train loss <loss>=" in line]
    assert [m.value for m in history] == [float(line.rsplit("=", 1)[1]) for line in metrics_lines]
    assert run.data.metrics["test_RMSE"] == pytest.approx(opt_ml.metrics["test"]["RMSE"])
    assert run.data.metrics["data_train_num_series"] == 4
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"leaderboard.json", "training-summary.json"} <= artifacts
    assert mlflow.artifacts.load_dict(f"runs:/{run.info.run_id}/leaderboard.json") == leaderboard

    version = client.get_model_version("deepar-tracked", "1")
    assert version.run_id == run.info.run_id and report["registered_model"] == {
        "name": "deepar-tracked",
        "version": "1",
    }
    model = mlflow.pyfunc.load_model("models:/deepar-tracked/1")
    frame = pd.DataFrame(
        {
            "item_id": "s",
            "timestamp": pd.date_range("2024-01-01", periods=24, freq="h"),
            "target": 10 + np.sin(np.arange(24) / 4),
            "feat_static_cat_0": 1,
        }
    )
    forecast = model.predict(frame, params={"num_samples": 20, "seed": 1})
    assert len(forecast) == 6 and forecast["mean"].notna().all()


def test_a_down_server_keeps_the_model_and_says_why_within_the_budget(opt_ml):
    standard_job(opt_ml, with_test=False, epochs="1")
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = train(opt_ml, MLFLOW_TRACKING_URI=closed, DEEPAR_MLFLOW_RETRY_SECONDS="3")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (opt_ml.root / "model" / "deepar-metadata.json").exists() and (
        opt_ml.root / "model" / "network.onnx"
    ).exists()
    report = json.loads((opt_ml.root / "output" / "data" / "mlflow.json").read_text())
    assert report["complete"] is False and report["run_id"] is None and report["tracking_uri"] == closed
    (missing,) = report["not_recorded"]
    assert missing["what"] == "run" and "nothing was recorded" in missing["reason"]
    assert "Connection refused" in missing["reason"] or "Failed to establish" in missing["reason"], missing
    assert report["seconds"] < 3 + 5  # the retry budget, plus one attempt's connect time
    assert "mlflow: not recorded at " + closed in result.stderr and "the model is saved regardless" in result.stderr
    assert result.stderr.count("retrying in") >= 2  # back-off before giving up
