"""The evaluation commands' environment (``python -m evaluation.<command>``), in the project's one
settings style (sagemaker_deepar/settings.py): the defaults of their flags, read when a command builds
its parser; a value that cannot be used is an error naming the variable."""

from __future__ import annotations

import os
from typing import Optional

from pydantic import AliasChoices, Field

from sagemaker_deepar.settings import EnvironmentSettings


class EvaluationSettings(EnvironmentSettings):
    """The SageMaker SDK workflow commands (evaluation/): defaults of their flags."""

    image: str = Field(
        "sagemaker-deepar:latest",
        validation_alias="DEEPAR_IMAGE",
        description="local mode's image unless `--image`",
    )
    region: Optional[str] = Field(
        None,
        validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION"),
        description="`--region`'s default; unset: your profile's region",
    )
    role: Optional[str] = Field(
        None, validation_alias="SAGEMAKER_ROLE", description="SageMaker execution role ARN (`--role`)"
    )
    serving_port: int = Field(
        8080,
        ge=1,
        le=65535,
        validation_alias="SAGEMAKER_LOCAL_PORT",
        description="local mode: the port local endpoints listen on (`--serving-port`, 127.0.0.1)",
    )
    debug: Optional[str] = Field(
        None,
        validation_alias="DEEPAR_EVAL_DEBUG",
        description="any value: the SageMaker SDK's INFO logs are kept",
    )


def current() -> EvaluationSettings:
    """The settings as the process environment holds them now."""
    return EvaluationSettings.from_env(os.environ)
