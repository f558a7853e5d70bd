"""`python -m ecs local`: does a second replica add throughput, and does scaling fail any request?

One run: trains the bench model (bench.serve_throughput.BENCH_MODEL) through `container/train`,
starts `python -m ecs local --replicas 1` of the image with one CPU per replica (docker --cpus 1),
and keeps one-series requests (100 samples, mean + 3 quantiles) at concurrency 8 running through
the balancer for the whole run. Rounds alternate 1 and 2 replicas (1, 2, 1, 2, ...): each scale
step happens under that load, then one --seconds window is measured. Printed: req/s per window,
the per-round ratio (2 replicas / 1 replica), their median and min-max, the failed requests during
each scale step and in total, and the machine's load and cores at start and end.
Target (issue #25): >= 1.7x from the second replica, 0 errors while scaling 1 -> 2 -> 1.

    .venv/bin/python -m bench.ecs_local [--image sagemaker-deepar:latest] [--rounds 3] [--seconds 15]

Bounded: rounds x 2 windows of --seconds, plus the scale steps (each a replica start or a drain).
Removes its containers on exit (`local --down`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from bench._paired import Paired, machine
from bench.serve_throughput import request_body, train
from devtools.serving import free_port
from ecs import local
from sagemaker_deepar.training import sample_data

CONCURRENCY = 8


@dataclass
class Load:
    """CONCURRENCY threads posting one body in a loop on keep-alive connections; every answer counted."""

    host: str
    port: int
    body: bytes
    ok: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._worker, daemon=True) for _ in range(CONCURRENCY)]

    def __enter__(self) -> "Load":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=120)

    def _worker(self) -> None:
        connection: Optional[http.client.HTTPConnection] = None
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        while not self.stop.is_set():
            try:
                if connection is None:
                    connection = http.client.HTTPConnection(self.host, self.port, timeout=120)
                connection.request("POST", "/invocations", self.body, headers)
                response = connection.getresponse()
                payload = response.read()
                good = response.status == 200 and payload.startswith(b'{"predictions"')
                problem = "" if good else f"{response.status} {payload[:120]!r}"
            except (OSError, http.client.HTTPException) as error:
                connection, problem = None, f"{type(error).__name__}: {error}"
            with self.lock:
                if problem:
                    self.failed += 1
                    if len(self.failures) < 5:
                        self.failures.append(problem)
                else:
                    self.ok += 1

    def counts(self) -> tuple[int, int]:
        with self.lock:
            return self.ok, self.failed


def scale(request: local.Request, replicas: int, load: Load) -> tuple[float, int]:
    """Scale under load: (seconds the step took, requests that failed during it)."""
    _, failed_before = load.counts()
    start = time.monotonic()
    local.up(
        local.Request(**{**request.__dict__, "replicas": replicas, "model": None, "image": None}), say=lambda _: None
    )
    return time.monotonic() - start, load.counts()[1] - failed_before


def window(load: Load, seconds: float) -> tuple[float, int]:
    """Requests per second over one window, and failures in it."""
    ok0, failed0 = load.counts()
    start = time.monotonic()
    time.sleep(seconds)
    ok1, failed1 = load.counts()
    return (ok1 - ok0) / (time.monotonic() - start), failed1 - failed0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default=local.DEFAULT_IMAGE)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0, help="length of each measured window")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds after a scale step before measuring")
    args = parser.parse_args()

    print(f"at start, {machine()}")
    records = sample_data.generate(num_sensors=20, days=30)
    body = json.dumps(request_body(records, 1)).encode()
    name = f"bench-ecs-{os.getpid()}"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "opt_ml"
        train(root, "torch", records)
        request = local.Request(
            name=name,
            replicas=1,
            image=args.image,
            model=local.Model.of(str(root / "model")),
            host="127.0.0.1",
            port=free_port(),
            cpus=1.0,
            memory="2g",
        )
        try:
            url = local.up(request, say=lambda _: None)
            print(f"{args.image}: 1 replica (--cpus 1) behind {url}; c={CONCURRENCY} one-series requests")
            rates: dict[int, list[float]] = {1: [], 2: []}
            paired = Paired("2 replicas / 1 replica, req/s", target=">= 1.7x")
            steps = []
            with Load("127.0.0.1", request.port, body) as load:
                time.sleep(args.settle)
                for round_ in range(1, args.rounds + 1):
                    for replicas in (1, 2):
                        if round_ > 1 or replicas == 2:
                            seconds, failed = scale(request, replicas, load)
                            steps.append((3 - replicas, replicas, seconds, failed))
                            print(
                                f"  scaled {3 - replicas} -> {replicas} under load in {seconds:.1f} s: {failed} failed"
                            )
                            time.sleep(args.settle)
                        rate, failed = window(load, args.seconds)
                        rates[replicas].append(rate)
                        print(f"  round {round_}, {replicas} replica(s): {rate:.1f} req/s ({failed} failed)")
                    paired.add(ours=rates[2][-1], base=rates[1][-1])
                seconds, failed = scale(request, 1, load)
                steps.append((2, 1, seconds, failed))
                print(f"  scaled 2 -> 1 under load in {seconds:.1f} s: {failed} failed")
                ok, failed_total = load.counts()
            print(paired.headline())
            print(
                f"requests: {ok} answered, {failed_total} failed in the whole run; "
                f"{sum(s[3] for s in steps)} failed during {len(steps)} scale steps (target 0)"
                + (f"; first failures: {load.failures}" if load.failures else "")
            )
            print(f"at end, {machine()}")
        finally:
            local.down(name, say=lambda _: None)


if __name__ == "__main__":
    main()
