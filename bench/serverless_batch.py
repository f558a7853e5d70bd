"""Batch on upload vs a direct request: series/s of a 10,000-series upload (S3 put -> SNS -> SQS ->
batch_forecast -> forecasts + manifest) against the same series sent straight to the same container.

One run: trains the bench model of bench/serve_throughput.py (context 72, prediction 24, 3 x 40 LSTM)
through `container/train`, serves it with `container/serve`, deploys the stack on a moto server on
loopback (`serverless.stack.deploy`, as `python -m serverless deploy`), then, side by side:
  1. direct: the JSON Lines posted to /invocations as application/jsonlines in bodies of --direct-series
     (the most one real-time request may hold under the server's sample-path budget), one after another;
  2. serverless: put_object of the same file under incoming/, the SQS poller of `emulate` invoking the
     handler until the manifest exists (includes S3, SNS, SQS on moto, reading, validation, writing);
  3. direct again (the baseline is the mean of 1 and 3: the machine is noisy).
Prints series/s for both and the ratio [target >= 0.8]. Every wait is bounded by --timeout.

    .venv/bin/python -m bench.serverless_batch [--series 10000] [--points 200]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench.serve_throughput import CONFIG, spawn_serve, stop, train, wait_ping
from devtools.serving import free_port

REPO = Path(__file__).resolve().parent.parent


def make_series(n: int, points: int, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "id": f"s{i}",
            "start": "2024-01-01 00:00:00",
            "target": [round(20 + 8 * math.sin((t + i) / 6) + rng.gauss(0, 1), 3) for t in range(points)],
        }
        for i in range(n)
    ]


def direct(url: str, lines: list[bytes], per_request: int, timeout: float) -> float:
    started = time.perf_counter()
    for begin in range(0, len(lines), per_request):
        answer = requests.post(
            url + "/invocations",
            data=b"".join(lines[begin : begin + per_request]),
            headers={"Content-Type": "application/jsonlines", "Accept": "application/jsonlines"},
            timeout=timeout,
        )
        answer.raise_for_status()
        assert answer.content.count(b"\n") == len(lines[begin : begin + per_request])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--direct-series", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=900)
    args = parser.parse_args()

    import logging
    import signal
    import warnings

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout`/kill: still stop the server below

    from awsinfra.clients import moto_server

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    warnings.filterwarnings("ignore", message="Tried to parse")

    tmp = Path(tempfile.mkdtemp(prefix="serverless-bench-"))
    records = make_series(args.series, args.points)
    train(tmp, "torch", records[:64])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    inference_config = json.dumps(CONFIG)
    server = spawn_serve(REPO, tmp, port, DEEPAR_INFERENCE_CONFIG=inference_config)
    # The moto server the mlops commands use: AWS_ENDPOINT_URL's when set, else one on loopback for this run.
    os.environ.setdefault("AWS_DEFAULT_REGION", "eu-west-1")
    os.environ.setdefault("AWS_REGION", os.environ["AWS_DEFAULT_REGION"])
    moto = moto_server()
    moto.__enter__()
    try:
        wait_ping(url, server)
        from serverless import emulate, stack

        aws = stack.Aws()
        outputs = stack.deploy(aws, "bench", {"ForecastEndpoint": url}, tmp / "bundles", say=lambda _: None)
        lines = [json.dumps(r).encode() + b"\n" for r in records]
        body = b"".join(lines)
        print(f"{args.series} series x {args.points} points, {len(body) / 2**20:.1f} MB; {CONFIG}")
        direct(url, lines[:200], args.direct_series, args.timeout)  # warm-up
        first = direct(url, lines, args.direct_series, args.timeout)

        variables = {
            **emulate.function_variables(aws, outputs["BatchFunctionName"]),
            "DEEPAR_INFERENCE_CONFIG": inference_config,
        }
        poller = emulate.Poller(
            aws,
            outputs["QueueUrl"],
            __import__("serverless.handlers.batch_forecast", fromlist=["handler"]).handler,
            variables,
        )
        while poller.poll_once(wait_seconds=0):  # the s3:TestEvent
            pass
        s3 = aws("s3")
        started = time.perf_counter()
        s3.put_object(Bucket=outputs["InputBucket"], Key="incoming/bench.jsonl", Body=body)
        manifest = None
        while manifest is None and time.perf_counter() - started < args.timeout:
            poller.poll_once(wait_seconds=1)
            try:
                manifest = json.loads(
                    s3.get_object(Bucket=outputs["OutputBucket"], Key="forecasts/bench.jsonl.manifest.json")[
                        "Body"
                    ].read()
                )
            except s3.exceptions.NoSuchKey:
                pass
        serverless_s = time.perf_counter() - started
        assert manifest is not None and manifest["counts"]["forecast"] == args.series, manifest
        second = direct(url, lines, args.direct_series, args.timeout)
        baseline = (first + second) / 2
        print(
            f"direct /invocations ({args.direct_series} series per request): {args.series / first:.0f} and {args.series / second:.0f} series/s"
        )
        print(
            f"serverless upload -> manifest: {args.series / serverless_s:.0f} series/s ({serverless_s:.1f} s; manifest timings {manifest['timings']}, {manifest['requests']} requests)"
        )
        print(f"ratio serverless / direct: {baseline / serverless_s:.2f} (target >= 0.8)")
    finally:
        stop(server)
        moto.__exit__(None, None, None)


if __name__ == "__main__":
    main()
