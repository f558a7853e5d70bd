"""The whole evaluation workflow in one process, through the same commands:

prepare -> train model A -> train model B -> deploy A -> invoke (report + plots) -> blue/green update
to B -> invoke -> batch transform with B -> delete endpoint, config and models.

One process because a local-mode endpoint lives in the process that created it; on SageMaker it
is simply the steps in order. Writes a JSON summary of every step (--summary).

    python -m evaluation.workflow --local --workdir /tmp/deepar-eval --hp epochs=5
    python -m evaluation.workflow --image <ecr-uri> --role <arn> --s3-prefix s3://bucket/deepar-eval
"""

from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

from sagemaker_deepar import contract
from sagemaker_deepar.errors import UserError

from . import batch, common, deploy, invoke, prepare, train


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


def parser() -> argparse.ArgumentParser:
    parser = common.command_parser("evaluation.workflow", __doc__)
    parser.add_argument("--workdir", type=Path, default=Path("deepar-eval"), help="local files: data, plots, reports")
    parser.add_argument("--s3-prefix", help="SageMaker: where channels, models and batch files go (s3://...)")
    parser.add_argument("--image", help="the image URI (default with --local: sagemaker-deepar:latest)")
    parser.add_argument("--endpoint", default="deepar-eval")
    parser.add_argument("--prediction-length", type=int, default=24)
    parser.add_argument("--sensors", type=int, default=2)
    parser.add_argument("--days", type=int, default=14)
    parser.add_argument("--series", type=int, default=4, help="series to forecast in invoke and batch")
    parser.add_argument(
        "--hp", action="append", default=[], type=train.hyperparameter, metavar="KEY=VALUE", help="training overrides"
    )
    parser.add_argument("--summary", type=Path, help="write the steps' results here as JSON")
    common.add_session_args(parser)
    return parser


def run(args: argparse.Namespace) -> dict:
    if not args.local and not (args.s3_prefix or "").startswith("s3://"):
        raise UserError("--s3-prefix s3://bucket/prefix is required on SageMaker (or pass --local)")
    work = args.workdir.resolve()
    base = f"file://{work}" if args.local else args.s3_prefix.rstrip("/")
    where = common.session_options(args)
    hp = [("prediction_length", args.prediction_length), *args.hp]
    summary: dict = {}
    before = local_containers(args.image or common.local_image()) if args.local else set()

    def step(name: str) -> None:
        print(f"\n== {name}", flush=True)

    step("prepare")
    data = work / "eval-data.json"
    channels = prepare.run(
        common.options(
            prepare.parser(),
            sample=True,
            sensors=args.sensors,
            days=args.days,
            prediction_length=args.prediction_length,
            output=f"{base}/data",
            **where,
        )
    )
    if args.local:
        data.write_bytes(common.local_path(channels["test"]).joinpath("test.json").read_bytes())
    else:
        from sagemaker_deepar.training.sample_data import generate

        contract.write_jsonl(generate(num_sensors=args.sensors, days=args.days), data)
    summary["prepare"] = channels

    models = []
    for label, seed in (("A", 1), ("B", 2)):
        step(f"train model {label}")
        models.append(
            train.run(
                common.options(
                    train.parser(),
                    train=channels["train"],
                    test=channels["test"],
                    quiet=True,
                    image=args.image,
                    output_path=f"{base}/models/{label}",
                    hp=[*hp, ("seed", seed)],
                    **where,
                )
            )
        )
    summary["train"] = models

    def report(**values) -> dict:
        return dict(data=data, prediction_length=args.prediction_length, series=args.series, **values, **where)

    def endpoint(command: str, **values) -> dict:
        return deploy.run(common.options(deploy.command_parser(command), name=args.endpoint, **values, **where))

    deployed = False
    try:
        step(f"deploy model A to endpoint {args.endpoint}")
        endpoint("create", model_data=[models[0]["model_data"]], image=args.image)
        deployed = True
        step("invoke model A")
        summary["invoke_a"] = invoke.run(
            common.options(invoke.parser(), **report(name=args.endpoint, plot_dir=work / "plots-a"))
        )
        step("blue/green update to model B")
        summary["update"] = endpoint("update", model_data=[models[1]["model_data"]], image=args.image)
        step("invoke model B")
        summary["invoke_b"] = invoke.run(
            common.options(
                invoke.parser(),
                **report(name=args.endpoint, plot_dir=work / "plots-b", json_out=work / "invoke-b.json"),
            )
        )
        step("delete the endpoint")
        summary["delete"] = endpoint("delete")
        deployed = False
        step("batch transform with model B")
        summary["batch"] = batch.run(
            common.options(
                batch.parser(),
                **report(model_data=models[1]["model_data"], work_path=f"{base}/batch", image=args.image),
            )
        )
    finally:
        if deployed:  # a step failed: do not leave a billed endpoint behind
            endpoint("delete")
        if args.local:
            summary["removed_local_containers"] = remove_local_leftovers(args.image or common.local_image(), before)
    if args.summary:
        args.summary.write_text(json.dumps(summary, default=str))
    print(f"\nworkflow done: files under {work}")
    return summary


def main(argv: list[str] | None = None) -> dict:
    return run(parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(common.run_command(main))
