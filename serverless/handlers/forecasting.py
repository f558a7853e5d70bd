"""Where forecasts come from, chosen by the environment:

- ``FORECAST_MODEL=s3://.../model.tar.gz``: the model runs inside the function
  (the ONNX runtime of ``sagemaker_deepar.runtimes``, downloaded and extracted once per container);
- ``FORECAST_ENDPOINT=http://host:port``: a serving container (local runs, tests);
- ``FORECAST_ENDPOINT=<name>``: a SageMaker endpoint through sagemaker-runtime with botocore retries.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Protocol

from sagemaker_deepar.contract import extract_model_tarball

# SageMaker's real-time body limit (6 MB); requests stay under it with headroom for the configuration.
MAX_REQUEST_BYTES = 5 * 2**20
MAX_SERIES_PER_REQUEST = 1000
# Seconds a throttled caller is told to wait when the forecaster gives no Retry-After of its own.
DEFAULT_RETRY_AFTER_S = 2
# The container names each bad instance at the start of a line of its 400 (all of them, one per line,
# since issue #23 item 11; other containers name only the first).
_BAD_INSTANCE = re.compile(r"^instances\[(\d+)\]\.(.*)$", re.MULTILINE)
# The serving container's refusals that a smaller request avoids (sagemaker_deepar.serving.codec.check_budget,
# check_response_size; tests pin them): the only rejections naming no instance that splitting can cure.
_TOO_LARGE = re.compile(r"^(request|response) too large\b")


class BackendError(Exception):
    """The forecaster failed or is unreachable (API: 502; batch: the message is retried)."""

    status = 502


class BackendTimeout(BackendError):
    status = 504


class BackendThrottled(BackendError):
    """The forecaster is over its capacity (after botocore's own retries): the API answers 429 with
    ``Retry-After``; batch leaves the message to SQS's redrive (a later receive, not an error per series)."""

    status = 429

    def __init__(self, message: str, retry_after: int = DEFAULT_RETRY_AFTER_S):
        super().__init__(message)
        self.retry_after = retry_after


class RequestRejected(Exception):
    """The forecaster refused a request as the caller's mistake (400 with its message)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


class Forecaster(Protocol):
    name: str

    def forecast(self, instances: list[dict], configuration: Optional[dict] = None) -> list[dict]: ...


def _error_message(body: bytes) -> str:
    try:
        decoded = json.loads(body)
    except ValueError:
        return body.decode(errors="replace")[:1000]
    if isinstance(decoded, dict):
        return str(decoded.get("message") or decoded.get("error") or decoded)[:1000]
    return str(decoded)[:1000]


def _retry_after(headers: Any) -> int:
    """The server's ``Retry-After`` in whole seconds (an HTTP date or garbage: the default)."""
    headers = headers or {}
    raw = str(headers.get("Retry-After") or headers.get("retry-after") or "").strip()  # botocore: lower case
    return max(1, int(raw)) if raw.isdigit() else DEFAULT_RETRY_AFTER_S


def _predictions(body: bytes, expected: int, source: str) -> list[dict]:
    try:
        predictions = json.loads(body)["predictions"]
    except (ValueError, KeyError, TypeError) as error:
        raise BackendError(f"{source}: answer is not a DeepAR response: {error}") from None
    if not isinstance(predictions, list) or len(predictions) != expected:
        raise BackendError(f"{source}: {len(predictions)} predictions for {expected} instances")
    return predictions


@dataclass
class HttpForecaster:
    """A serving container's ``/invocations`` (same wire format as the endpoint)."""

    url: str
    timeout: float = 60.0
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or self.url

    def forecast(self, instances: list[dict], configuration: Optional[dict] = None) -> list[dict]:
        body = json.dumps({"instances": instances, **({"configuration": configuration} if configuration else {})})
        request = urllib.request.Request(
            self.url.rstrip("/") + "/invocations",
            data=body.encode(),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return _predictions(response.read(), len(instances), self.name)
        except urllib.error.HTTPError as error:
            message = _error_message(error.read())
            if error.code == 429:
                raise BackendThrottled(f"{self.name}: 429: {message}", _retry_after(error.headers)) from None
            if 400 <= error.code < 500 and error.code != 408:
                raise RequestRejected(message, error.code) from None
            if error.code in (503, 504):
                raise BackendTimeout(f"{self.name}: {error.code}: {message}") from None
            raise BackendError(f"{self.name}: {error.code}: {message}") from None
        except (socket.timeout, TimeoutError):
            raise BackendTimeout(f"{self.name}: no answer within {self.timeout} s") from None
        except (urllib.error.URLError, ConnectionError) as error:
            raise BackendError(f"{self.name}: unreachable: {error}") from None


@dataclass
class EndpointForecaster:
    """A SageMaker endpoint; botocore retries throttling and transient errors (standard mode)."""

    endpoint_name: str
    timeout: float = 60.0
    name: str = ""
    _client: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.name = self.name or self.endpoint_name

    def client(self) -> Any:
        if self._client is None:
            from awsinfra.clients import client, retries

            self._client = client("sagemaker-runtime", config=retries("standard", 4, read_timeout=self.timeout))
        return self._client

    def forecast(self, instances: list[dict], configuration: Optional[dict] = None) -> list[dict]:
        from botocore.exceptions import BotoCoreError, ClientError, ReadTimeoutError

        body = json.dumps({"instances": instances, **({"configuration": configuration} if configuration else {})})
        try:
            answer = self.client().invoke_endpoint(
                EndpointName=self.endpoint_name, ContentType="application/json", Accept="application/json", Body=body
            )
        except ReadTimeoutError:
            raise BackendTimeout(f"{self.name}: no answer within {self.timeout} s") from None
        except ClientError as error:
            info = error.response.get("Error", {})
            message = str(info.get("Message", error))
            original = error.response.get("OriginalStatusCode")
            if info.get("Code") in ("ThrottlingException", "TooManyRequestsException"):
                headers = error.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
                raise BackendThrottled(f"{self.name}: {message}", _retry_after(headers)) from None
            if info.get("Code") == "ModelError" and original and 400 <= int(original) < 500:
                # The container's own answer is OriginalMessage; Message wraps it in SageMaker's prose.
                body = str(error.response.get("OriginalMessage") or message)
                raise RequestRejected(_error_message(body.encode()), int(original)) from None
            raise BackendError(f"{self.name}: {info.get('Code')}: {message}") from None
        except BotoCoreError as error:
            raise BackendError(f"{self.name}: {error}") from None
        return _predictions(answer["Body"].read(), len(instances), self.name)


@dataclass
class InFunctionForecaster:
    """The ONNX model inside the function (``sagemaker_deepar.runtimes``, onnx only), loaded once per container."""

    model_uri: str
    name: str = ""
    _model: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.name = self.name or self.model_uri

    def model(self) -> Any:
        if self._model is None:
            # The runtimes seam, restricted to what a function can run (onnxruntime + numpy: no torch, GluonTS
            # or pandas). Imported here so that endpoint-backed functions never load onnxruntime.
            from sagemaker_deepar import runtimes

            self._model = runtimes.load(download_model(self.model_uri), runtimes.LoadOptions("onnx"), only=("onnx",))
        return self._model

    def forecast(self, instances: list[dict], configuration: Optional[dict] = None) -> list[dict]:
        try:
            return self.model().forecast(instances, configuration)
        except ValueError as error:  # the predictor's input checks
            raise RequestRejected(str(error)) from None


def download_model(uri: str, root: Optional[Path] = None) -> Path:
    """``s3://bucket/key/model.tar.gz`` (or a local path) extracted under /tmp, reused by later calls."""
    root = Path(root or os.environ.get("FORECAST_MODEL_CACHE", tempfile.gettempdir())) / "deepar-model"
    done = root / ".extracted"
    if done.exists() and done.read_text() == uri:
        return root
    root.mkdir(parents=True, exist_ok=True)
    archive = root.parent / "deepar-model.tar.gz"
    if uri.startswith("s3://"):
        from awsinfra.clients import client

        bucket, _, key = uri[5:].partition("/")
        client("s3").download_file(bucket, key, str(archive))
    else:
        archive = Path(uri)
    try:  # links, a bomb (#23 item 1): refused before anything is written; the configured model is unusable
        extract_model_tarball(archive, root)
    except tarfile.TarError as error:
        raise BackendError(f"FORECAST_MODEL {uri}: {error}") from None
    done.write_text(uri)
    return root


_cached: dict[tuple[str, str], Forecaster] = {}


def from_environment(environ: Optional[dict] = None) -> Forecaster:
    """The forecaster the function's environment names (one per container, reused across invocations)."""
    environ = dict(os.environ if environ is None else environ)
    model, endpoint = environ.get("FORECAST_MODEL", ""), environ.get("FORECAST_ENDPOINT", "")
    timeout = float(environ.get("FORECAST_TIMEOUT", "60"))
    key = (model, endpoint)
    if key in _cached:
        return _cached[key]
    forecaster: Forecaster
    if model:
        forecaster = InFunctionForecaster(model)
    elif endpoint.startswith(("http://", "https://")):
        forecaster = HttpForecaster(endpoint, timeout)
    elif endpoint:
        forecaster = EndpointForecaster(endpoint, timeout)
    else:
        raise BackendError("no forecaster configured: set FORECAST_MODEL or FORECAST_ENDPOINT")
    _cached[key] = forecaster
    return forecaster


def chunks(
    lines: list[bytes], max_bytes: int = MAX_REQUEST_BYTES, max_count: int = MAX_SERIES_PER_REQUEST
) -> list[range]:
    """Index ranges of consecutive series whose encoded size fits one request."""
    ranges, begin, size = [], 0, 0
    for index, line in enumerate(lines):
        if index > begin and (size + len(line) > max_bytes or index - begin >= max_count):
            ranges.append(range(begin, index))
            begin, size = index, 0
        size += len(line) + 1
    if begin < len(lines):
        ranges.append(range(begin, len(lines)))
    return ranges


def splitting_helps(error: RequestRejected) -> bool:
    """A rejection of the request's size (413, or the container's request/response budget), not of its content."""
    return error.status == 413 or bool(_TOO_LARGE.match(str(error)))


def forecast_isolating(
    forecaster: Forecaster, instances: list[dict], configuration: Optional[dict] = None
) -> list[dict | str]:
    """Forecast ``instances``; an instance the forecaster rejects gets its message instead of a forecast
    and the others are sent again without it.

    The container checks every instance before sampling and names each bad one on a line of its 400
    (``instances[i]. ...``): they are all removed and the rest sent once, two calls whatever their number
    (a container naming only the first one costs a call per bad instance). A rejection naming no
    instance is the request's own fault (its configuration): raised at once, never retried series by
    series (issue #23 item 11). Only a size refusal (``splitting_helps``) halves the request."""
    results: list[dict | str] = [""] * len(instances)
    pending = list(range(len(instances)))
    while pending:
        try:
            predictions = forecaster.forecast([instances[i] for i in pending], configuration)
        except RequestRejected as error:
            message = str(error)
            named = {int(m[1]): m[2] or m[0] for m in _BAD_INSTANCE.finditer(message) if int(m[1]) < len(pending)}
            if named and message.startswith("instances["):
                for position, problem in named.items():
                    results[pending[position]] = problem
                pending = [index for position, index in enumerate(pending) if position not in named]
                continue
            if not splitting_helps(error):
                raise
            if len(pending) == 1:  # one series alone is too large: its own error
                results[pending[0]] = message
                return results
            half = len(pending) // 2
            for part in (pending[:half], pending[half:]):
                for index, result in zip(
                    part, forecast_isolating(forecaster, [instances[i] for i in part], configuration)
                ):
                    results[index] = result
            return results
        for index, prediction in zip(pending, predictions):
            results[index] = prediction
        return results
    return results
