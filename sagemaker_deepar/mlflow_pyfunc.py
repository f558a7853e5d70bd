"""The trained DeepAR model as an mlflow ``python_function`` model (mlflow 3).

``save_model(model_dir, path)`` / ``log_model(model_dir, name="model")`` package the folder the train job
writes to ``/opt/ml/model`` (``deepar-metadata.json``, ``predictor/``, ``network.onnx``). Inside the mlflow
model folder it sits at ``artifacts/deepar/`` (``ARTIFACT_SUBDIR``), unchanged, so ``serve`` can find it by
its ``deepar-metadata.json`` without importing mlflow.

``mlflow.pyfunc.load_model(uri).predict(frame, params={"num_samples", "quantiles", "seed"})`` takes a long
frame (``item_id``, ``timestamp``, ``target``, optional ``feat_static_cat_<k>`` / ``feat_dynamic_real_<k>``;
see ``frames``) and answers a long frame (``item_id``, ``timestamp``, ``mean``, one column per quantile).

Models-from-code, not a pickled ``PythonModel``: the model folder holds the short source file
``mlflow_model.py`` (which imports this module) instead of a cloudpickle of a class instance. Loading a
pickle runs whatever it contains and ties the folder to the Python and cloudpickle versions that wrote it;
the code file is readable, diffable and loads wherever ``sagemaker_deepar`` is installed — which every
loader needs anyway, since the forecast runs this project's inference code.

Predict goes through the server's own path: ``runtimes.model.Model.load`` (ONNX runtime by default,
``DEEPAR_INFERENCE_RUNTIME``), a ``batcher.Batcher`` and ``service.ForecastService.realtime`` with the
frame turned into a DeepAR JSON request, settings from ``ServerConfig.from_env`` — so for the same series,
seed and settings its forecasts equal what ``/invocations`` answers (``tests/test_mlflow_pyfunc.py``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Optional

import mlflow
import numpy as np
import orjson
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature, infer_signature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.pyfunc import PythonModel

from .contract import DEFAULT_QUANTILES, METADATA_FILE, ModelArtifact
from .errors import UserError
from .serving.frames import FrameModel, FrameRequest, frame_request, located, predictions_frame

log = logging.getLogger(__name__)

ARTIFACT_KEY = "deepar"  # the pyfunc artifact's name; also the folder under artifacts/
ARTIFACT_SUBDIR = f"artifacts/{ARTIFACT_KEY}"  # where deepar-metadata.json lies inside an mlflow model folder
CODE_FILE = Path(__file__).with_name("mlflow_model.py")
DEFAULT_PARAMS: dict[str, Any] = {
    "num_samples": 100,
    "quantiles": [float(q) for q in DEFAULT_QUANTILES],
    "seed": -1,  # negative: fresh random draws (mlflow params need a typed default)
}
# What loading the model needs besides this package (pip requirements written into the model folder).
_REQUIREMENTS = ("numpy", "pandas", "orjson", "onnxruntime", "pydantic")


class DeepARForecaster(PythonModel):
    """Forecasts a long frame with the project's artifact, through the server's service layer."""

    def __init__(self) -> None:
        self.model: Any = None
        self.service: Any = None
        self.frame_model: Optional[FrameModel] = None

    def load_context(self, context: Any) -> None:
        self.load(Path(context.artifacts[ARTIFACT_KEY]))

    def load(self, model_dir: Path) -> None:
        from .runtimes.model import Model
        from .serving.batcher import Batcher
        from .serving.server_config import ServerConfig
        from .serving.service import ForecastService

        config = dataclasses.replace(ServerConfig.from_env(os.environ), model_dir=str(model_dir))
        self.model = Model.load(model_dir, config.max_batch_series, config.inference_runtime, config.inference_threads)
        batcher = Batcher(self.model.sample, config.max_pass_paths, config.max_batch_series, config.batch_wait_ms)
        self.service = ForecastService(self.model, config, batcher)
        self.frame_model = FrameModel(self.model.freq, self.model.prediction_length, self.model.features)

    # pd.DataFrame: a hint mlflow takes without deriving a schema from it (the signature is logged explicitly).
    def predict(self, context, model_input: pd.DataFrame, params: Optional[dict[str, Any]] = None) -> pd.DataFrame:
        return forecast_frame(self.service, self.frame_model, model_input, params)


def forecast_frame(service: Any, frame_model: Any, frame: Any, params: Optional[dict[str, Any]]) -> pd.DataFrame:
    """A long frame's forecast through ``ForecastService.realtime``; mistakes as MlflowException naming the place."""
    from .serving.codec import RequestError
    from .serving.service import JSON

    request: Optional[FrameRequest] = None
    try:
        request = frame_request(frame, frame_model, params)
        body = service.realtime(b"", JSON, JSON, service.deadline(), payload=request.payload)
        return predictions_frame(request, orjson.loads(body)["predictions"])
    except RequestError as error:
        message = located(str(error), request) if request else str(error)
        raise MlflowException(message, error_code=INVALID_PARAMETER_VALUE) from None
    except UserError as error:
        raise MlflowException(str(error), error_code=INVALID_PARAMETER_VALUE) from None


# ---------------------------------------------------------------- saving


def find_artifact(model_dir: Path) -> Path:
    """The project artifact folder, checked: it holds a readable ``deepar-metadata.json``."""
    model_dir = Path(model_dir)
    if not (model_dir / METADATA_FILE).is_file():
        raise MlflowException(
            f"{model_dir}: no {METADATA_FILE}; expected the folder container/train writes to /opt/ml/model",
            error_code=INVALID_PARAMETER_VALUE,
        )
    try:
        ModelArtifact.read(model_dir)
    except Exception as error:  # noqa: BLE001 - any unreadable artifact: say which and why
        raise MlflowException(f"{model_dir / METADATA_FILE}: {error}", error_code=INVALID_PARAMETER_VALUE) from None
    return model_dir


def _staged_copy(model_dir: Path, into: Path) -> Path:
    """The model's files (no hidden staging or probe files) in ``into/deepar``: the name mlflow keeps."""
    target = into / ARTIFACT_KEY
    shutil.copytree(model_dir, target, ignore=lambda _dir, names: [n for n in names if n.startswith(".")])
    return target


def input_example(artifact: ModelArtifact, items: int = 2) -> pd.DataFrame:
    """A small long frame the model accepts: ``context_length`` points per item (+ the horizon for dynamic features)."""
    history = artifact.context_length
    rows = history + (artifact.prediction_length if artifact.num_dynamic_feat else 0)
    frames = []
    for item in range(items):
        stamps = pd.period_range("2024-01-01", periods=rows, freq=artifact.freq).to_timestamp(how="start")
        target = 10.0 + item + np.sin(np.arange(rows) / 4.0)
        target[history:] = np.nan
        frame = pd.DataFrame({"item_id": f"item_{item}", "timestamp": stamps, "target": target})
        for k, cardinality in enumerate(artifact.cardinality):
            # int64 ("long"): what category columns usually are; mlflow's schema refuses int64 for a double column
            frame[f"feat_static_cat_{k}"] = item % max(1, cardinality)
        for k in range(artifact.num_dynamic_feat):
            frame[f"feat_dynamic_real_{k}"] = np.cos(np.arange(rows) / 6.0)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def signature_and_example(model_dir: Path) -> tuple[ModelSignature, pd.DataFrame]:
    """The signature from a real forecast of the input example (default params, seeded)."""
    artifact = ModelArtifact.read(model_dir)
    example = input_example(artifact)
    forecaster = DeepARForecaster()
    forecaster.load(model_dir)
    output = forecaster.predict(None, example, {**DEFAULT_PARAMS, "num_samples": 10, "seed": 0})
    return infer_signature(example, output, params=DEFAULT_PARAMS), example


def pip_requirements() -> list[str]:
    pins = []
    for name in ("sagemaker-deepar", *_REQUIREMENTS):
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pins.append(name)
    return pins


def save_model(model_dir: Path | str, path: Path | str) -> Path:
    """Write an mlflow model folder at ``path`` carrying the artifact in ``model_dir``; returns ``path``."""
    model_dir = find_artifact(Path(model_dir))
    with tempfile.TemporaryDirectory(prefix="deepar-mlflow-") as staging:
        artifact_dir = _staged_copy(model_dir, Path(staging))
        signature, example = signature_and_example(artifact_dir)
        mlflow.pyfunc.save_model(
            path=str(path),
            python_model=str(CODE_FILE),
            artifacts={ARTIFACT_KEY: str(artifact_dir)},
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
        )
    return Path(path)


def log_model(model_dir: Path | str, name: str = "model", registered_model_name: Optional[str] = None) -> Any:
    """Log the model to the active run (one is started if none is); returns mlflow's ``ModelInfo``."""
    model_dir = find_artifact(Path(model_dir))
    with tempfile.TemporaryDirectory(prefix="deepar-mlflow-") as staging:
        artifact_dir = _staged_copy(model_dir, Path(staging))
        signature, example = signature_and_example(artifact_dir)
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(CODE_FILE),
            artifacts={ARTIFACT_KEY: str(artifact_dir)},
            signature=signature,
            input_example=example,
            pip_requirements=pip_requirements(),
            registered_model_name=registered_model_name,
        )


def artifact_in(mlflow_model_dir: Path | str) -> Path:
    """The project artifact inside a saved mlflow model folder (``artifacts/deepar``)."""
    return Path(mlflow_model_dir) / ARTIFACT_SUBDIR
