"""Every serving setting, derived in one place from SageMaker's environment variables.

Timeouts: SageMaker allows 60 s per real-time invocation and sends SIGKILL 30 s after SIGTERM,
so the request timeout defaults to 60 s and the graceful shutdown window stays under 30 s.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Mapping, Optional, overload

from ..contract import BATCH_BODY_BYTES_PER_SECOND
from ..errors import UserError
from ..runtimes import INFERENCE_RUNTIMES
from .codec import InferenceConfig, inference_config_from_env

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


@overload
def _int(env: Mapping[str, str], name: str, default: int, low: int = ..., high: int = ...) -> int: ...
@overload
def _int(env: Mapping[str, str], name: str, default: None, low: int = ..., high: int = ...) -> Optional[int]: ...
def _int(env: Mapping[str, str], name: str, default: Optional[int], low: int = 1, high: int = 10**9) -> Optional[int]:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise UserError(f"environment variable {name}={raw!r} is not an integer") from None
    if not low <= value <= high:
        raise UserError(f"environment variable {name}={raw!r} must be between {low} and {high}")
    return value


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
    if mode != "realtime":
        raise UserError(f"environment variable DEEPAR_HOSTING_MODE={mode!r} must be one of {', '.join(HOSTING_MODES)}")
    return HostingDefaults()


def inference_runtime(env: Mapping[str, str]) -> str:
    """DEEPAR_INFERENCE_RUNTIME: what runs a torch model's network (onnx when the artifact has network.onnx)."""
    runtime = env.get("DEEPAR_INFERENCE_RUNTIME", "").strip().lower() or "onnx"
    if runtime not in INFERENCE_RUNTIMES:
        raise UserError(
            f"environment variable DEEPAR_INFERENCE_RUNTIME={env['DEEPAR_INFERENCE_RUNTIME']!r} "
            f"must be one of {', '.join(INFERENCE_RUNTIMES)}"
        )
    return runtime


def default_torch_threads() -> int:
    """One intra-op thread per worker (torch or onnxruntime): a batched forward pass is a chain of small ops.

    A second thread only adds synchronisation on these sizes, and OpenMP threads spin against
    everything else on the cores (1 worker x 2 threads answered 11x fewer c=8 requests than
    2 workers x 1 thread on 2 shared cores; README, "Speed").
    """
    return 1


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

    @property
    def torch_threads(self) -> int:
        """The former name of ``inference_threads``."""
        return self.inference_threads

    @property
    def streams_bodies(self) -> bool:
        """Bodies spooled and answered line by line as computed: batch transform, and async's large payloads."""
        return self.batch_mode or self.hosting_mode == "async"

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> "ServerConfig":
        cpus = available_cpus()
        memory_gb = available_memory_gb()
        hosting = hosting_defaults(env.get("DEEPAR_HOSTING_MODE", "realtime"), memory_gb)
        workers = (
            _int(env, "SAGEMAKER_MODEL_SERVER_WORKERS", None)
            or _int(env, "MODEL_SERVER_WORKERS", None)
            or hosting.workers
            or default_workers(cpus, memory_gb)
        )
        request_timeout = (
            _int(env, "SAGEMAKER_MODEL_SERVER_TIMEOUT", None, high=3600)
            or _int(env, "MODEL_SERVER_TIMEOUT", None, high=3600)
            or hosting.request_timeout
            or 60
        )
        batch_mode = env.get("SAGEMAKER_BATCH", "").lower() == "true"
        payload_mb = _int(env, "SAGEMAKER_MAX_PAYLOAD_IN_MB", None, high=hosting.payload_limit_mb)
        if payload_mb is None:
            payload_mb = batch_payload_mb(request_timeout) if batch_mode else hosting.payload_mb or REALTIME_PAYLOAD_MB
        front = env.get("DEEPAR_FRONT", "nginx")
        if front not in ("nginx", "gunicorn"):
            raise UserError(f"environment variable DEEPAR_FRONT={front!r} must be nginx or gunicorn")
        # Sample paths per request: ~2,000 series x 100 samples finish well inside 60 s on one core.
        default_paths = 200_000 * max(1, request_timeout // 60)
        root = env.get("SAGEMAKER_BASE_DIR", "/opt/ml")
        return cls(
            host=env.get("DEEPAR_BIND_HOST", "0.0.0.0"),
            port=_int(env, "SAGEMAKER_BIND_TO_PORT", 8080, high=65535),
            workers=workers,
            threads=_int(env, "DEEPAR_SERVER_THREADS", hosting.threads or MAX_THREADS, high=256),
            # DEEPAR_TORCH_THREADS: the name from before the ONNX runtime, still honoured.
            inference_threads=_int(
                env,
                "DEEPAR_INFERENCE_THREADS",
                _int(env, "DEEPAR_TORCH_THREADS", default_torch_threads(), high=1024),
                high=1024,
            ),
            request_timeout=request_timeout,
            graceful_timeout=min(25, request_timeout),
            keepalive=_int(env, "DEEPAR_KEEPALIVE", 75, high=3600),
            batch_mode=batch_mode,
            max_payload_bytes=payload_mb * 1024 * 1024,
            max_concurrent_transforms=_int(env, "SAGEMAKER_MAX_CONCURRENT_TRANSFORMS", workers),
            batch_strategy=env.get("SAGEMAKER_BATCH_STRATEGY", "MULTI_RECORD")
            .upper()
            .replace("MULTIRECORD", "MULTI_RECORD")
            .replace("SINGLERECORD", "SINGLE_RECORD"),
            max_sample_paths=_int(env, "DEEPAR_MAX_SAMPLE_PATHS", default_paths * (10 if batch_mode else 1)),
            max_batch_series=_int(env, "DEEPAR_MAX_BATCH_SERIES", 256, high=100_000),
            batch_wait_ms=float(_int(env, "DEEPAR_BATCH_WAIT_MS", 0, low=0, high=1000)),
            forward_fields=tuple(f.strip() for f in env.get("DEEPAR_FORWARD_FIELDS", "").split(",") if f.strip()),
            inference_defaults=inference_config_from_env(env.get("DEEPAR_INFERENCE_CONFIG")),
            model_dir=os.path.abspath(os.path.join(root, "model")),  # gunicorn chdirs to the app folder
            max_pass_paths=_int(env, "DEEPAR_MAX_PASS_SAMPLE_PATHS", 6400, high=10**7),
            max_response_bytes=_int(
                env,
                "DEEPAR_MAX_RESPONSE_MB",
                BATCH_RESPONSE_MB if batch_mode else hosting.response_mb or REALTIME_RESPONSE_MB,
                high=100_000,
            )
            * 2**20,
            max_document_bytes=_int(env, "DEEPAR_MAX_DOCUMENT_MB", min(MAX_DOCUMENT_MB, payload_mb), high=100_000)
            * 2**20,
            body_timeout=_int(env, "DEEPAR_BODY_TIMEOUT", 10, high=3600),
            front=front,
            ready_dir=env.get("DEEPAR_READY_DIR") or None,
            hosting_mode=hosting.mode,
            inference_runtime=inference_runtime(env),
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


@dataclass(frozen=True)
class ModelSource:
    """Where `serve` fetches its model from, and how hard it tries."""

    url: str
    scheme: str  # "s3" or "file"
    location: str  # s3: "bucket/key" (key may be a folder prefix); file: an absolute path
    attempts: int  # per request (botocore's standard retries: throttling, 5xx, connection errors)
    timeout: int  # seconds to connect, and between two reads of a response

    @property
    def bucket(self) -> str:
        return self.location.split("/", 1)[0]

    @property
    def key(self) -> str:
        return self.location.split("/", 1)[1] if "/" in self.location else ""

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Optional["ModelSource"]:
        """None when DEEPAR_MODEL_URL is unset or empty (SageMaker put the model in place)."""
        url = env.get(MODEL_URL_VARIABLE, "").strip()
        if not url:
            return None
        where = f"environment variable {MODEL_URL_VARIABLE}={url!r}"
        if env.get("SAGEMAKER_MULTI_MODEL", "").strip().lower() == "true":
            raise UserError(f"{where}: a multi-model endpoint (SAGEMAKER_MULTI_MODEL=true) loads its models itself")
        scheme, sep, rest = url.partition("://")
        if not sep:
            scheme, rest = "file", url
        scheme = scheme.lower()
        if scheme not in MODEL_URL_SCHEMES:
            raise UserError(
                f"{where}: unsupported scheme {scheme!r}: use s3://bucket/key (a model.tar.gz or a folder), "
                "or a local path"
            )
        if scheme == "s3":
            bucket, _, key = rest.partition("/")
            if not bucket or not key.strip("/"):
                raise UserError(
                    f"{where}: must name an object or folder inside the bucket: s3://bucket/path/model.tar.gz"
                )
        elif not os.path.isabs(rest):
            raise UserError(f"{where}: a local model path must be absolute")
        return cls(
            url=url,
            scheme=scheme,
            location=rest,
            attempts=_int(env, "DEEPAR_MODEL_FETCH_ATTEMPTS", 5, high=20),
            timeout=_int(env, "DEEPAR_MODEL_FETCH_TIMEOUT", 60, high=3600),
        )
