"""``python -m serverless emulate --stack NAME``: Lambda's SQS poller and API Gateway's proxy, in process,
against the stack's real queues and API key (moto server offline, AWS when configured).

The poller receives up to the mapping's batch size, invokes ``batch_forecast.handler`` with the exact
SQS event shape and the deployed function's environment, deletes what succeeded and makes the
failures visible again at once (``--retry-delay``; a real mapping waits for the visibility timeout)
so that SQS's redrive policy moves a poison message to the dead-letter queue after its receives.
``--until-idle`` stops when nothing arrived for ``--idle-seconds``.

``--api-port`` serves the forecast API on 127.0.0.1 as API Gateway's REST proxy would: the stack's
API key in ``x-api-key`` (403 otherwise), the usage plan's rate and burst (429 beyond), the proxy
event shape for ``forecast_api.handler``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator, Optional
from urllib.parse import parse_qs, urlsplit

from . import stack as stacks

log = logging.getLogger("serverless.emulate")
_ENV_LOCK = threading.Lock()


@contextlib.contextmanager
def function_environment(variables: dict[str, str]) -> Iterator[None]:
    """The deployed function's environment variables for one in-process invocation."""
    with _ENV_LOCK:
        saved = {k: os.environ.get(k) for k in variables}
        os.environ.update(variables)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def function_variables(aws: stacks.Aws, name: str) -> dict[str, str]:
    configuration = aws("lambda").get_function_configuration(FunctionName=name)
    return dict(configuration.get("Environment", {}).get("Variables", {}))


def sqs_event(messages: list[dict], queue_arn: str, region: str) -> dict:
    """The event Lambda's SQS event source mapping sends (records in receive order)."""
    return {
        "Records": [
            {
                "messageId": m["MessageId"],
                "receiptHandle": m["ReceiptHandle"],
                "body": m["Body"],
                "attributes": {
                    k: m.get("Attributes", {}).get(k, "")
                    for k in (
                        "ApproximateReceiveCount",
                        "SentTimestamp",
                        "SenderId",
                        "ApproximateFirstReceiveTimestamp",
                    )
                },
                "messageAttributes": {
                    name: {
                        "stringValue": a.get("StringValue"),
                        "binaryValue": a.get("BinaryValue"),
                        "stringListValues": [],
                        "binaryListValues": [],
                        "dataType": a["DataType"],
                    }
                    for name, a in m.get("MessageAttributes", {}).items()
                },
                "md5OfBody": m.get("MD5OfBody") or hashlib.md5(m["Body"].encode()).hexdigest(),  # noqa: S324 - SQS's checksum
                "eventSource": "aws:sqs",
                "eventSourceARN": queue_arn,
                "awsRegion": region,
            }
            for m in messages
        ]
    }


@dataclass
class Poller:
    aws: stacks.Aws
    queue_url: str
    handler: Callable[[dict, Any], dict]
    variables: dict[str, str]
    batch_size: int = 1
    retry_delay: int = 0
    invocations: int = 0
    failures: int = 0

    def __post_init__(self) -> None:
        sqs = self.aws("sqs")
        self.queue_arn = sqs.get_queue_attributes(QueueUrl=self.queue_url, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]

    def poll_once(self, wait_seconds: int = 1) -> int:
        """One receive -> invoke -> delete/release round; the number of messages received."""
        sqs = self.aws("sqs")
        messages = sqs.receive_message(
            QueueUrl=self.queue_url,
            MaxNumberOfMessages=self.batch_size,
            WaitTimeSeconds=wait_seconds,
            AttributeNames=["All"],
            MessageAttributeNames=["All"],
        ).get("Messages", [])
        if not messages:
            return 0
        event = sqs_event(messages, self.queue_arn, self.aws.region)
        self.invocations += 1
        try:
            with function_environment(self.variables):
                answer = self.handler(event, None) or {}
            failed = {f["itemIdentifier"] for f in answer.get("batchItemFailures", [])}
        except Exception as error:  # noqa: BLE001 - a function error fails the whole batch, as in Lambda
            log.error("batch_forecast raised: %s", error)
            failed = {m["MessageId"] for m in messages}
        for m in messages:
            if m["MessageId"] in failed:
                self.failures += 1
                sqs.change_message_visibility(
                    QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"], VisibilityTimeout=self.retry_delay
                )
            else:
                sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=m["ReceiptHandle"])
        return len(messages)

    def run(self, until_idle: bool, idle_seconds: float, max_seconds: float, stop: threading.Event) -> None:
        started = last = time.monotonic()
        while not stop.is_set():
            if max_seconds and time.monotonic() - started > max_seconds:
                break
            if self.poll_once():
                last = time.monotonic()
            elif until_idle and time.monotonic() - last >= idle_seconds:
                break


# ---------------------------------------------------------------- API Gateway REST proxy


@dataclass
class TokenBucket:
    """API Gateway's usage plan throttle: ``rate`` requests/s with bursts of ``burst``."""

    rate: float
    burst: int
    tokens: float = -1.0
    stamp: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> bool:
        with self.lock:
            now = time.monotonic()
            if self.tokens < 0:
                self.tokens = float(self.burst)
            self.tokens = min(float(self.burst), self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            if self.tokens >= 1:
                self.tokens -= 1
                return True
            return False


ROUTES = {("POST", "/forecast"): "/forecast", ("GET", "/forecast/{device_id}"): "/forecast/{device_id}"}


def route(method: str, path: str) -> tuple[Optional[str], dict[str, str]]:
    parts = [p for p in path.split("/") if p]
    if method == "POST" and parts == ["forecast"]:
        return "/forecast", {}
    if method == "GET" and len(parts) == 2 and parts[0] == "forecast":
        from urllib.parse import unquote

        return "/forecast/{device_id}", {"device_id": unquote(parts[1])}
    return None, {}


def proxy_event(
    method: str, raw_path: str, headers: dict[str, str], body: Optional[str], stage: str, api_id: str
) -> Optional[dict]:
    """API Gateway's REST API proxy integration event (None when no route matches)."""
    split = urlsplit(raw_path)
    resource, path_parameters = route(method, split.path)
    if resource is None:
        return None
    query = parse_qs(split.query, keep_blank_values=True)
    return {
        "resource": resource,
        "path": split.path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": {k: [v] for k, v in headers.items()},
        "queryStringParameters": {k: v[-1] for k, v in query.items()} or None,
        "multiValueQueryStringParameters": query or None,
        "pathParameters": path_parameters or None,
        "stageVariables": None,
        "requestContext": {
            "resourcePath": resource,
            "httpMethod": method,
            "path": f"/{stage}{split.path}",
            "stage": stage,
            "requestId": str(uuid.uuid4()),
            "apiId": api_id,
            "identity": {"apiKey": headers.get("x-api-key"), "sourceIp": "127.0.0.1"},
        },
        "body": body,
        "isBase64Encoded": False,
    }


def api_server(
    port: int,
    handler: Callable[[dict, Any], dict],
    variables: dict[str, str],
    api_key: str,
    bucket: TokenBucket,
    stage: str,
    api_id: str,
) -> ThreadingHTTPServer:
    class Proxy(BaseHTTPRequestHandler):
        def _answer(self, status: int, body: bytes, headers: Optional[dict] = None) -> None:
            self.send_response(status)
            for k, v in {"Content-Type": "application/json", **(headers or {})}.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode(errors="replace") if length else None
            headers = {k.lower(): v for k, v in self.headers.items()}
            event = proxy_event(self.command, self.path, headers, body, stage, api_id)
            if event is None:
                return self._answer(403, b'{"message":"Missing Authentication Token"}')
            if headers.get("x-api-key") != api_key:
                return self._answer(403, b'{"message":"Forbidden"}')
            if not bucket.take():
                return self._answer(429, b'{"message":"Too Many Requests"}')
            try:
                with function_environment(variables):
                    answer = handler(event, None)
                status, out = int(answer["statusCode"]), str(answer.get("body") or "").encode()
                extra = answer.get("headers") or {}
            except Exception as error:  # noqa: BLE001 - API Gateway answers 502 when the function fails
                log.error("forecast_api raised: %s", error)
                status, out, extra = 502, b'{"message":"Internal server error"}', {}
            self._answer(status, out, extra)

        do_GET = do_POST = _handle  # noqa: N815

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.info("api: " + format, *args)

    return ThreadingHTTPServer(("127.0.0.1", port), Proxy)


def run(aws: stacks.Aws, args: argparse.Namespace) -> int:
    from .handlers import batch_forecast

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("botocore").setLevel(logging.WARNING)
    outputs = stacks.stack_outputs(aws, args.stack)
    stop = threading.Event()
    server = None
    if args.api_port:
        from .handlers import forecast_api

        plans = [
            p
            for p in aws("apigateway").get_usage_plans()["items"]
            if any(s["apiId"] == outputs["ApiId"] for s in p.get("apiStages", []))
        ]
        throttle = plans[0].get("throttle", {}) if plans else {}
        bucket = TokenBucket(float(throttle.get("rateLimit", 10)), int(throttle.get("burstLimit", 20)))
        server = api_server(
            args.api_port,
            forecast_api.handler,
            function_variables(aws, outputs["ApiFunctionName"]),
            stacks.api_key_value(aws, outputs["ApiKeyId"]),
            bucket,
            outputs["ApiUrl"].rsplit("/", 1)[-1],
            outputs["ApiId"],
        )
        threading.Thread(target=server.serve_forever, daemon=True).start()
        print(
            f"forecast API on http://127.0.0.1:{args.api_port} (x-api-key: the value of API key {outputs['ApiKeyId']})",
            flush=True,
        )
    poller = Poller(
        aws,
        outputs["QueueUrl"],
        batch_forecast.handler,
        function_variables(aws, outputs["BatchFunctionName"]),
        retry_delay=args.retry_delay,
    )
    try:
        poller.run(args.until_idle, args.idle_seconds, args.max_seconds, stop)
    except KeyboardInterrupt:
        pass
    finally:
        if server is not None:
            server.shutdown()
    print(json.dumps({"invocations": poller.invocations, "failed_messages": poller.failures}), flush=True)
    return 0
