"""The SageMaker /opt/ml layout; ``SAGEMAKER_BASE_DIR`` relocates it for local runs and tests."""

import os
from dataclasses import dataclass
from pathlib import Path

from .contract import METADATA_FILE  # noqa: F401 - part of the layout, stated in the contract

# Inside /opt/ml/model: the serialized GluonTS predictor and our metadata beside it.
PREDICTOR_DIR = "predictor"


@dataclass(frozen=True)
class SageMakerPaths:
    root: Path

    @classmethod
    def from_env(cls) -> "SageMakerPaths":
        return cls(Path(os.environ.get("SAGEMAKER_BASE_DIR", "/opt/ml")))

    @property
    def config_dir(self) -> Path:
        return self.root / "input" / "config"

    @property
    def hyperparameters(self) -> Path:
        return self.config_dir / "hyperparameters.json"

    @property
    def input_data_config(self) -> Path:
        return self.config_dir / "inputdataconfig.json"

    @property
    def resource_config(self) -> Path:
        return self.config_dir / "resourceconfig.json"

    @property
    def checkpoint_config(self) -> Path:
        return self.config_dir / "checkpointconfig.json"

    def channel(self, name: str) -> Path:
        return self.root / "input" / "data" / name

    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def output_data_dir(self) -> Path:
        return self.root / "output" / "data"

    @property
    def failure_file(self) -> Path:
        return self.root / "output" / "failure"

    @property
    def default_checkpoint_dir(self) -> Path:
        return self.root / "checkpoints"
