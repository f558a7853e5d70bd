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

import numpy as np
import pandas as pd
import requests

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE / "test_dir" / "input" / "data" / "test" / "test.json"
QUANTILES = ["0.1", "0.5", "0.9"]


def read_series(path: Path, limit: int) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()][:limit]


def to_float(values: list) -> np.ndarray:
    return np.array([np.nan if v is None or v == "NaN" else v for v in values], dtype=float)


def prediction_length(given: int | None, metadata: Path) -> int:
    """--prediction-length, else the local model's metadata (local_test/test_dir/model)."""
    if given:
        return given
    if metadata.exists():
        return int(json.loads(metadata.read_text())["prediction_length"])
    raise SystemExit(f"{metadata} not found: pass --prediction-length")


def cut_features(record: dict, keep: int) -> dict:
    """History up to ``keep`` points; dynamic_feat keeps ``keep + prediction_length`` (it covers the horizon)."""
    return {**record, "target": record["target"][:keep]}


def plot(path: Path, index: pd.PeriodIndex, history: np.ndarray, horizon: pd.PeriodIndex, prediction: dict,
         actual: np.ndarray | None, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 3.5))
    shown = min(len(history), 5 * len(horizon))
    ax.plot(index[-shown:].to_timestamp(), history[-shown:], color="black", lw=1, label="history")
    x = horizon.to_timestamp()
    if actual is not None:
        ax.plot(x, actual, color="black", lw=1, ls="--", label="actual")
    ax.plot(x, prediction["mean"], color="tab:blue", lw=1.5, label="mean forecast")
    band = prediction.get("quantiles", {})
    if QUANTILES[0] in band and QUANTILES[-1] in band:
        ax.fill_between(x, band[QUANTILES[0]], band[QUANTILES[-1]], color="tab:blue", alpha=0.25, label="p10-p90")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="JSON Lines series (training format)")
    parser.add_argument("--series", type=int, default=3, help="how many series to forecast")
    parser.add_argument("--no-holdout", action="store_true", help="forecast after the full series (no ground truth)")
    parser.add_argument("--num-samples", type=int, default=100)
    parser.add_argument("--plot-dir", type=Path, help="write one PNG per series here")
    parser.add_argument("--prediction-length", type=int, help="default: from local_test/test_dir/model")
    args = parser.parse_args()
    sys.path.insert(0, str(HERE.parent))
    from sagemaker_deepar.metrics import score_forecasts

    records = read_series(args.data, args.series)
    pl = prediction_length(args.prediction_length, HERE / "test_dir" / "model" / "deepar-metadata.json")
    inputs = records if args.no_holdout else [cut_features(r, len(r["target"]) - pl) for r in records]
    body = {"instances": inputs, "configuration": {"num_samples": args.num_samples,
                                                   "output_types": ["mean", "quantiles"], "quantiles": QUANTILES}}
    response = requests.post(args.url + "/invocations", json=body, timeout=60)
    if response.status_code != 200:
        print(f"error {response.status_code}: {response.text}", file=sys.stderr)
        return 1
    predictions = response.json()["predictions"]
    actuals, means, bands = [], [], {float(q): [] for q in QUANTILES}
    if args.plot_dir:
        args.plot_dir.mkdir(parents=True, exist_ok=True)
    for i, (record, sent, prediction) in enumerate(zip(records, inputs, predictions)):
        history = to_float(sent["target"])
        start = pd.Period(record["start"], freq="h")
        index = pd.period_range(start, periods=len(history))
        horizon = pd.period_range(start + len(history), periods=pl)
        actual = None if args.no_holdout else to_float(record["target"][-pl:])
        name = f"series {i}" + (f" cat={record['cat']}" if "cat" in record else "")
        print(f"\n{name}: forecast from {horizon[0]}")
        print(f"{'time':<18}{'p10':>10}{'mean':>10}{'p90':>10}" + ("" if actual is None else f"{'actual':>10}"))
        for step in range(pl):
            row = f"{str(horizon[step]):<18}{prediction['quantiles']['0.1'][step]:>10.3f}{prediction['mean'][step]:>10.3f}" \
                  f"{prediction['quantiles']['0.9'][step]:>10.3f}"
            print(row + ("" if actual is None else f"{actual[step]:>10.3f}"))
        if args.plot_dir:
            plot(args.plot_dir / f"series-{i}.png", index, history, horizon, prediction, actual, name)
        if actual is not None:
            actuals.append(actual)
            means.append(prediction["mean"])
            for q in QUANTILES:
                bands[float(q)].append(prediction["quantiles"][q])
    if actuals:
        scores = score_forecasts(np.array(actuals), np.array(means), {q: np.array(v) for q, v in bands.items()})
        print(f"\naccuracy over {len(actuals)} series x {pl} steps: RMSE {scores['RMSE']:.4f}, "
              f"mean_wQuantileLoss {scores['mean_wQuantileLoss']:.4f} (quantiles {', '.join(QUANTILES)})")
    if args.plot_dir:
        print(f"plots written to {args.plot_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
