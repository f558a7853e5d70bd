"""Every serving setting, derived in one place from SageMaker's environment variables.

Timeouts: SageMaker allows 60 s per real-time invocation and sends SIGKILL 30 s after SIGTERM,
so the request timeout defaults to 60 s and the graceful shutdown window stays under 30 s.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Mapping, Optional

from pydantic import AliasChoices, Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import NoDecode

from ..contract import BATCH_BODY_BYTES_PER_SECOND
from ..errors import UserError
from ..runtimes import INFERENCE_RUNTIMES
from ..settings import EnvironmentSettings, SettingsError
from .codec import InferenceConfig, inference_config_from_env
from .multi_model import MultiModelSettings

REALTIME_PAYLOAD_MB = 6  # SageMaker's real-time limit; batch transform allows up to 100 MB
BATCH_PAYLOAD_LIMIT_MB = 100
REALTIME_RESPONSE_MB = 6  # InvokeEndpoint's response limit: a larger answer could never reach the client
# The most of a streamed body (batch transform, async) held in memory at once: one JSON Lines line, or a
# whole {"instances": ...} document, which is decoded in one piece (#23 item 13: async bodies reach 1 GB).
# 100 MB is batch transform's largest MaxPayloadInMB, i.e. what a single-record batch request already
# held; decoded JSON takes ~3-5x its text (measured with orjson on forecast requests), so ~0.5 GB, which
# fits the ~0.9 GB of request headroom in WORKER_MEMORY_GB. DEEPAR_MAX_DOCUMENT_MB changes it.
MAX_DOCUMENT_MB = 100
BATCH_RESPONSE_MB = 1024  # batch answers are streamed; this bounds what one request can make SageMaker store
# Per worker: ~0.47 GB RSS once the model is loaded, ~0.58 GB after a soak with 100-series requests
# (bench/serve_throughput.py); the rest is headroom for a request at the sample-path budget.
WORKER_MEMORY_GB = 1.5


def available_memory_gb() -> float:
    """The container's memory limit (cgroup v2/v1) or, failing that, the machine's memory."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = open(path).read().strip()
        except OSError:
            continue
        if raw.isdigit() and int(raw) < 1 << 60:
            return int(raw) / 2**30
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def cpu_quota(v2: str = "/sys/fs/cgroup/cpu.max", v1: str = "/sys/fs/cgroup/cpu/cpu.cfs_quota_us") -> Optional[float]:
    """The container's CPU limit in CPUs (``docker run --cpus``, an ECS task's cpu), or None when unlimited.

    A quota does not change ``os.cpu_count()``: a 1-CPU Fargate task or ``--cpus 1`` container on a
    2-core host still counts 2 cores, and two workers would share one CPU's time."""
    try:
        quota, period = open(v2).read().split()[:2]
    except (OSError, ValueError):
        try:
            quota = open(v1).read().strip()
            period = open(os.path.join(os.path.dirname(v1), "cpu.cfs_period_us")).read().strip()
        except OSError:
            return None
    if quota in ("max", "-1") or not quota.lstrip("-").isdigit() or not period.isdigit() or int(period) <= 0:
        return None
    return int(quota) / int(period)


def available_cpus() -> int:
    """The CPUs this process may use: the machine's, capped by the container's CPU quota (rounded up)."""
    cpus = os.cpu_count() or 1
    quota = cpu_quota()
    return cpus if quota is None else max(1, min(cpus, math.ceil(quota)))


def default_workers(cpus: int, memory_gb: float) -> int:
    """One worker per CPU, as memory allows.

    Each worker forecasts on one intra-op thread, so one per CPU keeps every core busy: c=8 one-series
    requests on 2 CPUs were answered at 146.8 req/s by 2 workers against 92.0 by 1 (README, "Speed").
    Starting several is cheap now: with the ONNX runtime no process imports torch, and with torch the
    master loads the model before forking, so workers no longer import torch all at once (which once
    left /ping unanswered for seconds and kept the default at one worker per 2 CPUs).
    """
    by_memory = int(memory_gb // WORKER_MEMORY_GB)
    return max(1, min(cpus, by_memory))


# ---------------------------------------------------------------- hosting modes (README, "Hosting modes")
# SageMaker runs the same container for real-time, asynchronous and serverless endpoints and does
# not tell it which: the model's environment does, with DEEPAR_HOSTING_MODE. Each mode only changes
# defaults; every explicit variable (SAGEMAKER_MODEL_SERVER_TIMEOUT, ...) still wins.
HOSTING_MODES = ("realtime", "async", "serverless")
ASYNC_PAYLOAD_MB = 1024  # async inference takes payloads up to 1 GB from S3
ASYNC_TIMEOUT_S = 3600  # the largest InvocationTimeoutSeconds
SERVERLESS_PAYLOAD_MB = 4  # serverless request and response limit
SERVERLESS_TIMEOUT_S = 60
# A worker after a soak (~0.58 GB RSS, README "Speed"), and a generous bound on one request in flight
# at serverless sizes (a 4 MB body decoded, plus samples and quantiles at the sample-path budget).
WORKER_RSS_GB = 0.6
REQUEST_MEMORY_GB = 0.25
MAX_THREADS = 16


@dataclass(frozen=True)
class HostingDefaults:
    """What a hosting mode changes; None keeps the real-time (or batch) default."""

    mode: str = "realtime"
    payload_mb: Optional[int] = None
    request_timeout: Optional[int] = None
    response_mb: Optional[int] = None
    workers: Optional[int] = None
    threads: Optional[int] = None

    @property
    def payload_limit_mb(self) -> int:
        """The largest SAGEMAKER_MAX_PAYLOAD_IN_MB accepted."""
        return ASYNC_PAYLOAD_MB if self.mode == "async" else BATCH_PAYLOAD_LIMIT_MB


def serverless_threads(memory_gb: float) -> int:
    """Request threads of the one serverless worker: as many requests as the memory left after the
    worker holds, plus one so /ping answers while they run (1 GB: 2 threads; 6 GB: 16)."""
    spare = int(max(0.0, memory_gb - WORKER_RSS_GB) // REQUEST_MEMORY_GB)
    return 1 + max(1, min(MAX_THREADS - 1, spare))


def hosting_defaults(mode: str, memory_gb: float) -> HostingDefaults:
    if mode == "async":
        # Bodies are streamed (as in batch transform): a 1 GB body never sits in a worker's memory.
        return HostingDefaults(mode, ASYNC_PAYLOAD_MB, ASYNC_TIMEOUT_S, ASYNC_PAYLOAD_MB)
    if mode == "serverless":
        # AWS recommends one worker (one model copy) for serverless endpoints.
        return HostingDefaults(
            mode, SERVERLESS_PAYLOAD_MB, SERVERLESS_TIMEOUT_S, SERVERLESS_PAYLOAD_MB, 1, serverless_threads(memory_gb)
        )
    return HostingDefaults()


def default_torch_threads() -> int:
    """One intra-op thread per worker (torch or onnxruntime): a batched forward pass is a chain of small ops.

    A second thread only adds synchronisation on these sizes, and OpenMP threads spin against
    everything else on the cores (1 worker x 2 threads answered 11x fewer c=8 requests than
    2 workers x 1 thread on 2 shared cores; README, "Speed").
    """
    return 1


def _comma_list(value: Any) -> Any:
    return tuple(f.strip() for f in value.split(",") if f.strip()) if isinstance(value, str) else value


class ServingEnvironment(EnvironmentSettings):
    """Serving (`serve`: single-model, multi-model, batch transform, async, serverless endpoints).

    Unset values take the defaults described; an explicit variable always wins over a hosting mode's default."""

    hosting_mode: str = Field(
        "realtime",
        validation_alias="DEEPAR_HOSTING_MODE",
        description=f"one of {', '.join(HOSTING_MODES)}: which SageMaker endpoint type runs the container; each "
        "changes defaults only (payload, timeout, response size, workers, threads)",
    )
    workers: Optional[int] = Field(
        None,
        ge=1,
        le=10**9,
        validation_alias=AliasChoices("SAGEMAKER_MODEL_SERVER_WORKERS", "MODEL_SERVER_WORKERS"),
        description="gunicorn workers; unset: one per CPU as memory allows (1.5 GB each), one when serverless",
    )
    request_timeout: Optional[int] = Field(
        None,
        ge=1,
        le=3600,
        validation_alias=AliasChoices("SAGEMAKER_MODEL_SERVER_TIMEOUT", "MODEL_SERVER_TIMEOUT"),
        description="seconds per request; unset: 60, 3600 when async",
    )
    batch: bool = Field(False, validation_alias="SAGEMAKER_BATCH", description="batch transform (set by SageMaker)")
    multi_model: bool = Field(
        False,
        validation_alias="SAGEMAKER_MULTI_MODEL",
        description="a multi-model endpoint: SageMaker sets it in containers whose image has the multi-models label",
    )
    max_payload_mb: Optional[int] = Field(
        None,
        ge=1,
        validation_alias="SAGEMAKER_MAX_PAYLOAD_IN_MB",
        description="largest request body (MB); unset: 6 real-time, 4 serverless, 1024 async, batch: what one "
        "worker forecasts inside the timeout (at most 100)",
    )
    front: Literal["nginx", "gunicorn"] = Field(
        "nginx", validation_alias="DEEPAR_FRONT", description="what accepts connections in front of gunicorn"
    )
    host: str = Field("0.0.0.0", validation_alias="DEEPAR_BIND_HOST", description="address the server listens on")
    port: int = Field(8080, ge=1, le=65535, validation_alias="SAGEMAKER_BIND_TO_PORT", description="port")
    threads: Optional[int] = Field(
        None,
        ge=1,
        le=256,
        validation_alias="DEEPAR_SERVER_THREADS",
        description=f"request threads per worker; unset: {MAX_THREADS}, serverless: by memory",
    )
    inference_threads: Optional[int] = Field(
        None,
        ge=1,
        le=1024,
        validation_alias=AliasChoices("DEEPAR_INFERENCE_THREADS", "DEEPAR_TORCH_THREADS"),
        description="intra-op threads of a worker's runtime (DEEPAR_TORCH_THREADS: the former name); unset: 1",
    )
    keepalive: int = Field(75, ge=1, le=3600, validation_alias="DEEPAR_KEEPALIVE", description="keep-alive seconds")
    max_concurrent_transforms: Optional[int] = Field(
        None,
        ge=1,
        le=10**9,
        validation_alias="SAGEMAKER_MAX_CONCURRENT_TRANSFORMS",
        description="batch transform's parallel requests (set by SageMaker); unset: the workers",
    )
    batch_strategy: str = Field(
        "MULTI_RECORD",
        validation_alias="SAGEMAKER_BATCH_STRATEGY",
        description="batch transform's MULTI_RECORD or SINGLE_RECORD (set by SageMaker)",
    )
    max_sample_paths: Optional[int] = Field(
        None,
        ge=1,
        le=10**9,
        validation_alias="DEEPAR_MAX_SAMPLE_PATHS",
        description="series x samples per request; unset: 200,000 per started minute of the timeout, 10x in batch",
    )
    max_batch_series: int = Field(
        256, ge=1, le=100_000, validation_alias="DEEPAR_MAX_BATCH_SERIES", description="series per forward pass"
    )
    batch_wait_ms: int = Field(
        0,
        ge=0,
        le=1000,
        validation_alias="DEEPAR_BATCH_WAIT_MS",
        description="how long a forward pass waits for other requests' series to join it",
    )
    forward_fields: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        validation_alias="DEEPAR_FORWARD_FIELDS",
        description="comma-separated request fields copied into each answer (batch transform joins)",
    )
    inference_config: Optional[str] = Field(
        None,
        validation_alias="DEEPAR_INFERENCE_CONFIG",
        description='JSON: the default configuration of requests without one (`{"num_samples": 50}`)',
    )
    base_dir: str = Field(
        "/opt/ml", validation_alias="SAGEMAKER_BASE_DIR", description="SageMaker's /opt/ml (tests move it)"
    )
    max_pass_paths: int = Field(
        6400,
        ge=1,
        le=10**7,
        validation_alias="DEEPAR_MAX_PASS_SAMPLE_PATHS",
        description="sample paths of one forward pass",
    )
    max_response_mb: Optional[int] = Field(
        None,
        ge=1,
        le=100_000,
        validation_alias="DEEPAR_MAX_RESPONSE_MB",
        description="largest answer (MB); unset: 6 real-time, 4 serverless, 1024 async and batch",
    )
    max_document_mb: Optional[int] = Field(
        None,
        ge=1,
        le=100_000,
        validation_alias="DEEPAR_MAX_DOCUMENT_MB",
        description=f"most of a streamed body held at once (one line or document, MB); unset: {MAX_DOCUMENT_MB} "
        "or the payload limit if smaller",
    )
    body_timeout: int = Field(
        10, ge=1, le=3600, validation_alias="DEEPAR_BODY_TIMEOUT", description="seconds to receive a request body"
    )
    ready_dir: Optional[str] = Field(
        None,
        validation_alias="DEEPAR_READY_DIR",
        description="folder where workers mark themselves ready (`serve` sets it for its workers)",
    )
    inference_runtime: str = Field(
        "onnx",
        validation_alias="DEEPAR_INFERENCE_RUNTIME",
        description=f"one of {', '.join(INFERENCE_RUNTIMES)}: what runs a torch model's network (onnx when the "
        "artifact has network.onnx)",
    )

    _split_fields = field_validator("forward_fields", mode="before")(_comma_list)

    @field_validator("inference_runtime", mode="before")
    @classmethod
    def _any_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("batch_strategy", mode="before")
    @classmethod
    def _sagemaker_spelling(cls, value: Any) -> Any:
        """The API's MultiRecord / SingleRecord, as the container sees them in any case."""
        if not isinstance(value, str):
            return value
        return value.upper().replace("MULTIRECORD", "MULTI_RECORD").replace("SINGLERECORD", "SINGLE_RECORD")

    @field_validator("hosting_mode", "inference_runtime")
    @classmethod
    def _one_of_its_choices(cls, value: str, info: ValidationInfo) -> str:
        choices = {"hosting_mode": HOSTING_MODES, "inference_runtime": INFERENCE_RUNTIMES}[info.field_name or ""]
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value

    @field_validator("inference_config")
    @classmethod
    def _usable_configuration(cls, value: Optional[str]) -> Optional[str]:
        try:  # the contract's check, at start rather than on the first request
            inference_config_from_env(value)
        except UserError as error:
            raise ValueError(str(error).removeprefix("DEEPAR_INFERENCE_CONFIG").lstrip(": ")) from None
        return value


@dataclass(frozen=True)
class ServerConfig:
    host: str
    port: int
    workers: int
    threads: int
    inference_threads: int  # intra-op threads of the worker's runtime (torch or onnxruntime)
    request_timeout: int
    graceful_timeout: int
    keepalive: int
    batch_mode: bool
    max_payload_bytes: int
    max_concurrent_transforms: int
    batch_strategy: str
    max_sample_paths: int
    max_batch_series: int
    batch_wait_ms: float
    forward_fields: tuple[str, ...]
    inference_defaults: InferenceConfig
    model_dir: str
    max_pass_paths: int = 6400
    max_response_bytes: int = REALTIME_RESPONSE_MB * 2**20
    max_document_bytes: int = MAX_DOCUMENT_MB * 2**20  # one line or one whole JSON document (streamed bodies)
    body_timeout: int = 10
    front: str = "nginx"
    ready_dir: Optional[str] = None
    hosting_mode: str = "realtime"
    inference_runtime: str = "onnx"
    multi_model: Optional[MultiModelSettings] = None  # set on a multi-model endpoint (SAGEMAKER_MULTI_MODEL=true)

    @property
    def torch_threads(self) -> int:
        """The former name of ``inference_threads``."""
        return self.inference_threads

    @property
    def streams_bodies(self) -> bool:
        """Bodies spooled and answered line by line as computed: batch transform, and async's large payloads."""
        return self.batch_mode or self.hosting_mode == "async"

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "ServerConfig":
        settings = ServingEnvironment.from_env(env)
        return cls.from_settings(settings, MultiModelSettings.from_env(env) if settings.multi_model else None)

    @classmethod
    def from_settings(
        cls, settings: ServingEnvironment, multi_model: Optional[MultiModelSettings] = None
    ) -> "ServerConfig":
        """What the variables mean on this machine (its CPUs and memory) and in this hosting mode."""
        memory_gb = available_memory_gb()
        hosting = hosting_defaults(settings.hosting_mode, memory_gb)
        workers = settings.workers or hosting.workers or default_workers(available_cpus(), memory_gb)
        request_timeout = settings.request_timeout or hosting.request_timeout or 60
        batch_mode = settings.batch
        payload_mb = settings.max_payload_mb
        if payload_mb is not None and payload_mb > hosting.payload_limit_mb:
            raise SettingsError(
                [
                    f"environment variable SAGEMAKER_MAX_PAYLOAD_IN_MB={str(payload_mb)!r}: must be between 1 and "
                    f"{hosting.payload_limit_mb} (hosting mode {hosting.mode})"
                ]
            )
        if payload_mb is None:
            payload_mb = batch_payload_mb(request_timeout) if batch_mode else hosting.payload_mb or REALTIME_PAYLOAD_MB
        # Sample paths per request: ~2,000 series x 100 samples finish well inside 60 s on one core.
        default_paths = 200_000 * max(1, request_timeout // 60)
        response_mb = settings.max_response_mb or (
            BATCH_RESPONSE_MB if batch_mode else hosting.response_mb or REALTIME_RESPONSE_MB
        )
        return cls(
            host=settings.host,
            port=settings.port,
            workers=workers,
            threads=settings.threads or hosting.threads or MAX_THREADS,
            inference_threads=settings.inference_threads or default_torch_threads(),
            request_timeout=request_timeout,
            graceful_timeout=min(25, request_timeout),
            keepalive=settings.keepalive,
            batch_mode=batch_mode,
            max_payload_bytes=payload_mb * 1024 * 1024,
            max_concurrent_transforms=settings.max_concurrent_transforms or workers,
            batch_strategy=settings.batch_strategy,
            max_sample_paths=settings.max_sample_paths or default_paths * (10 if batch_mode else 1),
            max_batch_series=settings.max_batch_series,
            batch_wait_ms=float(settings.batch_wait_ms),
            forward_fields=settings.forward_fields,
            inference_defaults=inference_config_from_env(settings.inference_config),
            model_dir=os.path.abspath(os.path.join(settings.base_dir, "model")),  # gunicorn chdirs to the app folder
            max_pass_paths=settings.max_pass_paths,
            max_response_bytes=response_mb * 2**20,
            max_document_bytes=(settings.max_document_mb or min(MAX_DOCUMENT_MB, payload_mb)) * 2**20,
            body_timeout=settings.body_timeout,
            front=settings.front,
            ready_dir=settings.ready_dir,
            hosting_mode=hosting.mode,
            inference_runtime=settings.inference_runtime,
            multi_model=multi_model,
        )


def batch_payload_mb(request_timeout: int) -> int:
    """The largest batch body (MB) one worker forecasts inside the request timeout (MaxPayloadInMB default)."""
    return max(1, min(BATCH_PAYLOAD_LIMIT_MB, request_timeout * BATCH_BODY_BYTES_PER_SECOND // 2**20))


# ---------------------------------------------------------------- the model outside SageMaker (README, "ECS")
# SageMaker downloads and extracts ModelDataUrl into /opt/ml/model before `serve` starts. Elsewhere (ECS,
# a plain `docker run`) DEEPAR_MODEL_URL names the model and `serve` fetches it itself
# (sagemaker_deepar/serving/model_fetch.py); without the variable nothing changes.
MODEL_URL_VARIABLE = "DEEPAR_MODEL_URL"
MODEL_URL_SCHEMES = ("s3", "file")


class ModelSource(EnvironmentSettings):
    """The model outside SageMaker (`serve` on ECS or `docker run`; read only when DEEPAR_MODEL_URL is set).

    Where `serve` fetches the model from before anything listens, and how hard it tries."""

    url: str = Field(
        validation_alias=MODEL_URL_VARIABLE,
        description="the model: s3://bucket/key (a model.tar.gz or a folder) or an absolute local path; "
        "unset: SageMaker put it in /opt/ml/model",
    )
    attempts: int = Field(
        5,
        ge=1,
        le=20,
        validation_alias="DEEPAR_MODEL_FETCH_ATTEMPTS",
        description="attempts per S3 request (botocore's standard retries: throttling, 5xx, connection errors)",
    )
    timeout: int = Field(
        60,
        ge=1,
        le=3600,
        validation_alias="DEEPAR_MODEL_FETCH_TIMEOUT",
        description="seconds to connect, and between two reads of a response",
    )
    multi_model: bool = Field(
        False, validation_alias="SAGEMAKER_MULTI_MODEL", description="a multi-model endpoint (set by SageMaker)"
    )
    region: Optional[str] = Field(
        None,
        validation_alias=AliasChoices("AWS_REGION", "AWS_DEFAULT_REGION"),
        description="the bucket's region (the SDK's own variables); unset: botocore's configuration",
    )

    @property
    def scheme(self) -> str:
        """ "s3" or "file"."""
        scheme, sep, _ = self.url.partition("://")
        return scheme.lower() if sep else "file"

    @property
    def location(self) -> str:
        """s3: "bucket/key" (key may be a folder prefix); file: an absolute path."""
        _, sep, rest = self.url.partition("://")
        return rest if sep else self.url

    @property
    def bucket(self) -> str:
        return self.location.split("/", 1)[0]

    @property
    def key(self) -> str:
        return self.location.split("/", 1)[1] if "/" in self.location else ""

    @model_validator(mode="after")
    def _usable_url(self) -> "ModelSource":
        where = f"environment variable {MODEL_URL_VARIABLE}={self.url!r}"
        if self.multi_model:
            raise ValueError(f"{where}: a multi-model endpoint (SAGEMAKER_MULTI_MODEL=true) loads its models itself")
        if self.scheme not in MODEL_URL_SCHEMES:
            raise ValueError(
                f"{where}: unsupported scheme {self.scheme!r}: use s3://bucket/key (a model.tar.gz or a folder), "
                "or a local path"
            )
        if self.scheme == "s3" and (not self.bucket or not self.key.strip("/")):
            raise ValueError(f"{where}: must name an object or folder inside the bucket: s3://bucket/path/model.tar.gz")
        if self.scheme == "file" and not os.path.isabs(self.location):
            raise ValueError(f"{where}: a local model path must be absolute")
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Optional["ModelSource"]:  # type: ignore[override]
        """None when DEEPAR_MODEL_URL is unset or empty (SageMaker put the model in place)."""
        if not env.get(MODEL_URL_VARIABLE, "").strip():
            return None
        return super().from_env(env)
