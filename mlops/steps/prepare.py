"""Pipeline step "Prepare": the curated Parquet lake -> DeepAR train/test channels (JSON Lines).

Runs in our image as a processing job; the conversion is ``ingestion.to_deepar`` (one series per
device and pollutant, resampled to --time-freq, the last --prediction-length points of each held out
of train through ``sagemaker_deepar.contract.split_train_test``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

LAKE = "/opt/ml/processing/input/lake"
OUTPUT = "/opt/ml/processing/output"  # train/ and test/ below it, each a ProcessingOutput


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prepare.py", description=__doc__.splitlines()[0])
    parser.add_argument("--lake", default=LAKE, help="curated Parquet folder (the step's input)")
    parser.add_argument("--output", default=OUTPUT)
    parser.add_argument("--time-freq", default="H")
    parser.add_argument("--prediction-length", type=int, required=True)
    parser.add_argument("--pollutant", default="", help="one pollutant across devices (default: every pollutant)")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    from ingestion.to_deepar import convert
    from sagemaker_deepar.cli import run_command

    def run(arguments: Optional[list[str]]) -> None:
        args = parser().parse_args(arguments)
        for channel in ("train", "test"):
            Path(args.output, channel).mkdir(parents=True, exist_ok=True)
        convert(
            args.lake,
            args.output,
            time_freq=args.time_freq,
            prediction_length=args.prediction_length,
            pollutant=args.pollutant or None,
        )

    return run_command(run, argv, debug_env="DEEPAR_MLOPS_DEBUG")


if __name__ == "__main__":
    sys.exit(main())
