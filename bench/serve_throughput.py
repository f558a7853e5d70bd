"""Serving throughput: in-process predictor vs our server vs gluonts.shell, on the same architecture.

One run: trains DeepAR (context 72, prediction 24, 3 layers x 40 cells) through `container/train`
(torch for us, mxnet for the gluonts.shell peer), then measures
  - in-process `Model.sample` (our batched path over `predictor.predict`), 1-series and 100-series inputs,
    single thread;
  - our server (`container/serve`, default settings) under wrk at concurrency 1/4/8 with 1-series
    requests and at concurrency 1 with 100-series requests; serve -> /ping 200 time;
  - gluonts.shell serving the mxnet model, 1-series requests at concurrency 8.
100 samples per series everywhere. Loopback only; each load run is bounded by --seconds.

    .venv/bin/python -m bench.serve_throughput [--seconds 15]

`--fronts [--baseline-repo /work/main]` instead compares, side by side in one run, the serving fronts
(issue #12 item 10): nginx + gunicorn (default), gunicorn alone (DEEPAR_FRONT=gunicorn) and, if given,
another checkout's `container/serve` (today's server): 1-series c=8 and 100-series c=1 throughput,
and the slowest of 10 /ping calls while 64 connections sit on half-sent requests.

Needs wrk (Debian package) and the dev extras (waitress, click for gluonts.shell).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from sagemaker_deepar import sample_data
from sagemaker_deepar.contract import write_jsonl
from tests.helpers import free_port

REPO = Path(__file__).resolve().parent.parent

HYPERPARAMETERS = {
    "time_freq": "H",
    "prediction_length": "24",
    "context_length": "72",
    "epochs": "1",
    "num_cells": "40",
    "num_layers": "3",
    "num_batches_per_epoch": "5",
    "cardinality": "ignore",
    "mini_batch_size": "32",
    "seed": "1",
}
CONFIG = {"num_samples": 100, "output_types": ["mean", "quantiles"], "quantiles": ["0.1", "0.5", "0.9"]}


# `python -m gluonts.shell serve` exactly, except that it listens on loopback (the CLI hard-codes *:8080).
GLUONTS_SHELL = r"""
import sys, pathlib, waitress
from gluonts.shell import serve
from gluonts.shell.env import ServeEnv
env = ServeEnv(pathlib.Path(sys.argv[1]))
env.install_dynamic()
app = serve.make_flask_app(env=env, forecaster_type=None, settings=serve.Settings())
waitress.serve(app, listen=f"127.0.0.1:{sys.argv[2]}")
"""


def train(root: Path, backend: str, records: list[dict]) -> None:
    write_jsonl(records, root / "input/data/train/train.json")
    (root / "input/config").mkdir(parents=True, exist_ok=True)
    (root / "input/config/hyperparameters.json").write_text(json.dumps({**HYPERPARAMETERS, "backend": backend}))
    subprocess.run(
        [sys.executable, str(REPO / "container/train")],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "SAGEMAKER_BASE_DIR": str(root)},
    )


def request_body(records: list[dict], n: int) -> dict:
    instances = [{"start": r["start"], "target": r["target"][-200:]} for r in records[:n]]
    return {"instances": instances, "configuration": CONFIG}


def in_process(model_dir: Path, records: list[dict], seconds: float) -> dict:
    from sagemaker_deepar.inference import InferenceConfig, Model, parse_instance, predictions
    from sagemaker_deepar.logs import quiet_libraries

    quiet_libraries()

    model = Model.load(model_dir)
    cfg = InferenceConfig(
        num_samples=100,
        output_types=("mean", "quantiles"),
        quantile_keys=("0.1", "0.5", "0.9"),
        quantile_levels=(0.1, 0.5, 0.9),
    )
    results = {}
    for n in (1, 100):
        body = request_body(records, n)
        model.sample([parse_instance(i, model, "").entry for i in body["instances"]], 100)  # warm-up
        calls, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            entries = [parse_instance(i, model, "").entry for i in body["instances"]]
            predictions(model.sample(entries, 100), cfg, [])
            calls += 1
        elapsed = time.perf_counter() - start
        results[n] = {"calls_per_s": calls / elapsed, "series_per_s": calls * n / elapsed}
    return results


def wrk(url: str, body: dict, connections: int, seconds: int, workdir: Path) -> dict:
    script = workdir / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(json.dumps(body))}\n"
    )
    out = subprocess.run(
        [
            "wrk",
            f"-t{min(connections, 2)}",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "--timeout",
            "30s",
            "-s",
            str(script),
            url + "/invocations",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    latency = {p: _ms(re.search(rf"\s{p}%\s+([\d.]+\w+)", out).group(1)) for p in ("50", "99")}
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "p50_ms": latency["50"],
        "p99_ms": latency["99"],
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "socket_errors": errors.group(1) if errors else "",
    }


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(\w+)", text).groups()
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}[unit]


def wait_ping(url: str, process: subprocess.Popen, timeout: float = 180) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if requests.get(url + "/ping", timeout=2).status_code == 200:
                return time.perf_counter() - start
        except requests.RequestException:
            pass
        time.sleep(0.05)
    raise RuntimeError("server not ready")


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=40)
    except subprocess.TimeoutExpired:
        process.kill()


def ping_under_stalled_clients(port: int, url: str, stalled: int = 64, pings: int = 10) -> str:
    """The slowest /ping (5 s cap) while ``stalled`` sockets hold half-sent requests (half headers, half bodies)."""
    sockets = []
    try:
        for i in range(stalled):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Ty" if i % 2 else
                         b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
            sockets.append(sock)
        time.sleep(0.5)
        worst = 0.0
        for _ in range(pings):
            start = time.perf_counter()
            try:
                requests.get(url + "/ping", timeout=5).raise_for_status()
            except requests.RequestException:
                return "no answer in 5 s"
            worst = max(worst, time.perf_counter() - start)
        return f"{worst * 1000:.0f} ms"
    finally:
        for sock in sockets:
            sock.close()


def compare_fronts(args, tmp_path: Path, records: list[dict]) -> None:
    servers = [("nginx + gunicorn", REPO, {}), ("gunicorn alone", REPO, {"DEEPAR_FRONT": "gunicorn"})]
    if args.baseline_repo:
        servers.append((f"baseline {args.baseline_repo}", Path(args.baseline_repo), {}))
    rows = []
    for name, repo, extra in servers:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "SAGEMAKER_BASE_DIR": str(tmp_path / "torch"), "DEEPAR_BIND_HOST": "127.0.0.1",
               "SAGEMAKER_BIND_TO_PORT": str(port), "PYTHONPATH": str(repo), **extra}
        server = subprocess.Popen([sys.executable, str(repo / "container/serve")], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ping(url, server)
            small = wrk(url, request_body(records, 1), 8, args.seconds, tmp_path)
            big = wrk(url, request_body(records, 100), 1, args.seconds, tmp_path)
            ping = ping_under_stalled_clients(port, url)
        finally:
            stop(server)
        rows.append((name, small, big, ping))
        print(f"{name:<28}: c=8 1-series {small['rps']:.1f} req/s (p99 {small['p99_ms']:.0f} ms, non-2xx {small['non2xx']}); "
              f"c=1 100-series {big['rps'] * 100:.0f} series/s; /ping with 64 stalled sockets: {ping}", flush=True)
    base = rows[-1] if args.baseline_repo else rows[1]
    print(f"\nratios against {base[0]}")
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}x" if b else "n/a (no baseline completions)"

    for name, small, big, _ in rows:
        print(f"  {name:<28}: 1-series c=8 {ratio(small['rps'], base[1]['rps'])}, 100-series {ratio(big['rps'], base[2]['rps'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--fronts", action="store_true", help="compare nginx + gunicorn, gunicorn alone, a baseline")
    parser.add_argument("--baseline-repo", help="another checkout whose container/serve is measured beside ours")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install wrk")
    if args.fronts:
        with tempfile.TemporaryDirectory() as tmp:
            records = sample_data.generate(num_sensors=20, days=30)
            train(Path(tmp) / "torch", "torch", records)
            print("model: context 72, prediction 24, 3 x 40 LSTM, 100 samples; request series of 200 points")
            compare_fronts(args, Path(tmp), records)
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        records = sample_data.generate(num_sensors=20, days=30)
        for backend in ("torch", "mxnet"):
            train(tmp_path / backend, backend, records)
        print("model: context 72, prediction 24, 3 x 40 LSTM, 100 samples; request series of 200 points")

        ours_in_process = in_process(tmp_path / "torch/model", records, args.seconds)
        single, batched = ours_in_process[1], ours_in_process[100]
        print(
            f"in-process, 1 thread : 1-series {single['calls_per_s']:.1f} req/s; "
            f"100-series {batched['series_per_s']:.0f} series/s"
        )

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "SAGEMAKER_BASE_DIR": str(tmp_path / "torch"),
            "DEEPAR_BIND_HOST": "127.0.0.1",
            "SAGEMAKER_BIND_TO_PORT": str(port),
        }
        server = subprocess.Popen(
            [sys.executable, str(REPO / "container/serve")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            ready = wait_ping(url, server)
            print(f"our server           : serve -> /ping 200 in {ready:.2f} s")
            ours = {}
            for c in (1, 4, 8):
                ours[c] = wrk(url, request_body(records, 1), c, args.seconds, tmp_path)
                r = ours[c]
                print(
                    f"our server, c={c}       : 1-series {r['rps']:.1f} req/s, p50 {r['p50_ms']:.0f} ms, "
                    f"p99 {r['p99_ms']:.0f} ms, non-2xx {r['non2xx']} {r['socket_errors']}"
                )
            big = wrk(url, request_body(records, 100), 1, args.seconds, tmp_path)
            print(
                f"our server, c=1       : 100-series {big['rps'] * 100:.0f} series/s, p50 {big['p50_ms']:.0f} ms, "
                f"p99 {big['p99_ms']:.0f} ms, non-2xx {big['non2xx']}"
            )
        finally:
            stop(server)

        shell_root = tmp_path / "shell"
        shutil.copytree(tmp_path / "mxnet/model/predictor", shell_root / "model")
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        shell = subprocess.Popen(
            [sys.executable, "-c", GLUONTS_SHELL, str(shell_root), str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            wait_ping(url, shell)
            peer_body = request_body(records, 1)
            peer_body["configuration"] = {**CONFIG, "freq": "h"}  # gluonts.shell insists on the frequency
            assert requests.post(url + "/invocations", json=peer_body, timeout=60).status_code == 200
            peer = wrk(url, peer_body, 8, args.seconds, tmp_path)
            print(
                f"gluonts.shell (mxnet), c=8: 1-series {peer['rps']:.1f} req/s, p50 {peer['p50_ms']:.0f} ms, "
                f"p99 {peer['p99_ms']:.0f} ms, non-2xx {peer['non2xx']} {peer['socket_errors']}"
            )
        finally:
            stop(shell)

        print("\nratios (targets in brackets)")
        print(f"  ours c=8 / gluonts.shell c=8        : {ours[8]['rps'] / peer['rps']:.1f}x  [>= 10x]")
        print(f"  ours c=8 / in-process 1-series      : {ours[8]['rps'] / single['calls_per_s']:.2f}x  [>= 1.5x]")
        print(f"  ours 100-series / in-process batched: {big['rps'] * 100 / batched['series_per_s']:.2f}x  [>= 0.9x]")
        print(f"  ours p99 at c=8                     : {ours[8]['p99_ms']:.0f} ms  [<= 1000 ms]")
        print(f"  serve -> /ping 200                  : {ready:.2f} s  [<= 5 s]")


if __name__ == "__main__":
    main()
