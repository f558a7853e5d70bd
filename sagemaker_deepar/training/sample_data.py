"""Synthetic hourly air-pollution series in the DeepAR format (the bundled sample data).

Each sensor measures ozone, particulate matter, CO, SO2 and NO2 with a daily cycle, a weekday
effect, noise, occasional outliers and gaps (missing values). One series per (sensor, pollutant),
``cat = [sensor, pollutant]``; optional ``dynamic_feat`` = temperature.

    python -m sagemaker_deepar.training.sample_data --out local_test/test_dir/input/data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from ..contract import split_train_test, write_jsonl

POLLUTANTS = {  # name: (base level, daily amplitude, peak hour, noise)
    "ozone": (30.0, 18.0, 15, 3.0),
    "particulate_matter": (22.0, 8.0, 8, 4.0),
    "carbon_monoxide": (0.6, 0.25, 8, 0.06),
    "sulfur_dioxide": (4.0, 1.5, 11, 0.6),
    "nitrogen_dioxide": (25.0, 10.0, 19, 3.0),
}


def temperature(hours: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return 15 + 8 * np.sin(2 * np.pi * (hours % 24 - 9) / 24) + rng.normal(0, 1.0, len(hours))


def pollutant_series(
    name: str, hours: np.ndarray, start: pd.Timestamp, sensor: int, temp: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    base, amplitude, peak, noise = POLLUTANTS[name]
    base *= 1 + 0.15 * sensor
    daily = amplitude * np.cos(2 * np.pi * (hours % 24 - peak) / 24)
    weekday = (pd.DatetimeIndex(start + pd.to_timedelta(hours, unit="h")).dayofweek < 5).astype(float)
    traffic = (0.15 if name in ("nitrogen_dioxide", "carbon_monoxide", "particulate_matter") else 0.0) * base * weekday
    heat = 0.6 * (temp - 15) if name == "ozone" else 0.0
    values = base + daily + traffic + heat + rng.normal(0, noise, len(hours))
    outliers = rng.random(len(hours)) < 0.003
    values[outliers] *= rng.uniform(2, 4, outliers.sum())
    return np.maximum(values, 0.0)


def add_gaps(values: np.ndarray, rng: np.random.Generator) -> list:
    """A few sensor outages (runs of missing values), written as null or "NaN" like real exports."""
    series: list = [round(float(v), 4) for v in values]
    for _ in range(rng.integers(0, 3)):
        begin = int(rng.integers(0, len(series) - 12))
        for i in range(begin, begin + int(rng.integers(1, 12))):
            series[i] = None if rng.random() < 0.5 else "NaN"
    return series


def generate(
    num_sensors: int = 5,
    days: int = 30,
    start: str = "2024-01-01 00:00:00",
    seed: int = 7,
    with_dynamic_feat: bool = False,
) -> list[dict]:
    rng = np.random.default_rng(seed)
    hours = np.arange(days * 24)
    start_ts = pd.Timestamp(start)
    records = []
    for sensor in range(num_sensors):
        temp = temperature(hours, rng)
        for index, name in enumerate(POLLUTANTS):
            record = {
                "start": start,
                "target": add_gaps(pollutant_series(name, hours, start_ts, sensor, temp, rng), rng),
                "cat": [sensor, index],
            }
            if with_dynamic_feat:
                record["dynamic_feat"] = [[round(float(t), 3) for t in temp]]
            records.append(record)
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder that receives train/ and test/")
    parser.add_argument("--sensors", type=int, default=5)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--prediction-length", type=int, default=24)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--with-dynamic-feat", action="store_true")
    args = parser.parse_args()
    records = generate(args.sensors, args.days, seed=args.seed, with_dynamic_feat=args.with_dynamic_feat)
    train, test = split_train_test(records, args.prediction_length)
    write_jsonl(train, args.out / "train" / "train.json")
    write_jsonl(test, args.out / "test" / "test.json")
    print(f"wrote {len(train)} series to {args.out / 'train'} and {args.out / 'test'}")


if __name__ == "__main__":
    main()
