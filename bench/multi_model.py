"""Multi-model endpoint under Zipf traffic, beside the single-model server, same model, same request.

    .venv/bin/python -m bench.multi_model [--models 200 --resident 50 --requests 3000 --max-seconds 240]

Trains the README's model once (context 72, prediction 24, 3 x 40 LSTM, Student-t), copies it under
``--models`` names into ``/opt/ml/models/<name>/model`` and starts `container/serve` with
SAGEMAKER_MULTI_MODEL=true and a memory budget (DEEPAR_MME_MEMORY_MB) for ``--resident`` models per worker.
Then:
  - cold invoke: POST /models + the first invoke of a model no worker has held (load + first forecast);
  - Zipf traffic (s = --zipf) over the models, one client: hit rate (header X-Deepar-Model-Cache),
    p50/p99 of hits and of misses; bounded by --requests and --max-seconds;
  - warm invokes of one resident model vs `/invocations` of the single-model server on the same model,
    alternating blocks of requests (the machine is noisy: side by side, same run);
  - worker RSS of both servers at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

from bench.serve_throughput import REPO, request_body, spawn_serve, stop, train, wait_ping, worker_memory_mb
from devtools.serving import free_port
from sagemaker_deepar.serving.multi_model import estimated_cost_bytes
from sagemaker_deepar.training import sample_data


def start(root: Path, **env: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = spawn_serve(REPO, root, port, **env)
    url = f"http://127.0.0.1:{port}"
    wait_ping(url, process)
    return process, url


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else math.nan


def timed_post(session: requests.Session, url: str, body: bytes) -> tuple[float, requests.Response]:
    started = time.perf_counter()
    response = session.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=60)
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"{url}: {response.status_code} {response.text[:300]}")
    return elapsed, response


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, default=200)
    parser.add_argument("--resident", type=int, default=50, help="models the memory budget holds per worker")
    parser.add_argument("--requests", type=int, default=3000, help="Zipf-traffic requests at most")
    parser.add_argument("--max-seconds", type=float, default=240, help="Zipf-traffic time bound")
    parser.add_argument("--zipf", type=float, default=1.1, help="Zipf exponent s (P(rank k) ~ 1/k^s)")
    parser.add_argument("--cold", type=int, default=10, help="cold invokes measured")
    parser.add_argument("--warm", type=int, default=200, help="warm requests per server (alternating blocks of 20)")
    parser.add_argument("--series", type=int, default=1, help="series per request")
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        records = sample_data.generate(num_sensors=20, days=30)
        train(tmp_path / "single", "torch", records)
        model_dir = tmp_path / "single/model"
        root = tmp_path / "mme"
        names = [f"device-{i:04d}" for i in range(args.models + args.cold)]
        for name in names:
            shutil.copytree(model_dir, root / "models" / name / "model")
        cost = estimated_cost_bytes(model_dir)
        budget_mb = math.ceil(args.resident * cost / 2**20)
        body = json.dumps(request_body(records, args.series)).encode()
        print(
            f"model: context 72, prediction 24, 3 x 40 LSTM, 100 samples, {args.series} series per request; "
            f"{args.models} models, budget {budget_mb} MB per worker = {args.resident} x {cost / 2**20:.2f} MB"
        )
        mme, mme_url = start(root, SAGEMAKER_MULTI_MODEL="true", DEEPAR_MME_MEMORY_MB=str(budget_mb))
        single, single_url = start(tmp_path / "single")
        try:
            session = requests.Session()
            # Cold: load + first forecast of models no worker holds yet.
            cold = []
            for name in names[args.models :]:
                started = time.perf_counter()
                load = session.post(
                    mme_url + "/models",
                    json={"model_name": name, "url": str(root / "models" / name / "model")},
                    timeout=60,
                )
                assert load.status_code == 200, load.text
                timed_post(session, f"{mme_url}/models/{name}/invoke", body)
                cold.append((time.perf_counter() - started) * 1000)
            registered = time.perf_counter()
            for name in names[: args.models]:
                load = session.post(
                    mme_url + "/models",
                    json={"model_name": name, "url": str(root / "models" / name / "model")},
                    timeout=60,
                )
                assert load.status_code == 200, load.text
            register_s = time.perf_counter() - registered
            # Zipf traffic over the models.
            weights = 1.0 / np.arange(1, args.models + 1) ** args.zipf
            picks = rng.choice(args.models, size=args.requests, p=weights / weights.sum())
            hits: list[float] = []
            misses: list[float] = []
            deadline = time.monotonic() + args.max_seconds
            for pick in picks:
                if time.monotonic() > deadline:
                    break
                elapsed, response = timed_post(session, f"{mme_url}/models/{names[pick]}/invoke", body)
                (hits if response.headers.get("X-Deepar-Model-Cache") == "hit" else misses).append(elapsed)
            # Warm: one resident model vs the single-model server, alternating blocks.
            warm: dict[str, list[float]] = {"single": [], "multi": []}
            targets = {"single": single_url + "/invocations", "multi": f"{mme_url}/models/{names[0]}/invoke"}
            for target in targets.values():
                timed_post(session, target, body)
            for _ in range(max(1, args.warm // 20)):
                for kind, target in targets.items():
                    warm[kind] += [timed_post(session, target, body)[0] for _ in range(20)]
            mme_memory = worker_memory_mb(mme.pid)
            single_memory = worker_memory_mb(single.pid)
        finally:
            stop(mme)
            stop(single)
    total = len(hits) + len(misses)
    print(
        f"registration (POST /models) of {args.models} models: {register_s:.1f} s ({register_s / args.models * 1000:.0f} ms each)"
    )
    print(
        f"cold invoke (load + first forecast), {len(cold)} models: p50 {percentile(cold, 50):.0f} ms, "
        f"max {max(cold):.0f} ms (target <= 1000 ms)"
    )
    print(
        f"zipf s={args.zipf}: {total} requests over {args.models} models, hit rate {len(hits) / max(1, total):.1%} "
        f"({len(hits)} hits, {len(misses)} misses)"
    )
    print(f"  hits  : p50 {percentile(hits, 50):7.1f} ms  p99 {percentile(hits, 99):7.1f} ms")
    print(f"  misses: p50 {percentile(misses, 50):7.1f} ms  p99 {percentile(misses, 99):7.1f} ms")
    single_p50, multi_p50 = percentile(warm["single"], 50), percentile(warm["multi"], 50)
    print(
        f"warm, {len(warm['multi'])} requests each, alternating: single-model /invocations p50 {single_p50:.1f} ms "
        f"p99 {percentile(warm['single'], 99):.1f} ms | multi-model invoke p50 {multi_p50:.1f} ms "
        f"p99 {percentile(warm['multi'], 99):.1f} ms | ratio multi/single p50 {multi_p50 / single_p50:.2f}x"
    )
    print(f"worker RSS/PSS: multi-model {mme_memory} (<= {args.resident} resident) | single-model {single_memory}")


if __name__ == "__main__":
    main()
