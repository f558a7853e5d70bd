"""mlflow serving in process: mlflow's request formats and the answer's shape, the DeepAR artifact inside an
mlflow model folder (the black-box side is tests/test_mlflow_serve.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from sagemaker_deepar.contract import ContractError, FeatureSpec, ModelArtifact
from sagemaker_deepar.serving.frames import FrameModel, frame_request, predictions_frame
from sagemaker_deepar.serving.mlflow_folder import MlflowModelError, find_artifact
from sagemaker_deepar.serving.mlflow_requests import answer_rows, is_mlflow_request, parse_mlflow_request, request_frame

pytestmark = pytest.mark.unit


def artifact(freq: str = "h", cats: tuple[int, ...] = (), dynamic: int = 0, horizon: int = 2) -> ModelArtifact:
    return ModelArtifact(
        backend="torch",
        freq=freq,
        prediction_length=horizon,
        context_length=4,
        likelihood="student-T",
        cardinality=cats,
        num_dynamic_feat=dynamic,
    )


ROWS = [  # two items, interleaved; b has a missing value
    {"item_id": "a", "timestamp": "2024-01-01 00:00:00", "target": 1.0},
    {"item_id": "b", "timestamp": "2024-01-01 05:00:00", "target": 7.0},
    {"item_id": "a", "timestamp": "2024-01-01 01:00:00", "target": 2.0},
    {"item_id": "b", "timestamp": "2024-01-01 06:00:00", "target": None},
    {"item_id": "a", "timestamp": "2024-01-01 02:00:00", "target": 3.0},
]
COLUMNS = ["item_id", "timestamp", "target"]


def every_format(rows: list[dict], **extra) -> list[dict]:
    split = {"columns": COLUMNS, "data": [[row[c] for c in COLUMNS] for row in rows]}
    columnar = {c: [row[c] for row in rows] for c in COLUMNS}
    return [
        {"dataframe_split": split, **extra},
        {"dataframe_records": rows, **extra},
        {"instances": rows, **extra},
        {"instances": columnar, **extra},
        {"inputs": rows, **extra},
        {"inputs": columnar, **extra},
    ]


def test_every_mlflow_format_is_recognised_and_gives_the_same_frame():
    expected = pd.DataFrame(ROWS)
    for payload in every_format(ROWS, params={"seed": 1}):
        assert is_mlflow_request(payload), payload
        frame, params = request_frame(payload)
        assert params == {"seed": 1}
        pd.testing.assert_frame_equal(frame, expected)


def test_the_answer_rows_are_the_pyfunc_frame_as_mlflow_writes_it():
    model = FrameModel(freq="h", prediction_length=2, features=FeatureSpec())
    request = frame_request(pd.DataFrame(ROWS), model, {"quantiles": [0.1, 0.9]})
    predictions = [
        {"mean": [1.5, 2.5], "quantiles": {"0.1": [0.5, 1.5], "0.9": [2.5, 3.5]}},
        {"mean": [7.0, 7.5], "quantiles": {"0.1": [6.0, 6.5], "0.9": [8.0, 8.5]}},
    ]
    frame = predictions_frame(request, predictions)
    frame["timestamp"] = frame["timestamp"].dt.strftime("%Y-%m-%dT%H:%M:%S")
    rows = answer_rows(request, predictions)
    assert rows == frame.to_dict(orient="records")
    assert rows[2] == {"item_id": "b", "timestamp": "2024-01-01T07:00:00", "mean": 7.0, "0.1": 6.0, "0.9": 8.0}
    with pytest.raises(RuntimeError, match="1 predictions for 2 items"):
        answer_rows(request, predictions[:1])


def test_deepar_requests_are_not_taken_for_mlflow_ones():
    assert not is_mlflow_request({"instances": [{"start": "2024-01-01", "target": [1]}]})
    assert not is_mlflow_request({"instances": [{"start": "2024-01-01", "target": [1]}], "configuration": {}})
    assert not is_mlflow_request({"instances": []})  # DeepAR's own error answers it
    assert not is_mlflow_request([1, 2])
    assert is_mlflow_request({"instances": [{"start": "2024-01-01", "target": [1]}], "params": {}})


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"dataframe_split": {"columns": ["a"], "data": [[1, 2]]}}, r"dataframe_split.data\[0\]: expected a list of 1"),
        ({"dataframe_split": [1]}, r"dataframe_split: expected"),
        ({"dataframe_records": [{"item_id": "a"}, 3]}, r"dataframe_records\[1\]: expected an object"),
        ({"inputs": {"item_id": [1, 2], "target": [1]}}, r"inputs: columns of different lengths"),
        ({"inputs": {"item_id": 1}}, r"inputs.item_id: expected a list"),
        ({"inputs": 5}, r"inputs: expected a list of rows or an object of columns"),
        ({"inputs": [], "dataframe_records": []}, r"exactly one of"),
        ({"inputs": [], "extra": 1}, r"unknown field\(s\) extra"),
        ({"inputs": [], "params": [1]}, r"params: expected an object"),
    ],
)
def test_malformed_mlflow_requests_are_named(payload, message):
    assert is_mlflow_request(payload)
    with pytest.raises(ContractError, match=message):
        parse_mlflow_request(payload)


# ---------------------------------------------------------------- the artifact inside an mlflow folder


def write_artifact(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "deepar-metadata.json").write_text(json.dumps(artifact().to_dict()))
    return folder


def test_a_plain_artifact_is_served_as_it_is(tmp_path):
    write_artifact(tmp_path / "model")
    served = find_artifact(tmp_path / "model")
    assert served.artifact_dir == tmp_path / "model" and not served.is_mlflow


def test_an_mlflow_folder_serves_its_one_artifact_and_refuses_none_or_two(tmp_path):
    root = tmp_path / "model"
    root.mkdir()
    (root / "MLmodel").write_text("flavors:\n  python_function: {loader_module: x}\nrun_id: r1\n")
    with pytest.raises(MlflowModelError, match=r"without a DeepAR artifact: no deepar-metadata.json anywhere below it"):
        find_artifact(root)
    write_artifact(root / "artifacts" / "deepar")
    write_artifact(root / ".staging")  # hidden folders are never searched
    served = find_artifact(root)
    assert served.artifact_dir == root / "artifacts" / "deepar" and "python_function" in served.describe()
    write_artifact(root / "artifacts" / "other")
    with pytest.raises(
        MlflowModelError, match=r"2 DeepAR artifacts \(artifacts/deepar/deepar-metadata.json, artifacts/oth"
    ):
        find_artifact(root)


def test_links_out_of_the_mlflow_folder_are_not_followed(tmp_path):
    outside = write_artifact(tmp_path / "elsewhere")
    root = tmp_path / "model"
    (root / "artifacts").mkdir(parents=True)
    (root / "MLmodel").write_text("flavors: {python_function: {}}\n")
    (root / "artifacts" / "deepar").symlink_to(outside, target_is_directory=True)
    with pytest.raises(MlflowModelError, match="without a DeepAR artifact"):
        find_artifact(root)


@pytest.mark.parametrize("text", ["flavors: [unclosed", "- a list\n", "run_id: only\n"])
def test_an_unreadable_mlmodel_is_named(tmp_path, text):
    (tmp_path / "MLmodel").write_text(text)
    with pytest.raises(MlflowModelError, match="MLmodel"):
        find_artifact(tmp_path)
