#!/usr/bin/env python3
"""Ask the local DeepAR server for forecasts and show them.

Reads series (JSON Lines in the training format; default: the test channel of local_test/test_dir),
holds out the last prediction_length points of each as ground truth (--holdout, the default), sends
one DeepAR request, prints a table per series, writes a PNG per series (history, actuals, mean,
quantile band) and, with ground truth, prints RMSE and mean_wQuantileLoss.

    local_test/predict.py --url http://127.0.0.1:8080 --series 3 --plot-dir /tmp/plots
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import requests

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE / "test_dir" / "input" / "data" / "test" / "test.json"


def read_series(path: Path, limit: int) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()][:limit]


def model_metadata(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def print_steps(name: str, prediction: dict, start: str, freq: str, history_length: int, actual: list | None) -> None:
    from sagemaker_deepar.report import period_freq

    horizon = pd.period_range(pd.Period(start, freq=period_freq(freq)) + history_length, periods=len(prediction["mean"]))
    print(f"\n{name}: forecast from {horizon[0]}")
    print(f"{'time':<18}{'p10':>10}{'mean':>10}{'p90':>10}" + ("" if actual is None else f"{'actual':>10}"))
    for step, when in enumerate(horizon):
        row = f"{str(when):<18}{prediction['quantiles']['0.1'][step]:>10.3f}{prediction['mean'][step]:>10.3f}" \
              f"{prediction['quantiles']['0.9'][step]:>10.3f}"
        print(row + ("" if actual is None else f"{actual[step]:>10.3f}"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="JSON Lines series (training format)")
    parser.add_argument("--series", type=int, default=3, help="how many series to forecast")
    parser.add_argument("--no-holdout", action="store_true", help="forecast after the full series (no ground truth)")
    parser.add_argument("--num-samples", type=int, default=100)
    parser.add_argument("--plot-dir", type=Path, help="write one PNG per series here")
    parser.add_argument("--prediction-length", type=int, help="default: from local_test/test_dir/model")
    parser.add_argument("--freq", help="time_freq of the data (default: from local_test/test_dir/model, else H)")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))
    from sagemaker_deepar.report import QUANTILES, AccuracyReport, holdout, plot_forecast, to_float

    records = read_series(args.data, args.series)
    metadata = model_metadata(HERE / "test_dir" / "model" / "deepar-metadata.json")
    pl = args.prediction_length or metadata.get("prediction_length")
    if not pl:
        raise SystemExit("local_test/test_dir/model/deepar-metadata.json not found: pass --prediction-length")
    freq = args.freq or metadata.get("hyperparameters", {}).get("time_freq", "H")
    inputs = records if args.no_holdout else [holdout(r, pl) for r in records]
    body = {"instances": inputs, "configuration": {"num_samples": args.num_samples,
                                                   "output_types": ["mean", "quantiles"], "quantiles": list(QUANTILES)}}
    response = requests.post(args.url + "/invocations", json=body, timeout=60)
    if response.status_code != 200:
        print(f"error {response.status_code}: {response.text}", file=sys.stderr)
        return 1
    predictions = response.json()["predictions"]
    report = AccuracyReport(prediction_length=pl, freq=freq)
    for i, (record, sent, prediction) in enumerate(zip(records, inputs, predictions)):
        name = f"series {i}" + (f" cat={record['cat']}" if "cat" in record else "")
        actual = None if args.no_holdout else to_float(record["target"][-pl:])
        print_steps(name, prediction, record["start"], freq, len(sent["target"]), actual)
        if args.no_holdout:
            if args.plot_dir:
                args.plot_dir.mkdir(parents=True, exist_ok=True)
                plot_forecast(args.plot_dir / f"series-{i}.png", record, prediction, freq=freq, prediction_length=pl,
                              title=name, held_out=False)
        else:
            report.add(name, record, prediction, args.plot_dir)
    print()
    if not args.no_holdout:
        report.print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
