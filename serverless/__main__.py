"""``python -m serverless {package,deploy,destroy,emulate}`` (run from .venv; see README *Serverless forecasting*)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sagemaker_deepar.cli import run_command


def parser() -> argparse.ArgumentParser:
    from .package import REPO

    root = argparse.ArgumentParser(prog="python -m serverless", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    pkg = commands.add_parser("package", help="build the function bundles and the pyarrow layer; check Lambda's limits")
    pkg.add_argument("--out", type=Path, default=REPO / "build" / "serverless")
    pkg.add_argument("--cold-start", action="store_true", help="also measure each handler's cold start")
    pkg.add_argument(
        "--ensemble-size",
        action="store_true",
        help="only print what serving an ensemble model in-function would weigh unzipped (MB), against the limit",
    )

    dep = commands.add_parser("deploy", help="create or update the stack; last line: its outputs as JSON")
    dep.add_argument("--stack", required=True)
    dep.add_argument("--out", type=Path, default=REPO / "build" / "serverless")
    dep.add_argument("--endpoint-name", help="the SageMaker endpoint the functions may invoke")
    dep.add_argument(
        "--forecast-endpoint", help="FORECAST_ENDPOINT (default: the endpoint name; http://host:port locally)"
    )
    dep.add_argument("--forecast-model", help="FORECAST_MODEL: s3://.../model.tar.gz run inside the functions")
    dep.add_argument("--lake-bucket", help="the curated Parquet lake's bucket (GET /forecast/{device_id})")
    dep.add_argument("--lake-prefix")
    dep.add_argument("--time-freq")
    dep.add_argument(
        "--event-source-mapping", choices=["true", "false"], help="default: false offline (moto), else true"
    )

    des = commands.add_parser("destroy", help="remove the stack; says what it kept")
    des.add_argument("--stack", required=True)
    des.add_argument(
        "--delete-data", action="store_true", help="also empty and delete the buckets (and a non-empty DLQ)"
    )

    emu = commands.add_parser("emulate", help="play Lambda's SQS poller and API Gateway's proxy against the stack")
    emu.add_argument("--stack", required=True)
    emu.add_argument("--until-idle", action="store_true", help="drain the queue (redrives included) and exit")
    emu.add_argument("--idle-seconds", type=float, default=3.0, help="--until-idle: quiet time that means drained")
    emu.add_argument("--api-port", type=int, help="also serve the forecast API on 127.0.0.1:PORT")
    emu.add_argument("--retry-delay", type=int, default=0, help="seconds before a failed message is received again")
    emu.add_argument("--max-seconds", type=float, default=0, help="stop after this long (0: until idle or Ctrl-C)")
    return root


def run(args: argparse.Namespace) -> int:
    if args.command == "package":
        from . import package

        return package.run(args)
    from . import stack

    aws = stack.Aws()
    if args.command == "deploy":
        outputs = stack.deploy(aws, args.stack, stack.parameters_from(args), args.out)
        print(json.dumps(outputs))
        return 0
    if args.command == "destroy":
        stack.destroy(aws, args.stack, args.delete_data)
        return 0
    from . import emulate

    return emulate.run(aws, args)


def main(argv: list[str] | None = None) -> int:
    return run_command(lambda a: run(parser().parse_args(a)), argv, debug_env="SERVERLESS_DEBUG")


if __name__ == "__main__":
    sys.exit(main())
