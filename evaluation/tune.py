"""Tune DeepAR: a SageMaker HyperparameterTuner minimizing test:mean_wQuantileLoss.

Searches the built-in DeepAR's recommended ranges (override with --range name=low:high, or drop a
name with --fixed name=value); needs a test channel. Prints the best training job and its metrics.
--dry-run prints the CreateHyperParameterTuningJob request and sends nothing. Tuning jobs run only
on SageMaker: local mode has no tuner.

    python -m evaluation.tune --image <ecr-uri> --train s3://b/d/train --test s3://b/d/test --max-jobs 20 --max-parallel-jobs 2
"""

from __future__ import annotations

import argparse
import json

from sagemaker_deepar.errors import UserError

from . import common
from . import train as train_command

OBJECTIVE = "test:mean_wQuantileLoss"
# The built-in DeepAR's recommended tuning ranges (SageMaker docs, "Tune a DeepAR model").
RECOMMENDED_RANGES: dict[str, tuple[str, float, float]] = {
    "context_length": ("int", 1, 200),
    "epochs": ("int", 1, 1000),
    "mini_batch_size": ("int", 32, 1028),
    "num_cells": ("int", 30, 200),
    "num_layers": ("int", 1, 8),
    "embedding_dimension": ("int", 1, 50),
    "dropout_rate": ("continuous", 0.0, 0.2),
    "learning_rate": ("continuous", 1e-5, 1e-1),
}


def parameter_ranges(overrides: list[str], fixed: set[str]) -> dict:
    from sagemaker.tuner import ContinuousParameter, IntegerParameter

    ranges = dict(RECOMMENDED_RANGES)
    for item in overrides:
        name, sep, bounds = item.partition("=")
        low, sep2, high = bounds.partition(":")
        if not (sep and sep2) or name not in RECOMMENDED_RANGES:
            raise UserError(
                f"--range {item!r}: expected NAME=LOW:HIGH with NAME one of {', '.join(RECOMMENDED_RANGES)}"
            )
        try:
            ranges[name] = (RECOMMENDED_RANGES[name][0], float(low), float(high))
        except ValueError:
            raise UserError(f"--range {item!r}: LOW and HIGH must be numbers") from None
    built = {}
    for name, (kind, low, high) in ranges.items():
        if name in fixed:
            continue
        if kind == "int":
            built[name] = IntegerParameter(int(low), int(high))
        else:
            built[name] = ContinuousParameter(
                low, high, scaling_type="Logarithmic" if name == "learning_rate" else "Auto"
            )
    return built


def dry_run(session) -> list[dict]:
    """Keep CreateHyperParameterTuningJob's parameters and answer it locally (botocore event hooks)."""
    from botocore.awsrequest import AWSResponse

    captured: list[dict] = []
    events = session.sagemaker_client.meta.events
    events.register(
        "before-parameter-build.sagemaker.CreateHyperParameterTuningJob",
        lambda params, **_: captured.append(dict(params)),
    )
    events.register(
        "before-call.sagemaker.CreateHyperParameterTuningJob",
        lambda **_: (
            AWSResponse("dry-run", 200, {}, None),
            {"HyperParameterTuningJobArn": "arn:aws:sagemaker:dry-run"},
        ),
    )
    return captured


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    train_command.add_training_args(parser)
    parser.add_argument("--max-jobs", type=int, default=20)
    parser.add_argument("--max-parallel-jobs", type=int, default=2)
    parser.add_argument("--strategy", default="Bayesian", choices=["Bayesian", "Random", "Hyperband", "Grid"])
    parser.add_argument("--range", action="append", default=[], metavar="NAME=LOW:HIGH")
    parser.add_argument(
        "--fixed",
        action="append",
        default=[],
        metavar="NAME",
        help="keep this hyperparameter at its --hyperparameters/--hp value instead of tuning it",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the tuning request; send nothing")
    args = parser.parse_args(argv)
    if args.local:
        raise UserError("tuning jobs run only on SageMaker: drop --local (try --dry-run to see the request)")
    if not args.test:
        raise UserError(f"--test is required: the objective {OBJECTIVE} is computed on the test channel")
    from sagemaker.tuner import HyperparameterTuner

    session = common.open_session(args)
    estimator = train_command.build_estimator(args, session)
    tuner = HyperparameterTuner(
        estimator,
        objective_metric_name=OBJECTIVE,
        objective_type="Minimize",
        hyperparameter_ranges=parameter_ranges(args.range, set(args.fixed)),
        metric_definitions=estimator.metric_definitions,
        strategy=args.strategy,
        max_jobs=args.max_jobs,
        max_parallel_jobs=args.max_parallel_jobs,
        base_tuning_job_name=args.base_job_name,
    )
    captured = dry_run(session) if args.dry_run else None
    tuner.fit(train_command.channels(args), wait=not args.dry_run)
    if captured is not None:
        print(json.dumps(captured[0], indent=2, default=str))
        return {"request": captured[0]}
    best = tuner.best_training_job()
    metrics = train_command.final_metrics(session, best, "")
    print(f"tuning job: {tuner.latest_tuning_job.name}")
    print(f"best training job: {best}")
    for name, value in sorted(metrics.items()):
        print(f"{name}: {value}")
    return {"best_training_job": best, "metrics": metrics}


if __name__ == "__main__":
    raise SystemExit(common.run_command(main))
