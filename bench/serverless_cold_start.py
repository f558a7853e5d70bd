"""Serverless cold start: `docker run --memory=NG -e DEEPAR_HOSTING_MODE=serverless IMAGE serve` until
/ping answers 200 (read-only /opt/ml, as bench/image_cold_start.py), for each memory size, beside
the default real-time start without a memory limit, runs interleaved in the same run. Also prints
the workers x threads each container chose (from its log): they must follow the memory limit.

    .venv/bin/python -m bench.serverless_cold_start [--image sagemaker-deepar:latest] [--memory 1 3 6] [--runs 3] [--json PATH]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench._paired import machine
from bench._results import JSON_HELP, Result
from bench.image_cold_start import serving_container, train_model


def cold_start(image: str, model_root: Path, run_args: list[str]) -> tuple[float, str]:
    """(seconds from `docker run` to /ping 200, "W worker(s) x T threads" from the container's log)."""
    with serving_container(image, model_root, run_args) as (name, seconds):
        out = subprocess.run(["docker", "logs", name], capture_output=True, text=True)
    shape = re.search(r"\d+ worker\(s\) x \d+ threads", out.stdout + out.stderr)
    return seconds, shape.group(0) if shape else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="sagemaker-deepar:latest")
    parser.add_argument("--memory", type=int, nargs="+", default=[1, 3, 6], help="GB, as MemorySizeInMB / 1024")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, help=JSON_HELP)
    args = parser.parse_args()
    result = Result("serverless_cold_start", sys.argv[1:])
    print(machine(), flush=True)
    setups = {"real-time, no memory limit (baseline)": []}
    for gb in args.memory:
        setups[f"serverless, --memory={gb}g"] = [f"--memory={gb}g", "-e", "DEEPAR_HOSTING_MODE=serverless"]
    times: dict[str, list[float]] = {label: [] for label in setups}
    shapes: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        train_model(args.image, Path(tmp))
        for _ in range(args.runs):
            for label, run_args in setups.items():  # interleaved, so machine noise hits all alike
                seconds, shapes[label] = cold_start(args.image, Path(tmp), run_args)
                times[label].append(seconds)
    baseline = statistics.median(times[next(iter(setups))])
    print(f"image {args.image}: docker run ... serve -> /ping 200, median of {args.runs}")
    for label in setups:
        median = statistics.median(times[label])
        runs = ", ".join(f"{t:.2f}" for t in times[label])
        line = f"{label:<40} {median:6.2f} s ({runs}); {shapes[label]}; {median / baseline:.2f}x the baseline"
        print(f"  {line}")
        result.figure(f"/ping 200, {label}", median, "s", line)
        for run, seconds in enumerate(times[label], 1):
            result.row(kind="cold_start", image=label, run=run, seconds_to_ping=seconds)
    result.write(args.json)


if __name__ == "__main__":
    main()
