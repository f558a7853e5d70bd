"""Curated Parquet -> DeepAR train/test channels (JSON Lines), as the train entrypoint reads them.

    python -m ingestion.to_deepar --curated /data/curated --out /data/deepar --time-freq H --prediction-length 24
    python -m ingestion.to_deepar --curated s3://cur/readings/ --out s3://art/deepar/ --pollutant ozone \\
        --cat --dynamic-feat nitrogen_dioxide --gzip

One series per (device, pollutant), or with --pollutant one pollutant across devices. Readings are
resampled to --time-freq (mean per period of the contract's grid, see docs/lake-time.md); empty
periods become "NaN" (DeepAR's missing value). --cat adds categorical features (device index, and
pollutant index per series); --dynamic-feat adds other
columns of the same device as dynamic features (gaps filled forward then backward: DeepAR needs them
complete). Series shorter than --min-length points are dropped. test = each full series, train = all
but its last --prediction-length points. Runs with pandas/pyarrow locally or in a SageMaker
processing step; s3:// paths go through boto3 (AWS_ENDPOINT_URL is honoured). Prints per-series statistics.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pandas as pd

from sagemaker_deepar import contract
from sagemaker_deepar.cli import run_command
from sagemaker_deepar.errors import UserError

from .glue_job import POLLUTANTS


def split_s3(uri: str) -> tuple[str, str]:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return bucket, key


def fetch(curated: str, folder: Path) -> Path:
    """A local copy of an s3:// prefix (only .parquet objects), or the local path itself."""
    if not curated.startswith("s3://"):
        return Path(curated)
    from awsinfra.clients import client
    from awsinfra.s3 import download_prefix

    bucket, prefix = split_s3(curated)
    try:  # a key such as readings/../../x must not write outside the work folder (#23 item 3)
        download_prefix(client("s3"), bucket, prefix, folder, lambda key: key.endswith(".parquet"))
    except contract.UnsafePathError as error:
        raise UserError(f"{curated}: {error}") from None
    return folder


def publish(folder: Path, out: str) -> str:
    if not out.startswith("s3://"):
        return str(Path(out).resolve())
    from awsinfra.clients import client

    s3, (bucket, prefix) = client("s3"), split_s3(out)
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            s3.upload_file(str(path), bucket, f"{prefix.rstrip('/')}/{path.relative_to(folder)}".lstrip("/"))
    return out


def load(curated: Path, columns: list[str]) -> pd.DataFrame:
    try:
        frame = pd.read_parquet(curated, columns=["device_id", "timestamp", *columns])
    except (FileNotFoundError, OSError, ValueError) as error:
        raise UserError(f"--curated {curated}: {error}") from None
    frame["timestamp"] = pd.to_datetime(frame["timestamp"])
    frame["device_id"] = frame["device_id"].astype(str)
    return frame.sort_values(["device_id", "timestamp"])


def complete(values: np.ndarray) -> list[float]:
    return np.round(pd.Series(values).ffill().bfill().fillna(0.0).to_numpy(dtype=float), 4).tolist()


def build_series(
    frame: pd.DataFrame, targets: list[str], freq: contract.TimeFreq, with_cat: bool, dynamic: list[str]
) -> Iterator[dict]:
    """One record per (device, target) on the contract's period grid (``contract.period_means``), from
    the target's first observed period to its last; ``start`` is that first period's start."""
    columns = [*dict.fromkeys([*targets, *dynamic])]
    for device_index, (device, readings) in enumerate(frame.groupby("device_id", sort=True)):
        try:
            grid = contract.period_means(readings["timestamp"].to_numpy(), readings[columns].to_numpy(float), freq)
        except contract.ContractError as error:
            raise UserError(f"device {device}: {error}") from None
        for target in targets:
            observed = np.flatnonzero(~np.isnan(grid.means[:, columns.index(target)]))
            if not observed.size:
                continue
            rows = slice(int(observed[0]), int(observed[-1]) + 1)
            record = {
                "start": freq.label(grid.first + rows.start),
                "target": contract.target_list(grid.means[rows, columns.index(target)], decimals=4),
                "item_id": device if len(targets) == 1 else f"{device}/{target}",
            }
            if with_cat:
                record["cat"] = [device_index] if len(targets) == 1 else [device_index, POLLUTANTS.index(target)]
            features = [c for c in dynamic if c != target]
            if features:
                record["dynamic_feat"] = [complete(grid.means[rows, columns.index(c)]) for c in features]
            yield record


def statistics(record: dict) -> dict:
    target = contract.target_array(record["target"])
    return {
        "item_id": record["item_id"],
        "start": record["start"],
        "length": len(target),
        "missing_pct": round(100 * float(np.isnan(target).mean()), 1),
        "mean": round(float(np.nanmean(target)), 3),
        "min": round(float(np.nanmin(target)), 3),
        "max": round(float(np.nanmax(target)), 3),
    }


def convert(
    curated: str,
    out: str,
    time_freq: str,
    prediction_length: int,
    pollutant: Optional[str] = None,
    with_cat: bool = False,
    dynamic: Optional[list[str]] = None,
    min_length: Optional[int] = None,
    compress: bool = False,
    quiet: bool = False,
) -> dict:
    dynamic = dynamic or []
    targets = [pollutant] if pollutant else list(POLLUTANTS)
    unknown = [c for c in [*targets, *dynamic] if c not in POLLUTANTS]
    if unknown:
        raise UserError(f"unknown column(s) {', '.join(unknown)}: choose from {', '.join(POLLUTANTS)}")
    min_length = min_length or 2 * prediction_length + 1
    freq = contract.parse_time_freq(time_freq, "--time-freq")
    with tempfile.TemporaryDirectory() as tmp:
        frame = load(fetch(curated, Path(tmp) / "curated"), [*dict.fromkeys([*targets, *dynamic])])
        series = list(build_series(frame, targets, freq, with_cat, dynamic))
        kept = [s for s in series if len(s["target"]) >= min_length]
        dropped = [s["item_id"] for s in series if len(s["target"]) < min_length]
        if not kept:
            raise UserError(f"no series has {min_length} points or more (found {len(series)} series)")
        staging = Path(tmp) / "channels" if out.startswith("s3://") else Path(out)
        train, test = contract.split_train_test(kept, prediction_length)
        contract.write_jsonl(train, staging / "train" / "train.json", compress)
        contract.write_jsonl(test, staging / "test" / "test.json", compress)
        location = publish(staging, out)
    stats = [statistics(s) for s in kept]
    if not quiet:
        print(f"{'item_id':<40}{'start':<22}{'length':>8}{'missing%':>10}{'mean':>10}{'min':>10}{'max':>10}")
        for s in stats:
            print(
                f"{s['item_id']:<40}{s['start']:<22}{s['length']:>8}{s['missing_pct']:>10}{s['mean']:>10}"
                f"{s['min']:>10}{s['max']:>10}"
            )
        if dropped:
            print(f"dropped {len(dropped)} series shorter than {min_length} points: {', '.join(dropped[:10])}")
        print(
            f"{len(kept)} series from {len(frame)} readings -> {location}/train (last {prediction_length} points "
            f"held out) and {location}/test"
        )
    return {"series": len(kept), "dropped": dropped, "readings": len(frame), "stats": stats, "out": location}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ingestion.to_deepar", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--curated", required=True, help="curated Parquet folder or s3:// prefix")
    parser.add_argument("--out", required=True, help="folder or s3:// prefix that receives train/ and test/")
    parser.add_argument("--time-freq", default="H")
    parser.add_argument("--prediction-length", type=int, default=24)
    parser.add_argument("--pollutant", choices=POLLUTANTS, help="one pollutant across devices (default: all)")
    parser.add_argument("--cat", action="store_true", help="add categorical features (device, pollutant)")
    parser.add_argument(
        "--dynamic-feat",
        nargs="+",
        default=[],
        choices=POLLUTANTS,
        metavar="COLUMN",
        help="other columns of the same device as dynamic features",
    )
    parser.add_argument("--min-length", type=int, help="drop shorter series (default 2 x prediction length + 1)")
    parser.add_argument("--gzip", action="store_true", help="write .json.gz")
    args = parser.parse_args(argv)
    if args.prediction_length < 1:
        raise UserError("--prediction-length must be positive")
    convert(
        args.curated,
        args.out,
        args.time_freq,
        args.prediction_length,
        args.pollutant,
        args.cat,
        args.dynamic_feat,
        args.min_length,
        args.gzip,
    )
    return 0


if __name__ == "__main__":
    sys.exit(run_command(main, debug_env="INGESTION_DEBUG"))
