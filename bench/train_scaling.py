"""Multi-host training speed: the image on 1 host vs 2 hosts, each a container of one CPU (``--cpus 1``)
on one docker network, as SageMaker (and its local mode) runs them.

Both jobs train the same data, hyperparameters and seed; the 2-host job splits every epoch's batches
over its hosts (each trains on its half of the series and DDP averages the gradients). Runs alternate
(1 host, 2 hosts, 1 host, ...). Throughput is the job's: windows/s summed over hosts (the leader's
``#throughput_metric`` lines x hosts: DDP keeps the hosts in lockstep), first epoch left out (warm-up);
reported as batches/s of ``mini_batch_size`` windows. The headline is the median of the per-round
ratios (2 hosts / 1 host in the same round; bench._paired) with its range; since the 2-host job has
two CPUs to the 1-host job's one, per-CPU figures are printed too. Also the job's wall time and the
final train loss (``deepar-metadata.json``). Every container has a time limit and is removed afterwards, and so
is the network.

    .venv/bin/python -m bench.train_scaling --image sagemaker-deepar:multihost [--repeats 2] [--epochs 5]
        [--batches-per-epoch 40] [--timeout 900]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench._paired import Paired, machine
from bench.serve_throughput import BENCH_MODEL
from sagemaker_deepar.training import sample_data

HYPERPARAMETERS = {
    **BENCH_MODEL,
    "mini_batch_size": "64",
    "likelihood": "student-T",
}
THROUGHPUT = re.compile(r"#throughput_metric: host=\S+, train throughput=([0-9.]+) records/second")


@dataclass
class Run:
    hosts: int
    windows_per_second: float
    wall_seconds: float
    final_loss: float


def prepare_host(root: Path, data: Path, hp: dict, hosts: list[str], host: str) -> None:
    shutil.copytree(data, root / "input" / "data")
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hp))
    (config / "inputdataconfig.json").write_text(json.dumps({"train": {"TrainingInputMode": "File"}}))
    (config / "resourceconfig.json").write_text(
        json.dumps({"current_host": host, "hosts": hosts, "network_interface_name": "eth0"})
    )


def run_job(image: str, tmp: Path, data: Path, hp: dict, num_hosts: int, network: str, timeout: float) -> Run:
    tag = f"{os.getpid()}-{num_hosts}-{time.monotonic_ns()}"
    hosts = [f"algo-{i + 1}-{tag[-5:]}" for i in range(num_hosts)]
    names = [f"deepar-scaling-{tag}-{i + 1}" for i in range(num_hosts)]
    roots = [tmp / tag / host for host in hosts]
    for root, host in zip(roots, hosts):
        prepare_host(root, data, hp, hosts, host)
    started = time.perf_counter()
    for name, root, host in zip(names, roots, hosts):
        subprocess.run(
            ["docker", "run", "-d", "--name", name, "--network", network, "--network-alias", host,
             "--hostname", host, "--cpus", "1", "-e", "OMP_NUM_THREADS=1",
             "-v", f"{root}:/opt/ml", image, "train"],
            check=True, capture_output=True,
        )  # fmt: skip
    try:
        codes = []
        for name in names:
            waited = subprocess.run(["docker", "wait", name], capture_output=True, text=True, timeout=timeout)
            codes.append(int(waited.stdout.strip()))
        wall = time.perf_counter() - started
        leader_log = subprocess.run(["docker", "logs", names[0]], capture_output=True, text=True).stdout
        if any(codes):
            raise RuntimeError(f"{num_hosts}-host job failed, exit codes {codes}:\n{leader_log[-3000:]}")
    finally:
        subprocess.run(["docker", "rm", "-f", *names], capture_output=True)
    rates = [float(r) for r in THROUGHPUT.findall(leader_log)][1:]  # the first epoch warms up
    metadata = json.loads((roots[0] / "model" / "deepar-metadata.json").read_text())
    return Run(num_hosts, statistics.median(rates) * num_hosts, wall, metadata["train"]["final_loss"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="sagemaker-deepar:latest")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batches-per-epoch", type=int, default=40)
    parser.add_argument("--timeout", type=float, default=900, help="seconds per job")
    args = parser.parse_args()
    hp = {**HYPERPARAMETERS, "epochs": str(args.epochs), "num_batches_per_epoch": str(args.batches_per_epoch)}
    network = f"deepar-scaling-{os.getpid()}"
    subprocess.run(["docker", "network", "create", network], check=True, capture_output=True)
    runs: list[Run] = []
    batch = int(hp["mini_batch_size"])
    rounds = Paired("2 hosts / 1 host batches/s", ">= 1.7x")
    per_cpu = Paired("2 hosts / 1 host batches/s per CPU")
    print(f"{machine()}; each host a container of 1 CPU (--cpus 1): 1 host = 1 CPU, 2 hosts = 2 CPUs", flush=True)
    try:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            prediction_length = int(hp["prediction_length"])
            train, _ = sample_data.split_train_test(sample_data.generate(num_sensors=20, days=60), prediction_length)
            sample_data.write_jsonl(train, tmp / "data" / "train" / "train.json")
            for repeat in range(args.repeats):
                pair = {}
                for hosts in (1, 2):
                    run = run_job(args.image, tmp, tmp / "data", hp, hosts, network, args.timeout)
                    runs.append(run)
                    pair[hosts] = run.windows_per_second / batch
                    print(
                        f"run {repeat + 1}, {hosts} host(s): {pair[hosts]:.2f} batches/s, "
                        f"wall {run.wall_seconds:.1f} s, final loss {run.final_loss:.4f}",
                        flush=True,
                    )
                rounds.add(pair[2], pair[1])
                per_cpu.add(pair[2] / 2, pair[1])
    finally:
        subprocess.run(["docker", "network", "rm", network], capture_output=True)
    med = {h: statistics.median(r.windows_per_second for r in runs if r.hosts == h) / batch for h in (1, 2)}
    wall = {h: statistics.median(r.wall_seconds for r in runs if r.hosts == h) for h in (1, 2)}
    loss = {h: statistics.median(r.final_loss for r in runs if r.hosts == h) for h in (1, 2)}
    print(f"1 host : {med[1]:.2f} batches/s, wall {wall[1]:.1f} s, final loss {loss[1]:.4f}")
    print(f"2 hosts: {med[2]:.2f} batches/s, wall {wall[2]:.1f} s, final loss {loss[2]:.4f}")
    print(f"wall time 1 host / 2 hosts (medians): {wall[1] / wall[2]:.2f}x")
    print(per_cpu.headline())
    print(rounds.headline())


if __name__ == "__main__":
    main()
