"""Warm start vs cold start on new data, side by side in one run, through the real `container/train`:

1. a previous model is trained on the bundled sample data (``--days`` days of hourly air pollution);
2. the data moves on: the same sensors, ``--new-days`` more days and new noise (another seed);
3. a cold run and a warm run (the previous model.tar.gz in the ``model`` channel) train on the new
   data with the same hyperparameters and seed.

Printed: each run's epoch losses, the cold run's final loss, the epoch at which the warm run first
reached it and the wall time to that epoch (from the job's start, so the warm run's unpacking and
loading counts), against the cold run's epochs and wall time.

    .venv/bin/python -m bench.warm_start [--epochs 20 --previous-epochs 20 --days 30 --new-days 7]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Optional

from sagemaker_deepar.contract import split_train_test, write_jsonl
from sagemaker_deepar.sample_data import generate

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "container" / "train"
EPOCH_LINE = re.compile(r"epoch=(\d+), train loss <loss>=(\S+)")


def hyperparameters(epochs: int) -> dict[str, str]:
    return {
        "time_freq": "H",
        "prediction_length": "24",
        "context_length": "48",
        "epochs": str(epochs),
        "likelihood": "student-T",
        "num_cells": "40",
        "num_layers": "2",
        "mini_batch_size": "32",
        "num_batches_per_epoch": "16",
        "seed": "42",
    }


def make_job(root: Path, records: list[dict], epochs: int, previous_model: Optional[Path] = None) -> None:
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters(epochs)))
    train, _ = split_train_test(records, 24)
    write_jsonl(train, root / "input" / "data" / "train" / "train.json")
    channels = {"train": {"ContentType": "application/jsonlines", "TrainingInputMode": "File"}}
    if previous_model is not None:  # as SageMaker File mode delivers Estimator(model_uri=".../model.tar.gz")
        channel = root / "input" / "data" / "model"
        channel.mkdir(parents=True)
        with tarfile.open(channel / "model.tar.gz", "w:gz") as archive:
            for item in sorted(previous_model.iterdir()):
                archive.add(item, arcname=item.name)
        channels["model"] = {"ContentType": "application/x-sagemaker-model", "TrainingInputMode": "File"}
    (config / "inputdataconfig.json").write_text(json.dumps(channels))


def run(root: Path, timeout: float) -> tuple[list[tuple[float, float]], float]:
    """([(seconds since start, loss) per epoch], total seconds); fails loudly on a failed job."""
    env = {
        **os.environ,
        "SAGEMAKER_BASE_DIR": str(root),
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    env.pop("TRAINING_JOB_NAME", None)
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, str(TRAIN)], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    epochs = []
    assert process.stdout is not None
    for line in process.stdout:
        match = EPOCH_LINE.search(line)
        if match:
            epochs.append((time.monotonic() - started, float(match.group(2))))
        if time.monotonic() - started > timeout:
            process.kill()
            raise SystemExit(f"{root.name}: over {timeout} s")
    if process.wait() != 0:
        failure = root / "output" / "failure"
        raise SystemExit(f"{root.name} failed: {failure.read_text() if failure.exists() else 'no failure file'}")
    return epochs, time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the cold and the warm run")
    parser.add_argument("--previous-epochs", type=int, default=20)
    parser.add_argument("--days", type=int, default=30, help="days of data the previous model saw")
    parser.add_argument("--new-days", type=int, default=7, help="days the new data adds")
    parser.add_argument("--timeout", type=float, default=900, help="per job")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-warm-") as tmp:
        base = Path(tmp)
        make_job(base / "previous", generate(days=args.days, seed=7), args.previous_epochs)
        _, previous_seconds = run(base / "previous", args.timeout)
        print(f"previous model: {args.previous_epochs} epochs on {args.days} days, {previous_seconds:.1f} s")

        new_data = generate(days=args.days + args.new_days, seed=8)
        make_job(base / "cold", new_data, args.epochs)
        make_job(base / "warm", new_data, args.epochs, previous_model=base / "previous" / "model")
        cold, cold_seconds = run(base / "cold", args.timeout)
        warm, warm_seconds = run(base / "warm", args.timeout)
        metadata = json.loads((base / "warm" / "model" / "deepar-metadata.json").read_text())
        assert metadata.get("warm_start", {}).get("initial_weights_sha256"), "the warm run did not warm-start"

    print(f"\nnew data: {args.days + args.new_days} days, other noise; {args.epochs} epochs each, same seed")
    print(f"{'epoch':>5} {'cold loss':>10} {'warm loss':>10}")
    for epoch, ((_, cold_loss), (_, warm_loss)) in enumerate(zip(cold, warm)):
        print(f"{epoch:>5} {cold_loss:>10.4f} {warm_loss:>10.4f}")
    target = min(loss for _, loss in cold)
    cold_epoch = next(i for i, (_, loss) in enumerate(cold) if loss <= target)
    reached = next(((i, t) for i, (t, loss) in enumerate(warm) if loss <= target), None)
    print(f"\ncold run's final (best) loss: {target:.4f}, reached at epoch {cold_epoch + 1}")
    print(f"{'run':<5} {'epochs to reach it':>19} {'wall s to reach it':>19} {'whole job s':>12}")
    print(f"{'cold':<5} {cold_epoch + 1:>19} {cold[cold_epoch][0]:>19.1f} {cold_seconds:>12.1f}")
    if reached is None:
        print(f"{'warm':<5} {'not reached':>19} {'-':>19} {warm_seconds:>12.1f}")
    else:
        print(f"{'warm':<5} {reached[0] + 1:>19} {reached[1]:>19.1f} {warm_seconds:>12.1f}")
        print(
            f"warm/cold: {(reached[0] + 1) / (cold_epoch + 1):.2f}x the epochs, "
            f"{reached[1] / cold[cold_epoch][0]:.2f}x the wall time to the cold run's final loss"
        )


if __name__ == "__main__":
    main()
