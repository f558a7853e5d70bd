"""Serving throughput: in-process predictor vs our server vs gluonts.shell, on the same architecture.

One run: trains DeepAR (context 72, prediction 24, 3 layers x 40 cells) through `container/train`
(torch for us, mxnet for the gluonts.shell peer), then measures
  - in-process, single thread, 1-series and 100-series inputs: GluonTS's own `DeepARModel.forward`
    (the baseline) and our `Model.sample` (the served path, `sagemaker_deepar.runtimes.fast_sampler`), with
    the GFLOP/s each achieves (`fast_sampler.network_flops`) next to the CPU's estimated peak;
  - our server (`container/serve`, default settings unless SAGEMAKER_MODEL_SERVER_WORKERS etc. are
    set) under wrk at concurrency 1/4/8 with 1-series requests and at concurrency 1 with 100-series
    requests, the slowest /ping during the c=8 run; serve -> /ping 200 time; each worker's RSS/PSS
    after loading and after a --soak-seconds load run (1-series, c=8);
  - the same load on another checkout's server (--baseline-repo, e.g. /work/main) and on ours with
    other worker counts (--workers 2), one after the other in the same run, with ratios;
  - gluonts.shell serving the mxnet model, 1-series requests at concurrency 8 (skip with --no-peer).
100 samples per series everywhere. Loopback only; each load run is bounded by --seconds / --soak-seconds.

    .venv/bin/python -m bench.serve_throughput [--seconds 15] [--soak-seconds 600] [--no-peer]
        [--baseline-repo /work/main] [--workers 2]
    .venv/bin/python -m bench.serve_throughput --interleave 2 --baseline-repo /work/main --workers 2
        (A/B: each server started in turn every round, c=8 1-series; for a machine whose load changes)
    .venv/bin/python -m bench.serve_throughput --runtimes onnx torch --interleave 3 [--workers 2]
        (DEEPAR_INFERENCE_RUNTIME side by side, in turn every round: /ping time, c=8 1-series, 100-series)

`--fronts [--baseline-repo /work/main]` instead compares, side by side in one run, the serving fronts
(issue #12 item 10): nginx + gunicorn (default), gunicorn alone (DEEPAR_FRONT=gunicorn) and, if given,
another checkout's `container/serve` (today's server): 1-series c=8 and 100-series c=1 throughput,
and the slowest of 10 /ping calls while 64 connections sit on half-sent requests.

Needs wrk (Debian package) and the dev extras (waitress, click for gluonts.shell).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import requests

from devtools.serving import free_port, gunicorn_workers
from sagemaker_deepar.contract import write_jsonl
from sagemaker_deepar.training import sample_data

REPO = Path(__file__).resolve().parent.parent

# The bench model (context 72, prediction 24, 3 x 40 LSTM, seeded): the network every benchmark trains
# (here, train_speed, train_scaling), each with its own epochs and batches.
BENCH_MODEL = dict(time_freq="H", prediction_length="24", context_length="72", num_cells="40", num_layers="3", seed="1")
HYPERPARAMETERS = {
    **BENCH_MODEL,
    "epochs": "1",
    "num_batches_per_epoch": "5",
    "cardinality": "ignore",
    "mini_batch_size": "32",
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
    """{"gluonts"|"ours": {1|100: rates}}: the two samplers alternate so both see the same machine load."""
    import torch

    from sagemaker_deepar.logs import quiet_libraries
    from sagemaker_deepar.runtimes.fast_sampler import network_flops
    from sagemaker_deepar.runtimes.model import Model
    from sagemaker_deepar.serving.codec import InferenceConfig, parse_instance, predictions

    quiet_libraries()
    torch.set_num_threads(1)

    model = Model.load(model_dir, runtime="torch")
    fast = model.engine.network.fast_sampler
    cfg = InferenceConfig(
        num_samples=100,
        output_types=("mean", "quantiles"),
        quantile_keys=("0.1", "0.5", "0.9"),
        quantile_levels=(0.1, 0.5, 0.9),
    )
    results: dict = {"gluonts": {}, "ours": {}}
    for n in (1, 100):
        body = request_body(records, n)
        totals = {name: [0, 0.0] for name in results}
        rounds = 5
        for _ in range(rounds):  # interleaved slices: noise on a shared machine hits both alike
            for name in results:
                model.engine.network.fast_sampler = fast if name == "ours" else None
                model.sample([parse_instance(i, model, "").entry for i in body["instances"]], 100)  # warm-up
                start = time.perf_counter()
                while time.perf_counter() - start < seconds / rounds:
                    entries = [parse_instance(i, model, "").entry for i in body["instances"]]
                    predictions(model.sample(entries, 100), cfg, [])
                    totals[name][0] += 1
                totals[name][1] += time.perf_counter() - start
        flops = network_flops(model.engine.network.model, n, 100)
        for name, (calls, elapsed) in totals.items():
            results[name][n] = {
                "calls_per_s": calls / elapsed,
                "series_per_s": calls * n / elapsed,
                "gflops": calls * flops / elapsed / 1e9,
            }
    model.engine.network.fast_sampler = fast
    results["flops_per_series"] = network_flops(model.engine.network.model, 1, 100)
    return results


def peak_gflops() -> tuple[float, str]:
    """FP32 peak from lscpu: cores x clock x FLOP/cycle (2 FMA pipes: 32 with AVX-512 off and AVX2+FMA)."""
    info = subprocess.run(["lscpu"], check=False, capture_output=True, text=True).stdout
    field = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    flags = set(field.get("Flags", "").split())
    cores = int(field.get("Core(s) per socket", "1").strip()) * int(field.get("Socket(s)", "1").strip())
    mhz_text = field.get("CPU max MHz", "").strip() or field.get("CPU MHz", "").strip()
    if not mhz_text:
        mhz_text = re.search(r"cpu MHz\s*:\s*([\d.]+)", Path("/proc/cpuinfo").read_text()).group(1)
    ghz = float(mhz_text) / 1000
    if "avx512f" in flags:
        per_cycle, isa = 64, "AVX-512 + FMA"
    elif {"avx2", "fma"} <= flags:
        per_cycle, isa = 32, "AVX2 + FMA"
    elif "avx" in flags:
        per_cycle, isa = 16, "AVX"
    else:
        per_cycle, isa = 8, "SSE"
    peak = cores * ghz * per_cycle
    return peak, f"{cores} cores x {ghz:.2f} GHz x {per_cycle} FLOP/cycle ({isa}, 2 FMA pipes x 8 lanes x 2)"


def worker_memory_mb(serve_pid: int) -> str:
    """RSS/PSS of each gunicorn worker of the server that `container/serve` started, in MB.

    PSS splits pages shared with the master (a model loaded before forking) between the processes sharing them.
    """
    sizes = []
    for pid in gunicorn_workers(serve_pid):
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        rss, pss = (int(re.search(rf"^{key}:\s+(\d+) kB", rollup, re.M).group(1)) / 1024 for key in ("Rss", "Pss"))
        sizes.append(f"{rss:.0f}/{pss:.0f}")
    return f"{', '.join(sizes)} MB ({len(sizes)} worker(s))"


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
            sock.sendall(
                b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Ty"
                if i % 2
                else b"POST /invocations HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"
            )
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


@dataclass
class Launched:
    url: str
    port: int
    process: subprocess.Popen
    ready_s: float  # serve -> /ping 200


def spawn_serve(repo: Path, base_dir: Path, port: int, **extra: str) -> subprocess.Popen:
    """`container/serve` of the checkout ``repo`` on loopback ``port`` (its output discarded), with the
    environment plus ``extra``; the caller waits for /ping (``wait_ping``) and ``stop``s it."""
    env = {
        **os.environ,
        "SAGEMAKER_BASE_DIR": str(base_dir),
        "DEEPAR_BIND_HOST": "127.0.0.1",
        "SAGEMAKER_BIND_TO_PORT": str(port),
        **extra,
    }
    return subprocess.Popen(
        [sys.executable, str(repo / "container/serve")], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


@contextmanager
def launched(repo: Path, base_dir: Path, **extra: str) -> Iterator[Launched]:
    """`container/serve` of the checkout ``repo`` (ours or a baseline) on a free loopback port, stopped on exit."""
    port = free_port()
    process = spawn_serve(repo, base_dir, port, **{"PYTHONPATH": str(repo), **extra})
    url = f"http://127.0.0.1:{port}"
    try:
        yield Launched(url, port, process, wait_ping(url, process))
    finally:
        stop(process)


def ping_during(load: Callable[[], dict], url: str, pings: int = 20) -> tuple[dict, str]:
    """Run ``load`` while /ping is called ``pings`` times (0.25 s apart): the load's result and the slowest /ping."""
    worst: list[float] = []
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(load)
        time.sleep(1.0)  # let the load reach its concurrency
        for _ in range(pings):
            if pending.done():
                break
            start = time.perf_counter()
            try:
                requests.get(url + "/ping", timeout=5).raise_for_status()
            except requests.RequestException:
                worst.append(math.inf)
                break
            worst.append(time.perf_counter() - start)
            time.sleep(0.25)
        result = pending.result()
    slowest = max(worst, default=math.nan)
    return result, "no answer in 5 s" if slowest == math.inf else f"{slowest * 1000:.0f} ms"


def measure_server(
    name: str, server: Launched, records: list[dict], seconds: int, workdir: Path, soak_seconds: int = 0
) -> dict:
    """The load runs every server in a comparison gets: 1-series at c=1/4/8 (/ping timed during c=8), then
    100-series at c=1, then an optional 1-series c=8 soak; each worker's RSS/PSS after loading and after."""
    memory_loaded = worker_memory_mb(server.process.pid)
    print(f"{name:<28}: serve -> /ping 200 in {server.ready_s:.2f} s; worker RSS/PSS after loading {memory_loaded}")
    small = {}
    for c in (1, 4, 8):
        if c == 8:
            small[c], ping = ping_during(
                lambda: wrk(server.url, request_body(records, 1), 8, seconds, workdir), server.url
            )
        else:
            small[c] = wrk(server.url, request_body(records, 1), c, seconds, workdir)
        r = small[c]
        print(
            f"{name:<28}: c={c} 1-series {r['rps']:.1f} req/s, p50 {r['p50_ms']:.0f} ms, p99 {r['p99_ms']:.0f} ms, "
            f"non-2xx {r['non2xx']} {r['socket_errors']}" + (f"; slowest /ping during it {ping}" if c == 8 else "")
        )
    big = wrk(server.url, request_body(records, 100), 1, seconds, workdir)
    print(
        f"{name:<28}: c=1 100-series {big['rps'] * 100:.0f} series/s, p50 {big['p50_ms']:.0f} ms, "
        f"p99 {big['p99_ms']:.0f} ms, non-2xx {big['non2xx']}"
    )
    result = {"small": small, "big": big, "ping_under_load": ping, "ready_s": server.ready_s}
    if soak_seconds:
        soak = wrk(server.url, request_body(records, 1), 8, soak_seconds, workdir)
        print(
            f"{name:<28}: soak {soak_seconds} s c=8 1-series {soak['rps']:.1f} req/s, p99 {soak['p99_ms']:.0f} ms, "
            f"non-2xx {soak['non2xx']} {soak['socket_errors']}; worker RSS/PSS after {worker_memory_mb(server.process.pid)}",
            flush=True,
        )
    return result


def compare_fronts(args, tmp_path: Path, records: list[dict]) -> None:
    servers = [("nginx + gunicorn", REPO, {}), ("gunicorn alone", REPO, {"DEEPAR_FRONT": "gunicorn"})]
    if args.baseline_repo:
        servers.append((f"baseline {args.baseline_repo}", Path(args.baseline_repo), {}))
    rows = []
    for name, repo, extra in servers:
        with launched(repo, tmp_path / "torch", **extra) as server:
            small = wrk(server.url, request_body(records, 1), 8, args.seconds, tmp_path)
            big = wrk(server.url, request_body(records, 100), 1, args.seconds, tmp_path)
            ping = ping_under_stalled_clients(server.port, server.url)
        rows.append((name, small, big, ping))
        print(
            f"{name:<28}: c=8 1-series {small['rps']:.1f} req/s (p99 {small['p99_ms']:.0f} ms, non-2xx {small['non2xx']}); "
            f"c=1 100-series {big['rps'] * 100:.0f} series/s; /ping with 64 stalled sockets: {ping}",
            flush=True,
        )
    base = rows[-1] if args.baseline_repo else rows[1]
    print(f"\nratios against {base[0]}")
    for name, small, big, _ in rows:
        print(
            f"  {name:<28}: 1-series c=8 {ratio(small['rps'], base[1]['rps'])}, 100-series {ratio(big['rps'], base[2]['rps'])}"
        )


def interleaved(args, tmp_path: Path, records: list[dict]) -> None:
    """A/B on a noisy machine: each server in turn, every round, so load changes hit all of them alike."""
    servers: list[tuple[str, Path, dict]] = [("ours", REPO, {})]
    servers += [(f"ours, {n} worker(s)", REPO, {"SAGEMAKER_MODEL_SERVER_WORKERS": str(n)}) for n in args.workers]
    if args.baseline_repo:
        servers.append((f"baseline {args.baseline_repo}", Path(args.baseline_repo), {}))
    totals = {name: [0.0, 0.0] for name, _, _ in servers}
    for round_ in range(args.interleave):
        for name, repo, extra in servers:
            with launched(repo, tmp_path / "torch", **extra) as server:
                wrk(server.url, request_body(records, 1), 8, 2, tmp_path)  # warm-up
                r = wrk(server.url, request_body(records, 1), 8, args.seconds, tmp_path)
            totals[name][0] += r["rps"]
            totals[name][1] += server.ready_s
            print(
                f"round {round_} {name:<24}: serve -> /ping 200 {server.ready_s:.1f} s; c=8 1-series "
                f"{r['rps']:.1f} req/s, p99 {r['p99_ms']:.0f} ms, non-2xx {r['non2xx']}",
                flush=True,
            )
    base = servers[-1][0]
    print(f"\nmeans over {args.interleave} rounds, ratio against {base}")
    for name, (rps, ready) in totals.items():
        n = args.interleave
        print(
            f"  {name:<24}: c=8 {rps / n:.1f} req/s ({ratio(rps, totals[base][0])}); /ping 200 after {ready / n:.1f} s"
        )


def compare_runtimes(args, tmp_path: Path, records: list[dict]) -> None:
    """Our server with each DEEPAR_INFERENCE_RUNTIME, started in turn every round (--interleave rounds, at least 1):
    serve -> /ping 200, 1-series c=8 and 100-series c=1; then the in-process GluonTS baseline of the same run."""
    rounds = max(1, args.interleave)
    workers = {"SAGEMAKER_MODEL_SERVER_WORKERS": str(args.workers[0])} if args.workers else {}
    keys = ("rps", "p99_ms", "series_per_s", "ready_s")
    totals = {runtime: dict.fromkeys(keys, 0.0) for runtime in args.runtimes}
    for round_ in range(rounds):
        for runtime in args.runtimes:
            with launched(REPO, tmp_path / "torch", DEEPAR_INFERENCE_RUNTIME=runtime, **workers) as server:
                wrk(server.url, request_body(records, 1), 8, 2, tmp_path)  # warm-up
                small = wrk(server.url, request_body(records, 1), 8, args.seconds, tmp_path)
                big = wrk(server.url, request_body(records, 100), 1, args.seconds, tmp_path)
            values = (small["rps"], small["p99_ms"], big["rps"] * 100, server.ready_s)
            for key, value in zip(keys, values):
                totals[runtime][key] += value / rounds
            print(
                f"round {round_} runtime {runtime:<6}: serve -> /ping 200 {server.ready_s:.2f} s; c=8 1-series "
                f"{small['rps']:.1f} req/s, p99 {small['p99_ms']:.0f} ms, non-2xx {small['non2xx']}; c=1 100-series "
                f"{big['rps'] * 100:.0f} series/s, non-2xx {big['non2xx']}",
                flush=True,
            )
    measured = in_process(tmp_path / "torch/model", records, args.seconds)
    single = measured["gluonts"][1]["calls_per_s"]
    batched = measured["gluonts"][100]["series_per_s"]
    print(
        f"in-process, 1 thread, GluonTS forward: 1-series {single:.1f} req/s; 100-series {batched:.0f} series/s "
        f"(fast loop: {measured['ours'][1]['calls_per_s']:.1f} req/s, {measured['ours'][100]['series_per_s']:.0f} series/s)"
    )
    base = args.runtimes[-1]
    print(f"\nmeans over {rounds} round(s); ratios against runtime {base} and against in-process GluonTS (targets)")
    for runtime, t in totals.items():
        b = totals[base]
        print(
            f"  {runtime:<6}: c=8 {t['rps']:.1f} req/s ({ratio(t['rps'], b['rps'])}; {t['rps'] / single:.2f}x in-process "
            f"1-series [>= 5x]), p99 {t['p99_ms']:.0f} ms [<= 250 ms]; 100-series {t['series_per_s']:.0f} series/s "
            f"({ratio(t['series_per_s'], b['series_per_s'])}; {t['series_per_s'] / batched:.2f}x in-process batched "
            f"[>= 1.2x]); /ping 200 after {t['ready_s']:.2f} s ({ratio(t['ready_s'], b['ready_s'])}) [<= 3 s]"
        )


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "n/a (no baseline completions)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=15, help="length of each measurement")
    parser.add_argument("--soak-seconds", type=int, default=60, help="1-series c=8 load before the second RSS reading")
    parser.add_argument("--no-peer", action="store_true", help="skip gluonts.shell (and training the mxnet model)")
    parser.add_argument("--fronts", action="store_true", help="compare nginx + gunicorn, gunicorn alone, a baseline")
    parser.add_argument("--baseline-repo", help="another checkout whose container/serve is measured beside ours")
    parser.add_argument(
        "--workers", type=int, nargs="*", default=[], help="also measure ours with these SAGEMAKER_MODEL_SERVER_WORKERS"
    )
    parser.add_argument(
        "--interleave",
        type=int,
        default=0,
        metavar="ROUNDS",
        help="only ours, --workers variants and --baseline-repo, started in turn for ROUNDS rounds: c=8 1-series",
    )
    parser.add_argument(
        "--runtimes",
        nargs="+",
        choices=("onnx", "torch"),
        help="only our server under each DEEPAR_INFERENCE_RUNTIME (ratios against the last), in turn every "
        "--interleave round: /ping time, c=8 1-series, 100-series; plus the in-process GluonTS baseline",
    )
    args = parser.parse_args()
    if not shutil.which("wrk"):
        sys.exit("wrk not found: apt-get install wrk")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        records = sample_data.generate(num_sensors=20, days=30)
        backends = ("torch",) if args.no_peer or args.fronts or args.runtimes else ("torch", "mxnet")
        for backend in backends:
            train(tmp_path / backend, backend, records)
        print("model: context 72, prediction 24, 3 x 40 LSTM, 100 samples; request series of 200 points")
        print(f"machine: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} at start")
        if args.fronts:
            compare_fronts(args, tmp_path, records)
            return
        if args.runtimes:
            compare_runtimes(args, tmp_path, records)
            return
        if args.interleave:
            interleaved(args, tmp_path, records)
            return
        peak, peak_how = peak_gflops()
        print(f"CPU FP32 peak        : {peak:.0f} GFLOP/s = {peak_how}")

        measured = in_process(tmp_path / "torch/model", records, args.seconds)
        flops_per_series = measured["flops_per_series"]
        print(f"network work         : {flops_per_series / 1e6:.1f} MFLOP per series (100 samples)")
        for name, label in (("gluonts", "GluonTS forward"), ("ours", "ours (fast loop)")):
            one, hundred = measured[name][1], measured[name][100]
            print(
                f"in-process, 1 thread, {label:16}: 1-series {one['calls_per_s']:.1f} req/s "
                f"({one['gflops']:.1f} GFLOP/s); 100-series {hundred['series_per_s']:.0f} series/s "
                f"({hundred['gflops']:.1f} GFLOP/s = {hundred['gflops'] / peak:.1%} of peak)"
            )

        servers: list[tuple[str, Path, dict]] = [("our server", REPO, {})]
        servers += [
            (f"our server, {n} worker(s)", REPO, {"SAGEMAKER_MODEL_SERVER_WORKERS": str(n)}) for n in args.workers
        ]
        if args.baseline_repo:
            servers.append((f"baseline {args.baseline_repo}", Path(args.baseline_repo), {}))
        served = {}
        for index, (name, repo, extra) in enumerate(servers):  # the soak (memory) only for ours
            with launched(repo, tmp_path / "torch", **extra) as server:
                served[name] = measure_server(
                    name, server, records, args.seconds, tmp_path, args.soak_seconds if index == 0 else 0
                )
        ours = served["our server"]
        server_gflops = ours["small"][8]["rps"] * flops_per_series / 1e9
        print(
            f"our server c=8 work  : {server_gflops:.1f} GFLOP/s = {server_gflops / peak:.1%} of peak; 100-series "
            f"{ours['big']['rps'] * 100 * flops_per_series / 1e9:.1f} GFLOP/s"
        )
        peer = None if args.no_peer else gluonts_shell_c8(tmp_path, records, args.seconds)
        report(ours, measured, peer)
        for name, result in list(served.items())[1:]:
            print(f"\nours against {name} (same run)")
            for c in (1, 4, 8):
                print(
                    f"  1-series c={c}: {ratio(ours['small'][c]['rps'], result['small'][c]['rps'])} req/s, "
                    f"p99 {ours['small'][c]['p99_ms']:.0f} vs {result['small'][c]['p99_ms']:.0f} ms"
                )
            print(f"  100-series c=1: {ratio(ours['big']['rps'], result['big']['rps'])}")
            print(f"  serve -> /ping 200: {ours['ready_s']:.2f} vs {result['ready_s']:.2f} s")
            print(f"  slowest /ping during c=8: {ours['ping_under_load']} vs {result['ping_under_load']}")


def gluonts_shell_c8(tmp_path: Path, records: list[dict], seconds: int) -> dict:
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
        peer = wrk(url, peer_body, 8, seconds, tmp_path)
        print(
            f"gluonts.shell (mxnet), c=8: 1-series {peer['rps']:.1f} req/s, p50 {peer['p50_ms']:.0f} ms, "
            f"p99 {peer['p99_ms']:.0f} ms, non-2xx {peer['non2xx']} {peer['socket_errors']}"
        )
    finally:
        stop(shell)
    return peer


def report(ours: dict, measured: dict, peer: Optional[dict]) -> None:
    """Ratios against the in-process GluonTS baseline measured in the same run (and against our own loop)."""
    single, batched = measured["gluonts"][1], measured["gluonts"][100]
    fast_single, fast_batched = measured["ours"][1], measured["ours"][100]
    c8, big = ours["small"][8], ours["big"]
    print("\nratios (targets in brackets; in-process = GluonTS forward, single thread, same run)")
    if peer is not None:
        print(f"  ours c=8 / gluonts.shell c=8             : {c8['rps'] / peer['rps']:.1f}x  [>= 10x]")
    print(f"  ours c=8 / in-process 1-series           : {c8['rps'] / single['calls_per_s']:.2f}x  [>= 5x]")
    print(f"  ours 100-series / in-process batched     : {big['rps'] * 100 / batched['series_per_s']:.2f}x  [>= 1.2x]")
    print(f"  ours p99 at c=8                          : {c8['p99_ms']:.0f} ms  [<= 250 ms]")
    print(f"  serve -> /ping 200                       : {ours['ready_s']:.2f} s  [<= 3 s]")
    print(f"  slowest /ping during c=8                 : {ours['ping_under_load']}")
    print(f"  fast loop / GluonTS in-process, 1-series : {fast_single['calls_per_s'] / single['calls_per_s']:.2f}x")
    print(f"  fast loop / GluonTS in-process, batched  : {fast_batched['series_per_s'] / batched['series_per_s']:.2f}x")
    print(f"  ours c=8 / in-process fast loop 1-series : {c8['rps'] / fast_single['calls_per_s']:.2f}x")
    print(f"  ours 100-series / in-process fast batched: {big['rps'] * 100 / fast_batched['series_per_s']:.2f}x")


if __name__ == "__main__":
    main()
