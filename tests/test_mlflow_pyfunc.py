"""The DeepAR model as an mlflow pyfunc: the folder, the frame in and out, the errors, and equality with
``/invocations`` of a real ``container/serve`` for the same series and seed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sagemaker_deepar.contract import ContractError, FeatureSpec, parse_configuration
from sagemaker_deepar.serving.frames import FrameError, FrameModel, frame_request

from .conftest import running_server

HOURLY = FrameModel(freq="h", prediction_length=6, features=FeatureSpec())
WITH_FEATURES = FrameModel(freq="h", prediction_length=6, features=FeatureSpec(cardinality=(2,), num_dynamic_feat=1))


def long_frame(items: int = 2, points: int = 30, start: str = "2024-01-01", freq: str = "h", **columns) -> pd.DataFrame:
    frames = []
    for item in range(items):
        frame = pd.DataFrame(
            {
                "item_id": f"sensor-{item}",
                "timestamp": pd.date_range(start, periods=points, freq=freq),
                "target": 10.0 + item + np.sin(np.arange(points) / 3.0),
            }
        )
        for name, value in columns.items():
            frame[name] = value(item, points) if callable(value) else value
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def horizon_nan(frame: pd.DataFrame, horizon: int = 6) -> pd.DataFrame:
    """Each item's last rows as the forecast horizon of a model with dynamic features: target NaN."""
    frame = frame.copy()
    frame.loc[frame.groupby("item_id").tail(horizon).index, "target"] = np.nan
    return frame


# ---------------------------------------------------------------- frames (unit tier)


@pytest.mark.unit
def test_frame_becomes_one_instance_per_item_with_nan_as_null():
    frame = long_frame()
    frame.loc[3, "target"] = np.nan
    request = frame_request(frame, HOURLY, {"num_samples": 7, "quantiles": [0.1, 0.5], "seed": 4})
    assert request.item_ids == ["sensor-0", "sensor-1"]
    first = request.payload["instances"][0]
    assert first["start"] == "2024-01-01 00:00:00" and len(first["target"]) == 30 and first["target"][3] is None
    assert request.payload["configuration"] == {
        "output_types": ["mean", "quantiles"],
        "num_samples": 7,
        "quantiles": ["0.1", "0.5"],
        "seed": 4,
    }
    assert list(request.horizons[1]) == list(pd.date_range("2024-01-02 06:00", periods=6, freq="h"))


@pytest.mark.unit
def test_negative_seed_means_fresh_draws_and_features_follow_the_model():
    frame = long_frame(
        points=36,
        feat_static_cat_0=lambda item, n: item,
        feat_dynamic_real_0=lambda item, n: np.arange(n, dtype=float),
    )
    frame = horizon_nan(frame)
    request = frame_request(frame, WITH_FEATURES, {"seed": -1})
    assert "seed" not in request.payload["configuration"]
    instance = request.payload["instances"][1]
    assert instance["cat"] == [1] and len(instance["target"]) == 30 and len(instance["dynamic_feat"][0]) == 36
    assert request.horizons[0][0] == pd.Timestamp("2024-01-02 06:00")


@pytest.mark.unit
@pytest.mark.parametrize(
    "change, model, message",
    [
        (lambda f: f.drop(columns="target"), HOURLY, "column(s) target missing"),
        (
            lambda f: f.iloc[[0, 2, 1, *range(3, len(f))]],
            HOURLY,
            "item 'sensor-0', row 2: timestamp 2024-01-01 01:00:00 comes before",
        ),
        (
            lambda f: f.drop(index=5),
            HOURLY,
            "item 'sensor-0', row 5: timestamp 2024-01-01 06:00:00 is not the h period after",
        ),
        (
            lambda f: f.assign(timestamp=f["timestamp"].where(f.index != 4, f["timestamp"][3])),
            HOURLY,
            "row 4: duplicate timestamp",
        ),
        (
            lambda f: f.assign(item_id=f["item_id"].where(f.index != 7, None)),
            HOURLY,
            "column item_id, row 7: missing item id",
        ),
        (
            lambda f: f.assign(timestamp=f["timestamp"].astype(str).where(f.index != 9, "soon")),
            HOURLY,
            "column timestamp, row 9: 'soon'",
        ),
        (
            lambda f: f.assign(target=f["target"].astype(object).where(f.index != 2, "x")),
            HOURLY,
            "column target, row 2: 'x' is not a number",
        ),
        (lambda f: f, WITH_FEATURES, "columns feat_static_cat_*: the model was trained with feat_static_cat_0"),
        (
            lambda f: f.assign(feat_static_cat_0=0, feat_dynamic_real_0=1.0),
            WITH_FEATURES,
            "item 'sensor-0', row 24: target is set inside the forecast horizon",
        ),
        (
            lambda f: horizon_nan(f.assign(feat_static_cat_0=f.index % 2, feat_dynamic_real_0=1.0)),
            WITH_FEATURES,
            "column feat_static_cat_0, row 1: differs",
        ),
    ],
)
def test_bad_frames_name_column_item_and_row(change, model, message):
    with pytest.raises(FrameError) as error:
        frame_request(change(long_frame()), model)
    assert message in str(error.value)


@pytest.mark.unit
def test_bad_params_and_seed_are_named():
    for params, message in [
        ({"samples": 3}, "params: unknown name(s) samples"),
        ({"num_samples": 2.5}, "params.num_samples: 2.5 is not an integer"),
        ({"quantiles": "0.5"}, "params.quantiles"),
        ({"seed": "x"}, "params.seed: 'x' is not an integer"),
    ]:
        with pytest.raises(FrameError, match=message.replace("(", r"\(").replace(")", r"\)")):
            frame_request(long_frame(), HOURLY, params)
    with pytest.raises(ContractError, match=r"configuration.seed: -3 is not an integer between 0 and"):
        parse_configuration({"seed": -3})
    assert parse_configuration({"seed": 5}).seed == 5 and parse_configuration(None).seed is None


# ---------------------------------------------------------------- the mlflow model, against a real server


@pytest.fixture(scope="module")
def mlflow_models(torch_model: Path, feature_model: Path, tmp_path_factory) -> dict[str, Path]:
    from sagemaker_deepar import mlflow_pyfunc

    folder = tmp_path_factory.mktemp("mlflow_models")
    return {
        "plain": mlflow_pyfunc.save_model(torch_model / "model", folder / "plain"),
        "features": mlflow_pyfunc.save_model(feature_model / "model", folder / "features"),
    }


def test_model_folder_carries_the_artifact_signature_and_example(mlflow_models, torch_model):
    import yaml

    folder = mlflow_models["plain"]
    mlmodel = yaml.safe_load((folder / "MLmodel").read_text())
    assert mlmodel["flavors"]["python_function"]["loader_module"] == "mlflow.pyfunc.loaders.code_model"
    inputs = [c["name"] for c in json.loads(mlmodel["signature"]["inputs"])]
    params = {p["name"]: p["default"] for p in json.loads(mlmodel["signature"]["params"])}
    assert inputs == ["item_id", "timestamp", "target"] and params["num_samples"] == 100 and params["seed"] == -1
    assert (folder / "input_example.json").exists() and (folder / "serving_input_example.json").exists()
    for name in ("deepar-metadata.json", "network.onnx", "predictor/predictor.json"):
        assert (folder / "artifacts" / "deepar" / name).read_bytes() == (torch_model / "model" / name).read_bytes()
    features = json.loads(yaml.safe_load((mlflow_models["features"] / "MLmodel").read_text())["signature"]["inputs"])
    assert [c["name"] for c in features][3:] == ["feat_static_cat_0", "feat_dynamic_real_0"]


def instances_of(frame: pd.DataFrame) -> list[dict]:
    out = []
    for _, rows in frame.groupby("item_id", sort=False):
        instance = {
            "start": str(rows["timestamp"].iloc[0]),
            "target": [None if math.isnan(v) else v for v in rows["target"]],
        }
        if "feat_static_cat_0" in rows:
            history = len(rows) - 6
            instance = {
                **instance,
                "target": instance["target"][:history],
                "cat": [int(rows["feat_static_cat_0"].iloc[0])],
            }
            instance["dynamic_feat"] = [rows["feat_dynamic_real_0"].tolist()]
        out.append(instance)
    return out


@pytest.mark.parametrize("kind", ["plain", "features"])
def test_pyfunc_forecasts_equal_the_servers_for_the_same_seed(kind, mlflow_models, torch_model, feature_model):
    import mlflow

    model = mlflow.pyfunc.load_model(str(mlflow_models[kind]))
    if kind == "plain":
        frame = long_frame(items=3, points=40)
        frame.loc[5, "target"] = np.nan
    else:
        frame = long_frame(
            items=3,
            points=30,
            feat_static_cat_0=lambda item, n: item % 2,
            feat_dynamic_real_0=lambda item, n: np.arange(n) % 24.0,
        )
        frame = horizon_nan(frame)
    params = {"num_samples": 64, "quantiles": [0.1, 0.5, 0.9], "seed": 11}
    ours = model.predict(frame, params=params)
    assert list(ours.columns) == ["item_id", "timestamp", "mean", "0.1", "0.5", "0.9"]
    assert len(ours) == 3 * 6 and ours["item_id"].unique().tolist() == ["sensor-0", "sensor-1", "sensor-2"]
    assert ours.equals(model.predict(frame, params=params))  # seeded: the same answer twice
    assert not ours["mean"].equals(model.predict(frame, params={**params, "seed": 12})["mean"])

    root = torch_model if kind == "plain" else feature_model
    request = {
        "instances": instances_of(frame),
        "configuration": {"num_samples": 64, "quantiles": ["0.1", "0.5", "0.9"], "seed": 11},
    }
    with running_server(root, SAGEMAKER_MODEL_SERVER_WORKERS="1") as server:
        answer = server.post(request)
    assert answer.status_code == 200, answer.text
    for k, prediction in enumerate(answer.json()["predictions"]):
        rows = ours.iloc[6 * k : 6 * (k + 1)]
        assert rows["mean"].tolist() == prediction["mean"]
        for q in ("0.1", "0.5", "0.9"):
            assert rows[q].tolist() == prediction["quantiles"][q]


def test_pyfunc_errors_name_the_item_never_a_pandas_traceback(mlflow_models):
    import mlflow
    from mlflow.exceptions import MlflowException

    model = mlflow.pyfunc.load_model(str(mlflow_models["features"]))
    frame = long_frame(points=30, feat_static_cat_0=lambda item, n: 5 * item, feat_dynamic_real_0=1.0)
    frame = horizon_nan(frame)
    with pytest.raises(MlflowException, match=r"item 'sensor-1': cat\[0\]"):
        model.predict(frame)
    with pytest.raises(MlflowException, match="row 2: timestamp .* comes before"):
        model.predict(frame.iloc[[0, 2, 1, *range(3, len(frame))]])
    with pytest.raises(MlflowException, match="target"):
        model.predict(frame.drop(columns="target"))
