"""An mlflow model folder at /opt/ml/model: find this project's artifact inside it, without importing mlflow.

``mlflow deployments create -t sagemaker`` tars the whole mlflow model folder (``MLmodel``, the pyfunc's
files and the artifacts it carries) as ``model.tar.gz``; SageMaker extracts it to ``/opt/ml/model``.
The server serves the one folder under it that holds ``deepar-metadata.json``: none, or more than one,
is a deployment error named at start. A folder without ``MLmodel`` is a plain artifact, served as before.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml

from ..contract import METADATA_FILE
from ..errors import UserError

log = logging.getLogger(__name__)

MLMODEL_FILE = "MLmodel"


class MlflowModelError(UserError):
    """An mlflow model folder this server cannot serve: the message says what is wrong and where."""


@dataclass(frozen=True)
class ServedModel:
    """What /opt/ml/model holds: the artifact folder to load, and the mlflow model around it if any."""

    artifact_dir: Path
    mlmodel: Optional[dict[str, Any]] = None  # the parsed MLmodel file

    @property
    def is_mlflow(self) -> bool:
        return self.mlmodel is not None

    def describe(self) -> str:
        if self.mlmodel is None:
            return f"DeepAR artifact {self.artifact_dir}"
        about = ["flavors: " + (", ".join(sorted(self.mlmodel.get("flavors") or {})) or "none")]
        about += [f"{key} {self.mlmodel[key]}" for key in ("run_id", "model_uuid") if self.mlmodel.get(key)]
        return f"mlflow model ({'; '.join(about)}) with its DeepAR artifact in {self.artifact_dir}"


def read_mlmodel(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise MlflowModelError(f"{path}: not a readable MLmodel file ({type(error).__name__}: {error})") from None
    if not isinstance(data, dict):
        raise MlflowModelError(f"{path}: not an MLmodel file (expected a YAML mapping with flavors)")
    if not isinstance(data.get("flavors"), dict):
        raise MlflowModelError(f"{path}: no flavors; an mlflow model's MLmodel lists them")
    return data


def find_artifact(model_dir: Path) -> ServedModel:
    """The DeepAR artifact to serve from ``model_dir`` (a plain artifact, or an mlflow model folder).

    In an mlflow folder ``deepar-metadata.json`` is searched for below ``model_dir`` (symbolic links are
    not followed, so nothing outside the folder is served). Raises MlflowModelError when there is none or
    more than one.
    """
    mlmodel_path = model_dir / MLMODEL_FILE
    if not mlmodel_path.is_file():
        return ServedModel(model_dir)
    mlmodel = read_mlmodel(mlmodel_path)
    found = sorted(_metadata_files(model_dir))
    if not found:
        raise MlflowModelError(
            f"{model_dir} is an mlflow model ({MLMODEL_FILE}) without a DeepAR artifact: no {METADATA_FILE} "
            "anywhere below it; log the model with sagemaker_deepar.mlflow_pyfunc (its artifacts carry the "
            "trained model folder)"
        )
    if len(found) > 1:
        listed = ", ".join(str(path.relative_to(model_dir)) for path in found)
        raise MlflowModelError(
            f"{model_dir} is an mlflow model with {len(found)} DeepAR artifacts ({listed}); "
            "one model folder must carry exactly one"
        )
    return ServedModel(found[0].parent, mlmodel)


def _metadata_files(root: Path) -> list[Path]:
    found = []
    for folder, subfolders, files in os.walk(root, followlinks=False):
        # Hidden folders (a train job's .staging, .git) and caches never hold the served model.
        subfolders[:] = [name for name in subfolders if not name.startswith(".") and name != "__pycache__"]
        if METADATA_FILE in files and not os.path.islink(os.path.join(folder, METADATA_FILE)):
            found.append(Path(folder) / METADATA_FILE)
    return found
