"""python -m mlops {build,deploy,promote,monitor,demo} [options]: the retraining loop's one command line.

Each subcommand is a module of this package with ``add_arguments(parser)`` and ``run(args) -> int``;
this file only dispatches, so ``python -m mlops <command> --help`` documents each one.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional

from sagemaker_deepar import cli

COMMANDS = {
    "build": "build or run the gated training pipeline (--local: SDK local pipeline, real containers)",
    "deploy": "on an approved model package: raise the bar, roll it out to the -staging endpoint",
    "promote": "record the manual approval and roll the staging model out to the -prod endpoint",
    "monitor": "score production forecasts against fresh actuals; start a retrain when accuracy drops",
    "demo": "the whole loop offline on the bundled sample data with an injected drift",
}


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m mlops", description=__doc__.splitlines()[0])
    commands = top.add_subparsers(dest="command", required=True, metavar="{" + ",".join(COMMANDS) + "}")
    for name, summary in COMMANDS.items():
        module = importlib.import_module(f"mlops.{name}")
        module.add_arguments(commands.add_parser(name, help=summary, description=summary))
    return top


def main(argv: Optional[list[str]] = None) -> int:
    args = parser().parse_args(argv)
    return int(importlib.import_module(f"mlops.{args.command}").run(args) or 0)


if __name__ == "__main__":
    sys.exit(cli.run_command(main, debug_env="DEEPAR_MLOPS_DEBUG", credentials_hint=" or pass --local"))
