"""Batch transform: memory per body byte with the largest allowed body, and the throughput behind MaxPayloadInMB.

One run trains the bench model of bench/serve_throughput.py (context 72, prediction 24, 3 x 40 LSTM)
through `container/train`, then serves it with `container/serve` in batch mode (SAGEMAKER_BATCH=true,
one worker) and
  1. throughput: a JSON Lines body of series of 200 points with the default configuration (100 samples,
     mean + 9 quantiles) -> series/s and body MB/s, hence the body one worker forecasts in 60 s;
  2. memory: a body of --megabytes (default 100, SageMaker's largest) with 1 sample per series (the
     memory path is the same, only the forward passes are cheaper) -> the worker's peak RSS above its
     RSS before the request, divided by the body size [target <= 3x], and one output line per input line.
Loopback only; every request is bounded by its timeout.

    .venv/bin/python bench/batch_memory.py [--megabytes 100] [--throughput-megabytes 1]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import tempfile
import time
from pathlib import Path

import requests

from bench.serve_throughput import spawn_serve, stop, train, wait_ping
from devtools.serving import free_port, gunicorn_workers
from sagemaker_deepar.training import sample_data

REPO = Path(__file__).resolve().parent.parent


def write_body(path: Path, megabytes: float, seed: int = 1) -> int:
    """JSON Lines of 200-point series up to ``megabytes``; returns the number of lines."""
    rng = random.Random(seed)
    limit, lines = int(megabytes * 2**20), 0
    with open(path, "wb") as f:
        while True:
            level = rng.uniform(5, 50)
            line = (
                json.dumps(
                    {"start": "2024-01-01 00:00:00", "target": [round(level + rng.gauss(0, 3), 3) for _ in range(200)]}
                ).encode()
                + b"\n"
            )
            if f.tell() + len(line) > limit:
                return lines
            f.write(line)
            lines += 1


def proc_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def gunicorn_worker(serve_pid: int) -> int:
    workers = gunicorn_workers(serve_pid)
    if len(workers) != 1:
        raise RuntimeError(f"expected one gunicorn worker, found {len(workers)}")
    return workers[0]


def post_file(url: str, path: Path, timeout: float) -> tuple[int, int, float]:
    """(status, output lines, seconds); the answer is streamed and counted, never held."""
    start = time.perf_counter()
    with open(path, "rb") as body:
        r = requests.post(
            url + "/invocations",
            data=body,
            headers={"Content-Type": "application/jsonlines"},
            stream=True,
            timeout=timeout,
        )
        lines = sum(chunk.count(b"\n") for chunk in r.iter_content(1 << 20))
    return r.status_code, lines, time.perf_counter() - start


def serve(root: Path, port: int, **env: str) -> subprocess.Popen:
    """`container/serve` in batch mode with one worker, as a batch transform runs it."""
    return spawn_serve(REPO, root, port, **{"SAGEMAKER_BATCH": "true", "SAGEMAKER_MODEL_SERVER_WORKERS": "1", **env})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=float, default=100)
    parser.add_argument("--throughput-megabytes", type=float, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        train(tmp_path / "torch", "torch", sample_data.generate(num_sensors=20, days=30))
        print("model: context 72, prediction 24, 3 x 40 LSTM; body: JSON Lines, series of 200 points", flush=True)

        small = tmp_path / "small.jsonl"
        n = write_body(small, args.throughput_megabytes)
        port = free_port()
        server = serve(
            tmp_path / "torch", port, SAGEMAKER_MAX_PAYLOAD_IN_MB="100", SAGEMAKER_MODEL_SERVER_TIMEOUT="3600"
        )
        try:
            wait_ping(f"http://127.0.0.1:{port}", server)
            status, lines, seconds = post_file(f"http://127.0.0.1:{port}", small, timeout=3600)
        finally:
            stop(server)
        mb = small.stat().st_size / 2**20
        print(
            f"throughput (100 samples, mean + 9 quantiles): {n} series, {mb:.2f} MB in {seconds:.1f} s -> "
            f"{n / seconds:.0f} series/s, {mb / seconds * 1024:.0f} kB/s; status {status}, {lines} lines "
            f"[{'ok' if lines == n else 'MISMATCH'}]; a 60 s timeout fits {mb / seconds * 60:.1f} MB",
            flush=True,
        )

        big = tmp_path / "big.jsonl"
        n = write_body(big, args.megabytes)
        body_mb = big.stat().st_size / 2**20
        port = free_port()
        config = json.dumps({"num_samples": 1, "output_types": ["mean"]})
        server = serve(
            tmp_path / "torch",
            port,
            SAGEMAKER_MAX_PAYLOAD_IN_MB="100",
            SAGEMAKER_MODEL_SERVER_TIMEOUT="3600",
            DEEPAR_INFERENCE_CONFIG=config,
        )
        try:
            wait_ping(f"http://127.0.0.1:{port}", server)
            worker = gunicorn_worker(server.pid)
            Path(f"/proc/{worker}/clear_refs").write_text("5")  # reset the peak (VmHWM) left by loading the model
            before = proc_kb(worker, "VmRSS")
            status, lines, seconds = post_file(f"http://127.0.0.1:{port}", big, timeout=3600)
            peak = proc_kb(worker, "VmHWM")
        finally:
            stop(server)
        above = (peak - before) / 1024
        print(
            f"memory: body {body_mb:.1f} MB, {n} lines in {seconds:.0f} s; status {status}, {lines} lines "
            f"[{'ok' if lines == n else 'MISMATCH'}]"
        )
        print(
            f"worker RSS before {before / 1024:.0f} MB, peak {peak / 1024:.0f} MB: {above:.0f} MB above = "
            f"{above / body_mb:.2f}x the body [target <= 3x]"
        )


if __name__ == "__main__":
    main()
