"""The retraining loop's environment (``python -m mlops ...``), in the project's one settings style.

Each command reads it when it builds its flags (the defaults below) or its pipeline; a value that
cannot be used is an error naming the variable (sagemaker_deepar/settings.py)."""

from __future__ import annotations

import os
from typing import Optional

from pydantic import Field

from sagemaker_deepar.settings import EnvironmentSettings

# What the Train step's job gets from this environment, so that it records its run in mlflow (docs/mlflow.md).
# Credentials (MLFLOW_TRACKING_TOKEN, ...) are not copied: a job's environment is readable in its description.
TRACKING_FIELDS = {
    "tracking_uri": "MLFLOW_TRACKING_URI",
    "experiment_name": "MLFLOW_EXPERIMENT_NAME",
    "registered_model_name": "MLFLOW_REGISTERED_MODEL_NAME",
    "tracking_retry_seconds": "DEEPAR_MLFLOW_RETRY_SECONDS",
}


class MlopsSettings(EnvironmentSettings):
    """The retraining loop (`python -m mlops build|deploy|promote|monitor|demo`): defaults of its flags."""

    name: str = Field("deepar", validation_alias="MLOPS_NAME", description="endpoint base name (`--name`)")
    threshold_parameter: str = Field(
        "/deepar/mlops/wql-threshold",
        validation_alias="MLOPS_THRESHOLD_PARAMETER",
        description="SSM parameter holding the mean_wQuantileLoss threshold (`--threshold-parameter`)",
    )
    state_dir: str = Field(
        ".mlops",
        validation_alias="MLOPS_STATE_DIR",
        description="`--local`: where the endpoint name → URL map and unpacked models live (`--state-dir`)",
    )
    role: Optional[str] = Field(
        None, validation_alias="SAGEMAKER_ROLE", description="SageMaker execution role ARN (`--role`)"
    )
    user: Optional[str] = Field(
        None, validation_alias="USER", description="who approves a rollout (`--approved-by`); unset: mlops"
    )
    image: str = Field(
        "sagemaker-deepar:latest",
        validation_alias="DEEPAR_IMAGE",
        description="the serving image of local endpoints unless `--image`",
    )
    debug: Optional[str] = Field(
        None,
        validation_alias="DEEPAR_MLOPS_DEBUG",
        description="any value: tracebacks and the SDK's and moto's logs are kept",
    )
    tracking_uri: Optional[str] = Field(
        None,
        validation_alias="MLFLOW_TRACKING_URI",
        description="`build`: passed to the Train step's job, which records its run there",
    )
    experiment_name: Optional[str] = Field(
        None, validation_alias="MLFLOW_EXPERIMENT_NAME", description="`build`: passed to the Train step's job"
    )
    registered_model_name: Optional[str] = Field(
        None, validation_alias="MLFLOW_REGISTERED_MODEL_NAME", description="`build`: passed to the Train step's job"
    )
    tracking_retry_seconds: Optional[str] = Field(
        None, validation_alias="DEEPAR_MLFLOW_RETRY_SECONDS", description="`build`: passed to the Train step's job"
    )

    def tracking_variables(self) -> dict[str, str]:
        """The MLFLOW_* settings the Train step passes to its job (none without MLFLOW_TRACKING_URI)."""
        if not self.tracking_uri:
            return {}
        values = {variable: getattr(self, name) for name, variable in TRACKING_FIELDS.items()}
        return {variable: value.strip() for variable, value in values.items() if value}


def current() -> MlopsSettings:
    return MlopsSettings.from_env(os.environ)


def keep_evaluation_logs() -> None:
    """DEEPAR_MLOPS_DEBUG also means evaluation.common's switch (its offline setup logs then)."""
    os.environ.setdefault("DEEPAR_EVAL_DEBUG", "1")
