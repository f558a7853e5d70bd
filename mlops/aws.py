"""AWS plumbing shared by every mlops command: sessions and clients that honour ``AWS_ENDPOINT_URL``,
botocore retries, and a local moto server for offline runs.

Offline (``--local``) the commands talk to a moto server: the one ``AWS_ENDPOINT_URL`` names (its
state is left for inspection), or one started here on 127.0.0.1 and a free port for the duration
of the command.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from typing import Any, Iterator, Optional

from botocore.config import Config

os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")  # v2's sagemaker.workflow is what build uses, on purpose

DEFAULT_REGION = "us-east-1"
LOCAL_ROLE = "arn:aws:iam::123456789012:role/SageMakerRole"  # local mode wants a full ARN, never checks it
# Standard mode retries throttling and 5xx with backoff; 10 attempts rides out a control-plane hiccup.
RETRIES = Config(retries={"max_attempts": 10, "mode": "standard"})


def region() -> str:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


def endpoint_url() -> Optional[str]:
    return os.environ.get("AWS_ENDPOINT_URL") or None


def offline_credentials() -> None:
    """Fake credentials and region where none are set, and the SDK's telemetry off (it calls home):
    what evaluation/'s local mode sets up, in the same environment (.venv-sdk)."""
    # imported here: evaluation.common quiets the SDK's loggers on import (quiet_logs keeps
    # DEEPAR_MLOPS_DEBUG meaning all of them)
    from evaluation.common import local_environment

    local_environment()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """The moto endpoint for an offline run: ``AWS_ENDPOINT_URL`` when set (left running, state kept),
    else a ``ThreadedMotoServer`` on 127.0.0.1 started here and stopped on exit."""
    offline_credentials()
    existing = endpoint_url()
    if existing:
        yield existing
        return
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    os.environ["AWS_ENDPOINT_URL"] = url
    try:
        yield url
    finally:
        os.environ.pop("AWS_ENDPOINT_URL", None)
        server.stop()


def boto_session():
    import boto3

    return boto3.Session(region_name=region())


def client(service: str, session: Any = None):
    """A boto3 client with retries; ``AWS_ENDPOINT_URL`` applies (boto3 reads it for every service)."""
    return (session or boto_session()).client(service, config=RETRIES, endpoint_url=endpoint_url())


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
    s3 = client("s3")
    try:
        s3.head_bucket(Bucket=name)
    except s3.exceptions.ClientError:
        where = region()
        location = {} if where == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": where}}
        s3.create_bucket(Bucket=name, **location)


def quiet_logs() -> None:
    """The SDK logs every config lookup, compose file and step at INFO, moto's server every request:
    keep the containers' own output and our lines readable (DEEPAR_MLOPS_DEBUG keeps them all)."""
    import logging

    if os.environ.get("DEEPAR_MLOPS_DEBUG"):
        os.environ.setdefault("DEEPAR_EVAL_DEBUG", "1")  # evaluation.common's switch, for offline_credentials
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
