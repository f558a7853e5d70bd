"""AWS plumbing shared by every mlops command: clients and the moto server come from the project's
AWS layer (awsinfra.clients: retries, ``AWS_ENDPOINT_URL`` honoured); what is here is the SageMaker
SDK's side of it (its session on those clients, its telemetry opt-out, its log levels).

Offline (``--local``) the commands talk to a moto server: the one ``AWS_ENDPOINT_URL`` names (its
state is left for inspection), or one started here on 127.0.0.1 and a free port for the duration
of the command.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Iterator, Optional

from awsinfra import clients as _clients
from awsinfra.clients import DEFAULT_REGION, RETRIES, boto_session, client, endpoint_url, free_port, region

from . import settings as mlops_settings

__all__ = [
    "DEFAULT_REGION",
    "LOCAL_ROLE",
    "RETRIES",
    "boto_session",
    "client",
    "endpoint_url",
    "ensure_bucket",
    "free_port",
    "moto_server",
    "offline_credentials",
    "quiet_logs",
    "region",
    "sagemaker_session",
    "validate_sdk_config_once",
]

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")  # v2's sagemaker.workflow is what build uses, on purpose

LOCAL_ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"  # local mode wants a full ARN, never checks it


def offline_credentials() -> None:
    """Fake credentials and region where none are set, and the SDK's telemetry off (it calls home):
    what evaluation/'s local mode sets up, in the same environment (.venv-sdk)."""
    # imported here: evaluation.common quiets the SDK's loggers on import (quiet_logs keeps
    # DEEPAR_MLOPS_DEBUG meaning all of them)
    from evaluation.common import local_environment

    local_environment()


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """awsinfra's moto server (``AWS_ENDPOINT_URL`` when set, else one on a free loopback port for
    the block), with the SDK's offline setup first."""
    offline_credentials()
    with _clients.moto_server() as url:
        yield url


def sagemaker_session(default_bucket: Optional[str] = None):
    """A ``sagemaker.Session`` on boto3 with retries. Against moto pass ``default_bucket``: the SDK's
    own lookup calls STS on AWS's endpoint."""
    import sagemaker

    session = boto_session()
    return sagemaker.Session(
        boto_session=session,
        sagemaker_client=client("sagemaker", session),
        sagemaker_runtime_client=client("sagemaker-runtime", session),
        default_bucket=default_bucket,
    )


def ensure_bucket(name: str) -> None:
    _clients.ensure_bucket(client, name)


def quiet_logs() -> None:
    """The SDK logs every config lookup, compose file and step at INFO, moto's server every request:
    keep the containers' own output and our lines readable (DEEPAR_MLOPS_DEBUG keeps them all)."""
    import logging

    if mlops_settings.current().debug:
        mlops_settings.keep_evaluation_logs()
    else:
        for name in ("sagemaker", "werkzeug", "botocore.credentials"):
            logging.getLogger(name).setLevel(logging.WARNING)


def validate_sdk_config_once() -> None:
    """The SDK validates its whole config against a large JSON schema on every value it looks up
    (about 75 lookups to define this pipeline: 45 s of a 50 s upsert, measured with cProfile). The
    config does not change within a command, so validate each distinct config once."""
    import sagemaker.utils

    original = sagemaker.utils.validate_sagemaker_config
    if getattr(original, "validates_once", False):
        return
    seen: set[str] = set()

    def validate(config: Optional[dict] = None) -> None:
        key = json.dumps(config, sort_keys=True, default=str)
        if key not in seen:
            original(config)
            seen.add(key)

    validate.validates_once = True  # type: ignore[attr-defined]
    sagemaker.utils.validate_sagemaker_config = validate
