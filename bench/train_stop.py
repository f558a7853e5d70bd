"""How fast the train job reacts, beside a full run of the same job measured in the same run:

- SIGTERM mid-epoch (sent from outside, 1 s into the second epoch) -> exit 0 with a checked model:
  seconds from the signal to the exit, against the measured length of one epoch;
- an unusable model folder (a file in its place) -> ClientError: seconds to fail, against the full
  run (what the job cost before the probe: it failed when writing the model, after training).

    .venv/bin/python -m bench.train_stop [--series 50 --points 2000 --epochs 5 --batches 40] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._paired import machine
from bench._results import JSON_HELP, Result

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "container" / "train"


def make_job(root: Path, args: argparse.Namespace) -> None:
    (root / "input/config").mkdir(parents=True)
    hp = {
        "time_freq": "H",
        "prediction_length": "24",
        "context_length": "48",
        "epochs": str(args.epochs),
        "num_batches_per_epoch": str(args.batches),
        "mini_batch_size": "64",
        "num_cells": "40",
        "num_layers": "2",
    }
    (root / "input/config/hyperparameters.json").write_text(json.dumps(hp))
    (root / "input/data/train").mkdir(parents=True)
    with open(root / "input/data/train/data.json", "w") as f:
        for s in range(args.series):
            target = [round(20 + s + 10 * math.sin(i * 2 * math.pi / 24) + (i * 7 % 5), 3) for i in range(args.points)]
            f.write(json.dumps({"start": "2024-01-01 00:00:00", "target": target}) + "\n")


def start(root: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "SAGEMAKER_BASE_DIR": str(root),
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    env.pop("TRAINING_JOB_NAME", None)
    return subprocess.Popen(
        [sys.executable, str(TRAIN)], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )


def full_run(root: Path, timeout: float) -> tuple[float, float]:
    """(seconds of the whole job, seconds of one epoch: between the first two epoch lines)."""
    started = time.monotonic()
    process = start(root)
    epoch_ends = []
    for line in process.stdout:
        if re.search(r"epoch=\d+, train loss", line):
            epoch_ends.append(time.monotonic())
        if time.monotonic() - started > timeout:
            process.kill()
            raise SystemExit(f"full run over {timeout} s")
    assert process.wait() == 0, "the full run failed"
    return time.monotonic() - started, epoch_ends[1] - epoch_ends[0]


def stopped_run(root: Path, timeout: float) -> float:
    """Seconds from SIGTERM (1 s into the second epoch) to the exit; checks exit 0 and a model."""
    process = start(root)
    deadline = time.monotonic() + timeout
    for line in process.stdout:
        if "epoch=0, train loss" in line:
            break
        if time.monotonic() > deadline:
            process.kill()
            raise SystemExit("no first epoch in time")
    time.sleep(1.0)
    sent = time.monotonic()
    process.send_signal(signal.SIGTERM)
    process.communicate(timeout=timeout)
    seconds = time.monotonic() - sent
    assert process.returncode == 0 and (root / "model/deepar-metadata.json").exists(), "no model after SIGTERM"
    return seconds


def failing_run(root: Path, timeout: float) -> float:
    (root / "model").write_text("a file where the model folder should be")
    started = time.monotonic()
    process = start(root)
    process.communicate(timeout=timeout)
    assert process.returncode == 1, f"expected a ClientError, got exit {process.returncode}"
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=50)
    parser.add_argument("--points", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--timeout", type=float, default=900, help="seconds any one run may take")
    parser.add_argument("--json", type=Path, help=JSON_HELP)
    args = parser.parse_args()
    result = Result("train_stop", sys.argv[1:])
    print(machine(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        roots = [Path(tmp) / name for name in ("full", "stop", "fail")]
        for root in roots:
            make_job(root, args)
        full, epoch = full_run(roots[0], args.timeout)
        stop = stopped_run(roots[1], args.timeout)
        fail = failing_run(roots[2], args.timeout)
    print(f"full run ({args.epochs} epochs x {args.batches} batches): {full:.1f} s; one epoch {epoch:.1f} s")
    stop_line = f"SIGTERM mid-epoch -> exit 0 with a checked model: {stop:.1f} s = {stop / epoch:.2f} epochs"
    fail_line = f"model folder is a file -> ClientError: {fail:.1f} s = {fail / full:.3f} of the full run"
    print(stop_line)
    print(fail_line)
    result.figure("SIGTERM mid-epoch to exit", stop / epoch, "epochs", stop_line)
    result.figure("unusable model folder to ClientError", fail / full, "of the full run", fail_line)
    result.row(full_seconds=full, epoch_seconds=epoch, stop_seconds=stop, fail_seconds=fail)
    result.write(args.json)


if __name__ == "__main__":
    main()
