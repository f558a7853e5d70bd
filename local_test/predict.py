"""Ask the local DeepAR server for forecasts and show them.

Reads series (JSON Lines in the training format; default: the test channel of local_test/test_dir),
holds out the last prediction_length points of each as ground truth (--holdout, the default), sends
one DeepAR request, prints a table per series, writes a PNG per series (history, actuals, mean,
quantile band) and, with ground truth, prints RMSE and mean_wQuantileLoss.

    python -m local_test.predict --url http://127.0.0.1:8080 --series 3 --plot-dir /tmp/plots
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import requests

from sagemaker_deepar.cli import run_command
from sagemaker_deepar.contract import METADATA_FILE, ModelArtifact, holdout, pandas_freq, read_jsonl, target_array
from sagemaker_deepar.errors import UserError
from sagemaker_deepar.training.report import QUANTILES, AccuracyReport, plot_forecast

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE / "test_dir" / "input" / "data" / "test" / "test.json"
DEFAULT_MODEL = HERE / "test_dir" / "model"


def print_steps(name: str, prediction: dict, start: str, freq: str, history_length: int, actual: list | None) -> None:
    horizon = pd.period_range(
        pd.Period(start, freq=pandas_freq(freq)) + history_length, periods=len(prediction["mean"])
    )
    print(f"\n{name}: forecast from {horizon[0]}")
    print(f"{'time':<18}{'p10':>10}{'mean':>10}{'p90':>10}" + ("" if actual is None else f"{'actual':>10}"))
    for step, when in enumerate(horizon):
        row = (
            f"{str(when):<18}{prediction['quantiles']['0.1'][step]:>10.3f}{prediction['mean'][step]:>10.3f}"
            f"{prediction['quantiles']['0.9'][step]:>10.3f}"
        )
        print(row + ("" if actual is None else f"{actual[step]:>10.3f}"))


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m local_test.predict", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="JSON Lines series (training format)")
    parser.add_argument("--series", type=int, default=3, help="how many series to forecast")
    parser.add_argument("--no-holdout", action="store_true", help="forecast after the full series (no ground truth)")
    parser.add_argument("--num-samples", type=int, default=100)
    parser.add_argument("--plot-dir", type=Path, help="write one PNG per series here")
    parser.add_argument(
        "--model",
        type=Path,
        default=DEFAULT_MODEL,
        help="the served model's folder: prediction length and time_freq come from its metadata",
    )
    parser.add_argument("--prediction-length", type=int, help="default: from --model")
    parser.add_argument("--freq", help="time_freq of the data (default: from --model)")
    return parser


def run(args: argparse.Namespace) -> int:
    records = read_jsonl(args.data, limit=args.series)
    artifact = (
        ModelArtifact.read(args.model)
        if not (args.prediction_length and args.freq) and (args.model / METADATA_FILE).exists()
        else None
    )
    pl = args.prediction_length or (artifact.prediction_length if artifact else None)
    if not pl:
        raise UserError(f"{args.model} holds no trained model: pass --prediction-length (and --freq)")
    freq = args.freq or (artifact.time_freq if artifact else "H")
    inputs = records if args.no_holdout else [holdout(r, pl) for r in records]
    body = {
        "instances": inputs,
        "configuration": {
            "num_samples": args.num_samples,
            "output_types": ["mean", "quantiles"],
            "quantiles": list(QUANTILES),
        },
    }
    response = requests.post(args.url + "/invocations", json=body, timeout=60)
    if response.status_code != 200:
        raise UserError(f"the server answered {response.status_code}: {response.text}")
    predictions = response.json()["predictions"]
    report = AccuracyReport(prediction_length=pl, freq=freq)
    for i, (record, sent, prediction) in enumerate(zip(records, inputs, predictions)):
        name = f"series {i}" + (f" cat={record['cat']}" if "cat" in record else "")
        actual = None if args.no_holdout else target_array(record["target"][-pl:])
        print_steps(name, prediction, record["start"], freq, len(sent["target"]), actual)
        if args.no_holdout:
            if args.plot_dir:
                args.plot_dir.mkdir(parents=True, exist_ok=True)
                plot_forecast(
                    args.plot_dir / f"series-{i}.png",
                    record,
                    prediction,
                    freq=freq,
                    prediction_length=pl,
                    title=name,
                    held_out=False,
                )
        else:
            report.add(name, record, prediction, args.plot_dir)
    print()
    if not args.no_holdout:
        report.print()
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(run_command(main))
