"""Warm start vs cold start on new data, judged on held-out loss, through the real `container/train`:

1. a previous model is trained on the bundled sample data (``--days`` days of hourly air pollution);
2. the data moves on: the same sensors, ``--new-days`` more days and new noise (another data seed);
   it is cut as the contract cuts it (``split_train_test``): the train channel lacks each series'
   last ``prediction_length`` points, the test channel holds them out, and the job scores them
   (``test mean_wQuantileLoss``, the built-in's metric) on a model it never trained on them;
3. for every training seed (``--seeds``) and every epoch count k of ``--grid``, a cold job and a warm
   job (the previous model.tar.gz in the ``model`` channel) train k epochs with the same
   hyperparameters, interleaved: cold s1 k1, warm s1 k1, cold s1 k2, warm s1 k2, ..., cold s2 k1, ...
   so slow minutes of a shared machine hit both sides.

Each run (cold or warm, one seed) gives a held-out curve: mean_wQuantileLoss after k epochs, k in the
grid. The curve is smoothed by a non-increasing (isotonic) fit before it is read: each point is one
job's score from sample paths on a small test set, so a single lucky dip would otherwise count as
"reached early"; the fit pools such a dip with its neighbours instead of trusting or dropping it,
and it encodes what a few epochs of training from the same start do on this scale (the held-out
loss does not rise; the raw points are printed beside it). A running mean over the per-epoch train
loss was the alternative: it is cheaper (one job per run) but measures the training data, which the
warm model has partly seen, not the held-out horizon.

The target, per seed, is the cold run's smoothed held-out loss after the largest k; epochs-to-target
is the first k whose smoothed loss is at or below it, and the wall time to it is that k-epoch job's
seconds from start to its last epoch line (so the warm run's unpacking and loading count, test
scoring and writing do not). The headline is bench._paired's median of the per-seed ratios warm /
cold wall time to target, with its range; a seed whose warm run never reaches the target is printed
and left out of the median (the count is printed).

    .venv/bin/python -m bench.warm_start [--seeds 3 --grid 1,2,4,8 --previous-epochs 8 --days 30 --new-days 7]
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
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from scipy.optimize import isotonic_regression

from bench._paired import Paired, machine
from sagemaker_deepar.contract import split_train_test, write_jsonl
from sagemaker_deepar.training.metrics import METRIC_DEFINITIONS
from sagemaker_deepar.training.sample_data import generate

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "container" / "train"
PREDICTION_LENGTH = 24
EPOCH_LINE = re.compile(next(m["Regex"] for m in METRIC_DEFINITIONS if m["Name"] == "train:loss"))
HELD_OUT_LINE = re.compile(next(m["Regex"] for m in METRIC_DEFINITIONS if m["Name"] == "test:mean_wQuantileLoss"))


@dataclass(frozen=True)
class Job:
    """One finished training job: held-out loss, seconds from start to its last epoch, whole job."""

    held_out: float
    seconds_to_last_epoch: float
    seconds: float


def hyperparameters(epochs: int, seed: int) -> dict[str, str]:
    return {
        "time_freq": "H",
        "prediction_length": str(PREDICTION_LENGTH),
        "context_length": "48",
        "epochs": str(epochs),
        "likelihood": "student-T",
        "num_cells": "40",
        "num_layers": "2",
        "mini_batch_size": "32",
        "num_batches_per_epoch": "16",
        "seed": str(seed),
    }


def make_job(root: Path, records: list[dict], epochs: int, seed: int, previous_model: Optional[Path] = None) -> None:
    """A SageMaker job folder: train = the contract's cut, test = the full series (its horizon held out)."""
    config = root / "input" / "config"
    config.mkdir(parents=True)
    (config / "hyperparameters.json").write_text(json.dumps(hyperparameters(epochs, seed)))
    train, test = split_train_test(records, PREDICTION_LENGTH)
    write_jsonl(train, root / "input" / "data" / "train" / "train.json")
    write_jsonl(test, root / "input" / "data" / "test" / "test.json")
    channel = {"ContentType": "application/jsonlines", "TrainingInputMode": "File"}
    channels = {"train": channel, "test": channel}
    if previous_model is not None:  # as SageMaker File mode delivers Estimator(model_uri=".../model.tar.gz")
        model_channel = root / "input" / "data" / "model"
        model_channel.mkdir(parents=True)
        with tarfile.open(model_channel / "model.tar.gz", "w:gz") as archive:
            for item in sorted(previous_model.iterdir()):
                archive.add(item, arcname=item.name)
        channels["model"] = {"ContentType": "application/x-sagemaker-model", "TrainingInputMode": "File"}
    (config / "inputdataconfig.json").write_text(json.dumps(channels))


def run(root: Path, timeout: float) -> Job:
    """Runs container/train on ``root``; fails loudly on a failed job or one without a held-out score."""
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
    last_epoch, held_out = None, None
    assert process.stdout is not None
    for line in process.stdout:
        if EPOCH_LINE.search(line):
            last_epoch = time.monotonic() - started
        match = HELD_OUT_LINE.search(line)
        if match:
            held_out = float(match.group(1))
        if time.monotonic() - started > timeout:
            process.kill()
            raise SystemExit(f"{root.name}: over {timeout} s")
    if process.wait() != 0:
        failure = root / "output" / "failure"
        raise SystemExit(f"{root.name} failed: {failure.read_text() if failure.exists() else 'no failure file'}")
    if last_epoch is None or held_out is None:
        raise SystemExit(f"{root.name}: no epoch line or no test mean_wQuantileLoss line in the job's output")
    return Job(held_out, last_epoch, time.monotonic() - started)


def smoothed(losses: list[float]) -> list[float]:
    """The non-increasing least-squares fit of a held-out curve (see the module docstring for why)."""
    return [float(x) for x in isotonic_regression(np.asarray(losses, dtype=float), increasing=False).x]


def first_at_or_below(curve: list[float], target: float) -> Optional[int]:
    """Index of the first point of ``curve`` at or below ``target`` (a hair of float slack), else None."""
    return next((i for i, loss in enumerate(curve) if loss <= target * (1 + 1e-9)), None)


def grid(text: str) -> list[int]:
    try:
        epochs = sorted({int(part) for part in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected epoch counts like 1,2,4,8") from None
    if not epochs or epochs[0] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: epoch counts must be >= 1")
    return epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="training seeds (paired rounds): 42, 43, ...")
    parser.add_argument("--grid", type=grid, default=grid("1,2,4,8"), help="epoch counts scored on held-out data")
    parser.add_argument("--previous-epochs", type=int, default=8)
    parser.add_argument("--days", type=int, default=30, help="days of data the previous model saw")
    parser.add_argument("--new-days", type=int, default=7, help="days the new data adds")
    parser.add_argument("--timeout", type=float, default=900, help="per job")
    args = parser.parse_args()
    seeds = [42 + n for n in range(args.seeds)]

    print(machine(), flush=True)
    print("each job: container/train in a fresh process, torch on every core; cold and warm alike", flush=True)
    curves: dict[tuple[str, int], list[Job]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as tmp:
        base = Path(tmp)
        make_job(base / "previous", generate(days=args.days, seed=7), args.previous_epochs, seeds[0])
        previous = run(base / "previous", args.timeout)
        print(
            f"previous model: {args.previous_epochs} epochs on {args.days} days, {previous.seconds:.1f} s "
            f"(held-out mean_wQuantileLoss on its own data {previous.held_out:.4f})",
            flush=True,
        )
        new_data = generate(days=args.days + args.new_days, seed=8)
        for seed in seeds:
            for epochs in args.grid:
                for side in ("cold", "warm"):
                    root = base / f"{side}-s{seed}-e{epochs}"
                    warm_from = base / "previous" / "model" if side == "warm" else None
                    make_job(root, new_data, epochs, seed, previous_model=warm_from)
                    job = run(root, args.timeout)
                    if side == "warm":
                        metadata = json.loads((root / "model" / "deepar-metadata.json").read_text())
                        assert metadata.get("warm_start", {}).get("initial_weights_sha256"), f"{root.name}: not warm"
                    curves.setdefault((side, seed), []).append(job)
                    print(
                        f"  seed {seed} {side} {epochs:>3} epoch(s): held-out mean_wQuantileLoss {job.held_out:.4f}, "
                        f"{job.seconds_to_last_epoch:.1f} s to the last epoch, {job.seconds:.1f} s whole job",
                        flush=True,
                    )

    print(
        f"\nnew data: {args.days + args.new_days} days, other noise, last {PREDICTION_LENGTH} points held out; "
        f"seeds {seeds}, epoch grid {args.grid}"
    )
    paired = Paired("warm / cold wall time to the cold run's held-out loss", higher_is_better=True)
    epoch_ratios, missed = [], []
    for seed in seeds:
        cold, warm = curves[("cold", seed)], curves[("warm", seed)]
        cold_fit, warm_fit = smoothed([j.held_out for j in cold]), smoothed([j.held_out for j in warm])
        print(f"seed {seed}: {'epochs':>6} {'cold':>8} {'(fit)':>8} {'warm':>8} {'(fit)':>8}")
        for n, epochs in enumerate(args.grid):
            print(
                f"{'':>9}{epochs:>6} {cold[n].held_out:>8.4f} {cold_fit[n]:>8.4f} "
                f"{warm[n].held_out:>8.4f} {warm_fit[n]:>8.4f}"
            )
        target = cold_fit[-1]
        cold_at = first_at_or_below(cold_fit, target)
        warm_at = first_at_or_below(warm_fit, target)
        assert cold_at is not None  # a non-increasing fit reaches its own last value
        if warm_at is None:
            missed.append(seed)
            print(f"  seed {seed}: target {target:.4f} (cold, {args.grid[-1]} epochs): warm never reached it")
            continue
        epoch_ratios.append(args.grid[warm_at] / args.grid[cold_at])
        paired.add(
            warm[warm_at].seconds_to_last_epoch,
            cold[cold_at].seconds_to_last_epoch,
            f"target {target:.4f}: warm {args.grid[warm_at]} epoch(s) in {warm[warm_at].seconds_to_last_epoch:.1f} s, "
            f"cold {args.grid[cold_at]} epoch(s) in {cold[cold_at].seconds_to_last_epoch:.1f} s",
        )
    print(machine())
    if paired.rounds:
        print(
            f"warm / cold epochs to target: median {float(np.median(epoch_ratios)):.2f}x over {len(epoch_ratios)} seed(s)"
        )
        print(paired.headline() + (f"; warm missed the target for seed(s) {missed}" if missed else ""))
    else:
        print(f"warm / cold wall time to target: warm missed the target for every seed {missed}")


if __name__ == "__main__":
    main()
