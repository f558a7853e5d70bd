"""``python -m ecs {deploy,destroy,local}`` (run from .venv; see docs/ecs.md)."""

from __future__ import annotations

import argparse
import sys

from sagemaker_deepar.cli import run_command


def parser() -> argparse.ArgumentParser:
    from . import deploy, local

    root = argparse.ArgumentParser(prog="python -m ecs", description=__doc__)
    commands = root.add_subparsers(dest="command", required=True)
    deploy.add_deploy_arguments(
        commands.add_parser("deploy", help="create or update the ECS stack; last line: its outputs as JSON")
    )
    commands.add_parser("destroy", help="remove the stack and what deploy completed").add_argument(
        "--stack", required=True
    )
    local.add_arguments(
        commands.add_parser("local", help="N replicas of the image behind one nginx on one port; last line: its URL")
    )
    return root


def run(args: argparse.Namespace) -> int:
    if args.command == "local":
        from . import local

        return local.run(args)
    from . import deploy

    return deploy.run_deploy(args) if args.command == "deploy" else deploy.run_destroy(args)


def main(argv: list[str] | None = None) -> int:
    return run_command(lambda a: run(parser().parse_args(a)), argv, debug_env="ECS_DEBUG")


if __name__ == "__main__":
    sys.exit(main())
