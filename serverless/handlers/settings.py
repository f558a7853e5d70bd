"""The serverless functions' settings (their Lambda environment), in the project's one settings style.

Each handler parses them once per invocation (``current()``), at its entry, and hands them down; a value
that cannot be used is a ``SettingsError`` naming the variable. pydantic and pydantic-settings travel in
the function bundle for this (serverless/package.py; docs/serverless.md has the measured cost).
"""

from __future__ import annotations

import os
import tempfile
from typing import Optional

from pydantic import Field, field_validator

from sagemaker_deepar import contract
from sagemaker_deepar.settings import EnvironmentSettings

MAX_INPUT_SETTING = "BATCH_MAX_INPUT_MB"
DEFAULT_MAX_INPUT_MB = 128
# Uploads with at least this many valid series go to a batch transform job: the measured request-route
# rate x Lambda's 15 minutes, with a 2x margin (docs/serverless.md).
DEFAULT_MIN_SERIES = 12_000


class FunctionSettings(EnvironmentSettings):
    """Serverless functions (`batch_forecast`, `forecast_api`: their Lambda environment, set by the stack)."""

    output_bucket: Optional[str] = Field(
        None, validation_alias="OUTPUT_BUCKET", description="batch_forecast: where forecasts, errors and manifests go"
    )
    time_freq: str = Field(
        "H",
        validation_alias="TIME_FREQ",
        description="the period of long CSV uploads and of the lake's history (the contract's frequencies)",
    )
    max_input_mb: float = Field(
        DEFAULT_MAX_INPUT_MB,
        gt=0,
        validation_alias=MAX_INPUT_SETTING,
        description="largest upload after decompression (MB); a larger one fails with a report naming this setting",
    )
    transform_min_series: int = Field(
        DEFAULT_MIN_SERIES,
        ge=1,
        validation_alias="BATCH_TRANSFORM_MIN_SERIES",
        description="uploads with at least this many valid series go to a batch transform job (endpoint forecaster)",
    )
    inference_config: Optional[str] = Field(
        None,
        validation_alias="DEEPAR_INFERENCE_CONFIG",
        description="JSON configuration of every batch request, checked with the contract before any request "
        "(a bad value fails each object once)",
    )
    transform_job_prefix: str = Field(
        "deepar", validation_alias="TRANSFORM_JOB_PREFIX", description="name prefix of the batch transform jobs"
    )
    transform_instance_type: str = Field(
        "ml.m5.xlarge", validation_alias="TRANSFORM_INSTANCE_TYPE", description="batch transform jobs' instance type"
    )
    lake_uri: Optional[str] = Field(
        None,
        validation_alias="LAKE_URI",
        description="forecast_api: the lake GET /forecast/{device_id} reads; unset: that route answers 404",
    )
    history_days: int = Field(
        14, ge=1, le=100_000, validation_alias="HISTORY_DAYS", description="days of lake history sent to the model"
    )
    forecast_model: Optional[str] = Field(
        None,
        validation_alias="FORECAST_MODEL",
        description="s3://…/model.tar.gz (or a path) run inside the function with onnxruntime",
    )
    forecast_endpoint: Optional[str] = Field(
        None,
        validation_alias="FORECAST_ENDPOINT",
        description="a SageMaker endpoint name, or http://host:port of a serving container",
    )
    forecast_timeout: float = Field(
        60.0, gt=0, le=900, validation_alias="FORECAST_TIMEOUT", description="seconds per forecaster request"
    )
    batch_in_flight: Optional[int] = Field(
        None,
        ge=1,
        le=16,
        validation_alias="BATCH_IN_FLIGHT",
        description="batch_forecast: requests one object keeps in flight; unset: 2 per endpoint instance "
        "(DescribeEndpoint), 2 for a container URL, 1 for the model inside the function",
    )
    model_cache: Optional[str] = Field(
        None,
        validation_alias="FORECAST_MODEL_CACHE",
        description="where FORECAST_MODEL is extracted; unset: the temporary folder (/tmp)",
    )

    @field_validator("time_freq")
    @classmethod
    def _supported_frequency(cls, value: str) -> str:
        try:
            contract.parse_time_freq(value)
        except contract.ContractError as error:
            raise ValueError(str(error)) from None
        return value

    @property
    def max_input_bytes(self) -> int:
        return int(self.max_input_mb * 2**20)

    @property
    def model_cache_dir(self) -> str:
        return self.model_cache or tempfile.gettempdir()


def current() -> FunctionSettings:
    """The function's settings, from its environment (the one place the handlers read it)."""
    return FunctionSettings.from_env(os.environ)


def output_bucket_of_environment() -> Optional[str]:
    """OUTPUT_BUCKET alone: where a misconfigured function still reports each object's failure."""
    return os.environ.get("OUTPUT_BUCKET") or None
