#!/usr/bin/env python3
"""Make DeepAR train/test channels and put them where SageMaker reads them.

Test = each full series; train = the same series without their last --prediction-length points
(dynamic_feat cut to match), so the test channel scores exactly the forecast horizon. Input: JSON
Lines files of full series (plain or .gz), or --sample for the bundled pollution data generator.
Output: s3://bucket/prefix (uploaded with your credentials) or, with --local, a folder / file:// URI.
Prints the two channel URIs.

    evaluation/prepare.py --sample --prediction-length 24 --output s3://my-bucket/deepar/data
    evaluation/prepare.py --local --data series.json --prediction-length 24 --output file:///tmp/eval/data
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
from pathlib import Path

import common
from common import CommandError


def read_series(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    records = []
    with opener(path, "rt") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as error:
                raise CommandError(f"{path}:{number}: not JSON: {error}") from None
            if not isinstance(record, dict) or "start" not in record or not isinstance(record.get("target"), list):
                raise CommandError(f"{path}:{number}: a series needs \"start\" and a \"target\" list")
            records.append((f"{path}:{number}", record))
    return records


def split(located: list[tuple[str, dict]], prediction_length: int) -> tuple[list[dict], list[dict]]:
    train, test = [], []
    for where, record in located:
        if len(record["target"]) <= prediction_length:
            raise CommandError(f"{where}: {len(record['target'])} points, the test channel needs more than "
                               f"prediction_length={prediction_length}")
        cut = {**record, "target": record["target"][:-prediction_length]}
        if "dynamic_feat" in record:
            cut["dynamic_feat"] = [f[:-prediction_length] for f in record["dynamic_feat"]]
        train.append(cut)
        test.append(record)
    return train, test


def sample_series(sensors: int, days: int) -> list[tuple[str, dict]]:
    from sagemaker_deepar.sample_data import generate

    return [(f"sample series {i}", r) for i, r in enumerate(generate(num_sensors=sensors, days=days))]


def publish(folder: Path, output: str, args: argparse.Namespace) -> dict[str, str]:
    """Upload train/ and test/ under an s3:// prefix, or copy them into a local folder."""
    if output.startswith("s3://"):
        if args.local:
            raise CommandError("--local writes channels to a folder or file:// URI, not s3://")
        bucket, _, prefix = output.removeprefix("s3://").partition("/")
        session = common.open_session(args)
        return {channel: session.upload_data(str(folder / channel), bucket=bucket,
                                             key_prefix=f"{prefix.rstrip('/')}/{channel}".lstrip("/"))
                for channel in ("train", "test")}
    if not args.local:
        raise CommandError(f"--output {output}: SageMaker reads channels from s3:// (or pass --local)")
    target = common.local_path(output).resolve()
    for channel in ("train", "test"):
        destination = target / channel
        destination.mkdir(parents=True, exist_ok=True)
        for file in (folder / channel).iterdir():
            (destination / file.name).write_bytes(file.read_bytes())
    return {channel: f"file://{target / channel}" for channel in ("train", "test")}


def main(argv: list[str] | None = None) -> dict[str, str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, nargs="+", help="JSON Lines files of full series (.json, .jsonl, .gz)")
    source.add_argument("--sample", action="store_true", help="generate the sample pollution series instead")
    parser.add_argument("--sensors", type=int, default=5, help="--sample: sensors (5 series each)")
    parser.add_argument("--days", type=int, default=30, help="--sample: hourly days per series")
    parser.add_argument("--prediction-length", type=int, required=True)
    parser.add_argument("--output", required=True, help="s3://bucket/prefix, or with --local a folder/file:// URI")
    common.add_session_args(parser)
    args = parser.parse_args(argv)
    if args.prediction_length < 1:
        raise CommandError("--prediction-length must be a positive integer")
    located = sample_series(args.sensors, args.days) if args.sample else [
        item for path in args.data for item in read_series(path)]
    if not located:
        raise CommandError("no series in the input")
    train, test = split(located, args.prediction_length)
    with tempfile.TemporaryDirectory() as tmp:
        common.write_jsonl(train, Path(tmp) / "train" / "train.json")
        common.write_jsonl(test, Path(tmp) / "test" / "test.json")
        uris = publish(Path(tmp), args.output, args)
    print(f"{len(test)} series, {sum(len(r['target']) for r in test)} points; "
          f"train drops the last {args.prediction_length} of each")
    for channel, uri in uris.items():
        print(f"{channel}: {uri}")
    return uris


if __name__ == "__main__":
    raise SystemExit(common.run_command(main))
