"""The ingestion side's settings: one name prefix derives every resource name; a small JSON file or
flags override them. Shared by the setup command (infra.py), the simulator and the ETL."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from sagemaker_deepar.errors import UserError
from sagemaker_deepar.settings import EnvironmentSettings


class IngestionEnvironment(EnvironmentSettings):
    """Ingestion (`python -m ingestion.infra|simulator|query|to_deepar`): the environment beside the JSON config."""

    iam_wait: float = Field(
        90.0,
        ge=0,
        le=3600,
        validation_alias="INGESTION_IAM_WAIT",
        description="`infra up`: seconds to retry while a new IAM role propagates to Firehose and IoT",
    )
    debug: Optional[str] = Field(
        None, validation_alias="INGESTION_DEBUG", description="any value: a failing command prints its traceback"
    )


def environment() -> IngestionEnvironment:
    return IngestionEnvironment.from_env(os.environ)


class IngestionConfig(BaseModel):
    """Everything `infra.py up` creates is named from ``prefix`` unless set here."""

    model_config = ConfigDict(extra="forbid")

    prefix: str = Field("deepar-iot", description="lowercase letters, digits and dashes; starts every name")
    region: Optional[str] = None
    devices: int = Field(3, ge=1, le=100, description="things named <prefix>-sensor-<n>")
    things: Optional[list[str]] = None
    raw_bucket: Optional[str] = None
    curated_bucket: Optional[str] = None
    artifacts_bucket: Optional[str] = None
    results_bucket: Optional[str] = Field(
        None, description="Athena's query results (default <prefix>-results-<account>-<region>)"
    )
    buffer_seconds: int = Field(300, ge=60, le=900, description="Firehose buffering interval")
    buffer_mb: int = Field(5, ge=1, le=128, description="Firehose buffering size")
    glue_workers: int = Field(2, ge=2, le=100)
    # The ETL's timestamp window (issue #23 item 2): readings outside it are quarantined.
    earliest_timestamp: str = Field("2000-01-01", description="ISO date/time; earlier readings are quarantined")
    max_ahead_hours: float = Field(
        24, ge=0, le=24 * 366, description="readings this far after their object's arrival are quarantined"
    )
    time_freq: str = "H"
    prediction_length: int = Field(24, ge=1)
    state_dir: Optional[Path] = None

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z][a-z0-9-]{1,30}[a-z0-9]", value):
            raise ValueError("3-32 lowercase letters, digits or dashes, starting with a letter")
        return value

    @field_validator("earliest_timestamp")
    @classmethod
    def _earliest(cls, value: str) -> str:
        from .glue_job import parse_time

        if not isinstance(value, str) or parse_time(value) is None:
            raise ValueError("expected an ISO date or date and time, for example 2000-01-01")
        return value

    @property
    def thing_names(self) -> list[str]:
        return self.things or [f"{self.prefix}-sensor-{n}" for n in range(1, self.devices + 1)]

    @property
    def underscored(self) -> str:
        """IoT rule and Glue database names allow no dashes."""
        return self.prefix.replace("-", "_")

    def topic(self, thing: str) -> str:
        return f"{self.prefix}/{thing}/telemetry"

    @property
    def topic_filter(self) -> str:
        return f"{self.prefix}/+/telemetry"

    def bucket(self, kind: str, account: str, region: str) -> str:
        given = getattr(self, f"{kind}_bucket")
        return given or f"{self.prefix}-{kind}-{account}-{region}"

    def resolved_state_dir(self) -> Path:
        return self.state_dir or Path("ingestion-state") / self.prefix


def load_config(path: Optional[Path], overrides: dict) -> IngestionConfig:
    """The JSON file (if any) with flag values on top; errors name the file and the field."""
    values: dict = {}
    if path is not None:
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise UserError(f"{path}: {error}") from None
        if not isinstance(values, dict):
            raise UserError(f"{path}: expected a JSON object")
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return IngestionConfig(**values)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UserError(f"{path or 'flags'}: {where}: {first['msg']}") from None
