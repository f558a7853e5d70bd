"""Batch on upload vs a direct request: series/s of a 10,000-series upload (S3 put -> SNS -> SQS ->
batch_forecast -> forecasts + manifest) against the same series sent straight to the same container.

One run: trains the bench model of bench/serve_throughput.py (context 72, prediction 24, 3 x 40 LSTM)
through `container/train`, serves it with `container/serve` (its default workers), deploys the stack on
a moto server on loopback (`serverless.stack.deploy`, as `python -m serverless deploy`), then --rounds
paired rounds (issue #27), each:
  1. direct: the JSON Lines posted to /invocations as application/jsonlines in bodies of --direct-series
     (the most one real-time request may hold under the server's sample-path budget), one after another;
  2. serverless: put_object of the same file under incoming/ (a new key each round), the SQS poller of
     `emulate` invoking the handler until the manifest exists (includes S3, SNS, SQS on moto, reading,
     validation, writing), with BATCH_IN_FLIGHT requests in flight (--in-flight; default: the
     handler's own, 2 for a container URL);
  3. with --direct-in-flight N, also direct with N requests in flight (an extra row: the same
     concurrency on both sides).
The headline is the median of the per-round ratios serverless / direct [target >= 0.95x]. Every wait is
bounded by --timeout.

    .venv/bin/python -m bench.serverless_batch [--series 10000] [--points 200] [--rounds 2] [--json PATH]
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench._paired import Paired, machine
from bench._results import JSON_HELP, Result
from bench.serve_throughput import CONFIG, spawn_serve, stop, train, wait_ping
from devtools.serving import free_port, gunicorn_workers

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


def direct(url: str, lines: list[bytes], per_request: int, timeout: float, in_flight: int = 1) -> float:
    """Seconds to forecast ``lines`` in bodies of ``per_request`` lines, ``in_flight`` requests at a time."""

    def post(begin: int) -> None:
        answer = requests.post(
            url + "/invocations",
            data=b"".join(lines[begin : begin + per_request]),
            headers={"Content-Type": "application/jsonlines", "Accept": "application/jsonlines"},
            timeout=timeout,
        )
        answer.raise_for_status()
        assert answer.content.count(b"\n") == len(lines[begin : begin + per_request])

    started = time.perf_counter()
    with ThreadPoolExecutor(in_flight) as pool:
        list(pool.map(post, range(0, len(lines), per_request)))
    return time.perf_counter() - started


def serverless(aws, outputs: dict, poller, body: bytes, key: str, series: int, timeout: float) -> tuple[float, dict]:
    """Seconds from put_object to the manifest of ``incoming/<key>``, and the manifest."""
    s3 = aws("s3")
    started = time.perf_counter()
    s3.put_object(Bucket=outputs["InputBucket"], Key=f"incoming/{key}", Body=body)
    manifest = None
    while manifest is None and time.perf_counter() - started < timeout:
        poller.poll_once(wait_seconds=1)
        try:
            manifest = json.loads(
                s3.get_object(Bucket=outputs["OutputBucket"], Key=f"forecasts/{key}.manifest.json")["Body"].read()
            )
        except s3.exceptions.NoSuchKey:
            pass
    elapsed = time.perf_counter() - started
    assert manifest is not None and manifest["counts"]["forecast"] == series, manifest
    return elapsed, manifest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=10_000)
    parser.add_argument("--points", type=int, default=200)
    parser.add_argument("--direct-series", type=int, default=1000)
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--rounds", type=int, default=2, help="paired rounds (direct, then serverless)")
    parser.add_argument("--in-flight", type=int, help="BATCH_IN_FLIGHT for the handler (default: its own)")
    parser.add_argument("--direct-in-flight", type=int, help="also direct with this many requests in flight")
    parser.add_argument(
        "--request-timeout",
        type=int,
        default=60,
        help="the server's SAGEMAKER_MODEL_SERVER_TIMEOUT and the function's FORECAST_TIMEOUT, both sides alike "
        "(a 1,000-series request can pass 60 s on a loaded machine)",
    )
    parser.add_argument("--json", type=Path, help=JSON_HELP)
    args = parser.parse_args()
    result = Result("serverless_batch", sys.argv[1:])

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
    server = spawn_serve(
        REPO,
        tmp,
        port,
        DEEPAR_INFERENCE_CONFIG=inference_config,
        SAGEMAKER_MODEL_SERVER_TIMEOUT=str(args.request_timeout),
    )
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
        variables = {
            **emulate.function_variables(aws, outputs["BatchFunctionName"]),
            "DEEPAR_INFERENCE_CONFIG": inference_config,
            "FORECAST_TIMEOUT": str(args.request_timeout),
            **({"BATCH_IN_FLIGHT": str(args.in_flight)} if args.in_flight else {}),
        }
        handler = __import__("serverless.handlers.batch_forecast", fromlist=["handler"])
        poller = emulate.Poller(aws, outputs["QueueUrl"], handler.handler, variables)
        while poller.poll_once(wait_seconds=0):  # the s3:TestEvent
            pass
        with emulate.function_environment(variables):
            settings = handler.current()
            in_flight = handler.in_flight(handler.forecasting.from_environment(settings), settings)
        workers = len(gunicorn_workers(server.pid))
        print(f"{args.series} series x {args.points} points, {len(body) / 2**20:.1f} MB; {CONFIG}")
        print(machine())
        print(
            f"each side may use: the same container/serve, {workers} worker(s) x 1 inference thread; direct: one "
            f"client, {args.direct_series} series per request, 1 request in flight; serverless: the handler in "
            f"this process, {in_flight} request(s) in flight (BATCH_IN_FLIGHT), moto S3/SNS/SQS on loopback; "
            f"request timeout {args.request_timeout} s on both"
        )
        direct(url, lines[:200], args.direct_series, args.timeout)  # warm-up
        rounds = Paired("serverless upload / direct /invocations series/s", target=">= 0.95x")
        same = Paired(f"serverless / direct with {args.direct_in_flight} in flight series/s")
        for round_ in range(args.rounds):
            direct_s = direct(url, lines, args.direct_series, args.timeout)
            serverless_s, manifest = serverless(
                aws, outputs, poller, body, f"bench-{round_}.jsonl", args.series, args.timeout
            )
            say = (
                f"direct {args.series / direct_s:.0f} series/s; serverless {args.series / serverless_s:.0f} series/s, "
                f"{serverless_s:.1f} s, manifest timings {manifest['timings']}, {manifest['requests']} requests"
            )
            rounds.add(args.series / serverless_s, args.series / direct_s, say)
            result.row(
                round=round_ + 1,
                direct_series_per_s=args.series / direct_s,
                serverless_series_per_s=args.series / serverless_s,
            )
            if args.direct_in_flight:
                concurrent_s = direct(url, lines, args.direct_series, args.timeout, args.direct_in_flight)
                same.add(
                    args.series / serverless_s,
                    args.series / concurrent_s,
                    f"direct, {args.direct_in_flight} in flight: {args.series / concurrent_s:.0f} series/s",
                )
                result.rows[-1]["direct_in_flight_series_per_s"] = args.series / concurrent_s
        print(rounds.headline())
        result.headline(rounds)
        if args.direct_in_flight:
            print(same.headline())
            result.headline(same)
        print(machine() + " (at the end)")
        result.write(args.json)
    finally:
        stop(server)
        moto.__exit__(None, None, None)


if __name__ == "__main__":
    main()
