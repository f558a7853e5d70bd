"""One way to make AWS clients: boto3 with botocore retries, the region from the environment and
``AWS_ENDPOINT_URL`` honoured (a moto server offline); plus what an offline run needs (throwaway
credentials, a moto server on a free loopback port).

    aws = Aws()                 # a callable client factory, one client per service
    aws("s3").list_buckets()
    aws.region, aws.account, aws.offline
"""

from __future__ import annotations

import contextlib
import os
import socket
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterator, Literal, Optional

import boto3
from botocore.config import Config

DEFAULT_REGION = "us-east-1"

RetryMode = Literal["standard", "adaptive", "legacy"]
# Standard mode retries throttling and 5xx with backoff; 10 attempts rides out a control-plane hiccup.
DEFAULT_MAX_ATTEMPTS = 10


def retries(
    mode: RetryMode = "standard", max_attempts: int = DEFAULT_MAX_ATTEMPTS, read_timeout: Optional[float] = None
) -> Config:
    """botocore's retry configuration (``adaptive`` also rate-limits the client after throttling)."""
    extra: dict[str, Any] = {} if read_timeout is None else {"read_timeout": read_timeout}
    return Config(retries={"max_attempts": max_attempts, "mode": mode}, **extra)


RETRIES = retries()


def region() -> str:
    """``AWS_REGION``, else ``AWS_DEFAULT_REGION``, else us-east-1."""
    from . import settings  # here, when a setting is needed: importing the clients stays cheap

    return settings.current().region or DEFAULT_REGION


def endpoint_url() -> Optional[str]:
    """``AWS_ENDPOINT_URL`` when set: every client then talks to it (a moto server offline)."""
    from . import settings

    return settings.current().endpoint_url


def offline() -> bool:
    """A local stand-in (moto server) answers instead of AWS."""
    return endpoint_url() is not None


def boto_session(region_name: Optional[str] = None) -> boto3.Session:
    return boto3.Session(region_name=region_name or region())


def client(service: str, session: Optional[boto3.Session] = None, config: Config = RETRIES) -> Any:
    """A boto3 client with retries on the environment's region; ``AWS_ENDPOINT_URL`` applies."""
    return (session or boto_session()).client(service, config=config, endpoint_url=endpoint_url())


@dataclass
class Aws:
    """A callable client factory (``aws("s3")``), one client per service, with the account and
    region it works in and whether it is offline (``AWS_ENDPOINT_URL`` set)."""

    session: boto3.Session = field(default_factory=boto_session)
    config: Config = field(default_factory=lambda: RETRIES)

    def __post_init__(self) -> None:
        self.clients: dict[str, Any] = {}

    def __call__(self, service: str) -> Any:
        if service not in self.clients:
            self.clients[service] = client(service, self.session, self.config)
        return self.clients[service]

    @property
    def region(self) -> str:
        return self.session.region_name or DEFAULT_REGION

    @cached_property
    def account(self) -> str:
        return str(self("sts").get_caller_identity()["Account"])

    @property
    def offline(self) -> bool:
        """Offline (moto server): e.g. its event source mappings would consume messages without
        running the function, and its CloudFormation skips some resource types."""
        return offline()


def account_and_region(aws: Any) -> tuple[str, str]:
    """The caller's account and the client factory's region (any ``fn(service) -> client``)."""
    sts = aws("sts")
    return str(sts.get_caller_identity()["Account"]), str(sts.meta.region_name)


def offline_credentials() -> None:
    """Throwaway credentials and a region where none are set: moto accepts any, and botocore must
    never find (and sign with) real ones for an offline run. (A write to the environment the SDKs read.)"""
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "local")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "local")
    os.environ.setdefault("AWS_DEFAULT_REGION", DEFAULT_REGION)
    os.environ.setdefault("AWS_REGION", os.environ["AWS_DEFAULT_REGION"])


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a server started right after)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """The moto endpoint for an offline run: ``AWS_ENDPOINT_URL`` when set (left running, state kept),
    else a ``ThreadedMotoServer`` on 127.0.0.1 started here (``AWS_ENDPOINT_URL`` set meanwhile)
    and stopped on exit. Throwaway credentials are set where none are."""
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
    os.environ["AWS_ENDPOINT_URL"] = url  # every client (ours, the SDKs', botocore's) talks to it meanwhile
    try:
        yield url
    finally:
        os.environ.pop("AWS_ENDPOINT_URL", None)
        server.stop()


def ensure_bucket(aws: Any, name: str, region_name: Optional[str] = None, private: bool = False) -> None:
    """The bucket, created when missing (in ``region_name``, default the environment's); with
    ``private`` also encrypted (SSE-S3) and every public access blocked."""
    s3 = aws("s3")
    try:
        s3.head_bucket(Bucket=name)
    except s3.exceptions.ClientError:
        where = region_name or region()
        location = {} if where == "us-east-1" else {"CreateBucketConfiguration": {"LocationConstraint": where}}
        s3.create_bucket(Bucket=name, **location)
    if private:
        s3.put_bucket_encryption(
            Bucket=name,
            ServerSideEncryptionConfiguration={
                "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}]
            },
        )
        s3.put_public_access_block(
            Bucket=name,
            PublicAccessBlockConfiguration={
                k: True for k in ("BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets")
            },
        )
