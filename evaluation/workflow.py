#!/usr/bin/env python3
"""The whole evaluation workflow in one process, through the same commands:

prepare -> train model A -> train model B -> deploy A -> invoke (report + plots) -> blue/green update
to B -> invoke -> batch transform with B -> delete endpoint, config and models.

One process because a local-mode endpoint lives in the process that created it; on SageMaker it
is simply the steps in order. Writes a JSON summary of every step (--summary).

    evaluation/workflow.py --local --workdir /tmp/deepar-eval --hp epochs=5
    evaluation/workflow.py --image <ecr-uri> --role <arn> --s3-prefix s3://bucket/deepar-eval
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import batch
import common
import deploy
import invoke
import prepare
import train
from common import CommandError


def session_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--local", "--serving-port", str(args.serving_port)] if args.local else []
    for flag, value in (("--region", args.region), ("--role", args.role)):
        if value:
            flags += [flag, value]
    return flags


def local_containers(image: str) -> set[str]:
    out = subprocess.run(["docker", "ps", "-aq", "--filter", f"ancestor={image}"], capture_output=True, text=True)
    return set(out.stdout.split())


def remove_local_leftovers(image: str, before: set[str]) -> list[str]:
    """Local mode leaves each job's stopped container and its network behind: remove what this run made."""
    leftover = sorted(local_containers(image) - before)
    if leftover:
        subprocess.run(["docker", "rm", "-f", *leftover], capture_output=True)
    subprocess.run(["docker", "network", "rm", "sagemaker-local"], capture_output=True)
    return leftover


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("deepar-eval"), help="local files: data, plots, reports")
    parser.add_argument("--s3-prefix", help="SageMaker: where channels, models and batch files go (s3://...)")
    parser.add_argument("--image", help="the image URI (default with --local: sagemaker-deepar:latest)")
    parser.add_argument("--endpoint", default="deepar-eval")
    parser.add_argument("--prediction-length", type=int, default=24)
    parser.add_argument("--sensors", type=int, default=2)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--series", type=int, default=4, help="series to forecast in invoke and batch")
    parser.add_argument("--hp", action="append", default=[], metavar="KEY=VALUE", help="training overrides")
    parser.add_argument("--summary", type=Path, help="write the steps' results here as JSON")
    common.add_session_args(parser)
    args = parser.parse_args(argv)
    if not args.local and not (args.s3_prefix or "").startswith("s3://"):
        raise CommandError("--s3-prefix s3://bucket/prefix is required on SageMaker (or pass --local)")
    work = args.workdir.resolve()
    base = f"file://{work}" if args.local else args.s3_prefix.rstrip("/")
    session = session_flags(args)
    image = ["--image", args.image] if args.image else []
    hp = [f"--hp=prediction_length={args.prediction_length}"] + [f"--hp={item}" for item in args.hp]
    summary: dict = {}
    before = local_containers(args.image or common.LOCAL_IMAGE) if args.local else set()

    def step(name: str) -> None:
        print(f"\n== {name}", flush=True)

    step("prepare")
    data = work / "eval-data.json"
    channels = prepare.main(["--sample", "--sensors", str(args.sensors), "--days", str(args.days),
                             "--prediction-length", str(args.prediction_length), "--output", f"{base}/data", *session])
    if args.local:
        data.write_bytes(common.local_path(channels["test"]).joinpath("test.json").read_bytes())
    else:
        from sagemaker_deepar.sample_data import generate

        common.write_jsonl(generate(num_sensors=args.sensors, days=args.days), data)
    summary["prepare"] = channels

    models = []
    for label, seed in (("A", 1), ("B", 2)):
        step(f"train model {label}")
        models.append(train.main(["--train", channels["train"], "--test", channels["test"], "--quiet",
                                  "--output-path", f"{base}/models/{label}", *hp, f"--hp=seed={seed}", *image, *session]))
    summary["train"] = models

    report = ["--data", str(data), "--prediction-length", str(args.prediction_length), "--series", str(args.series)]
    deployed = False
    try:
        step(f"deploy model A to endpoint {args.endpoint}")
        deploy.main(["create", "--name", args.endpoint, "--model-data", models[0]["model_data"], *image, *session])
        deployed = True
        step("invoke model A")
        summary["invoke_a"] = invoke.main(["--name", args.endpoint, *report, "--plot-dir", str(work / "plots-a"), *session])
        step("blue/green update to model B")
        summary["update"] = deploy.main(["update", "--name", args.endpoint, "--model-data", models[1]["model_data"], *image, *session])
        step("invoke model B")
        summary["invoke_b"] = invoke.main(["--name", args.endpoint, *report, "--plot-dir", str(work / "plots-b"),
                                           "--json-out", str(work / "invoke-b.json"), *session])
        step("delete the endpoint")
        summary["delete"] = deploy.main(["delete", "--name", args.endpoint, *session])
        deployed = False
        step("batch transform with model B")
        summary["batch"] = batch.main(["--model-data", models[1]["model_data"], "--work-path", f"{base}/batch",
                                       *report, *image, *session])
    finally:
        if deployed:  # a step failed: do not leave a billed endpoint behind
            deploy.main(["delete", "--name", args.endpoint, *session])
        if args.local:
            summary["removed_local_containers"] = remove_local_leftovers(args.image or common.LOCAL_IMAGE, before)
    if args.summary:
        args.summary.write_text(json.dumps(summary, default=str))
    print(f"\nworkflow done: files under {work}")
    return summary


if __name__ == "__main__":
    raise SystemExit(common.run_command(main))
