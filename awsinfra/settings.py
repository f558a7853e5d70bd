"""The AWS layer's environment, in the project's one settings style (sagemaker_deepar/settings.py):
what every AWS SDK reads anyway (region, endpoint), parsed here for our own clients.

awsinfra.clients imports this module only when it needs a setting, so importing the clients stays cheap."""

from __future__ import annotations

import os
from typing import Optional

from pydantic import AliasChoices, Field

from sagemaker_deepar.settings import EnvironmentSettings


class AwsSettings(EnvironmentSettings):
    """AWS clients (every command and function that calls AWS: awsinfra/clients.py)."""

    region: Optional[str] = Field(
        None,
        validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION"),
        description="the region of every client (the SDK's own variables); unset: awsinfra.clients.DEFAULT_REGION, us-east-1",
    )
    endpoint_url: Optional[str] = Field(
        None,
        validation_alias="AWS_ENDPOINT_URL",
        description="every client talks to this endpoint instead of AWS (a moto server offline)",
    )


def current() -> AwsSettings:
    """The settings as the process environment holds them now (an offline run changes them)."""
    return AwsSettings.from_env(os.environ)
