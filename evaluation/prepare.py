"""Make DeepAR train/test channels and put them where SageMaker reads them.

Test = each full series; train = the same series without their last --prediction-length points
(dynamic_feat cut to match), so the test channel scores exactly the forecast horizon. Input: JSON
Lines files of full series (plain or .gz), or --sample for the bundled pollution data generator.
Output: s3://bucket/prefix (uploaded with your credentials) or, with --local, a folder / file:// URI.
Prints the two channel URIs.

    python -m evaluation.prepare --sample --prediction-length 24 --output s3://my-bucket/deepar/data
    python -m evaluation.prepare --local --data series.json --prediction-length 24 --output file:///tmp/eval/data
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from sagemaker_deepar import contract
from sagemaker_deepar.errors import UserError

from . import common


def read_series(path: Path) -> list[tuple[str, dict]]:
    """(``file:line``, series) for every series of a JSON Lines file (plain or .gz)."""
    records = []
    for number, record in contract.iter_jsonl(path):
        if not isinstance(record, dict) or "start" not in record or not isinstance(record.get("target"), list):
            raise UserError(f'{path}:{number}: a series needs "start" and a "target" list')
        records.append((f"{path}:{number}", record))
    return records


def sample_series(sensors: int, days: int) -> list[tuple[str, dict]]:
    from sagemaker_deepar.training.sample_data import generate

    return [(f"sample series {i}", r) for i, r in enumerate(generate(num_sensors=sensors, days=days))]


def publish(folder: Path, output: str, args: argparse.Namespace) -> dict[str, str]:
    """Upload train/ and test/ under an s3:// prefix, or copy them into a local folder."""
    if output.startswith("s3://"):
        if args.local:
            raise UserError("--local writes channels to a folder or file:// URI, not s3://")
        bucket, _, prefix = output.removeprefix("s3://").partition("/")
        session = common.open_session(args)
        return {
            channel: session.upload_data(
                str(folder / channel), bucket=bucket, key_prefix=f"{prefix.rstrip('/')}/{channel}".lstrip("/")
            )
            for channel in ("train", "test")
        }
    if not args.local:
        raise UserError(f"--output {output}: SageMaker reads channels from s3:// (or pass --local)")
    target = common.local_path(output).resolve()
    for channel in ("train", "test"):
        destination = target / channel
        destination.mkdir(parents=True, exist_ok=True)
        for file in (folder / channel).iterdir():
            (destination / file.name).write_bytes(file.read_bytes())
    return {channel: f"file://{target / channel}" for channel in ("train", "test")}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation.prepare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=Path, nargs="+", help="JSON Lines files of full series (.json, .jsonl, .gz)")
    source.add_argument("--sample", action="store_true", help="generate the sample pollution series instead")
    parser.add_argument("--sensors", type=int, default=5, help="--sample: sensors (5 series each)")
    parser.add_argument("--days", type=int, default=30, help="--sample: hourly days per series")
    parser.add_argument("--prediction-length", type=int, required=True)
    parser.add_argument("--output", required=True, help="s3://bucket/prefix, or with --local a folder/file:// URI")
    common.add_session_args(parser)
    return parser


def run(args: argparse.Namespace) -> dict[str, str]:
    if args.prediction_length < 1:
        raise UserError("--prediction-length must be a positive integer")
    located = (
        sample_series(args.sensors, args.days)
        if args.sample
        else [item for path in args.data for item in read_series(path)]
    )
    if not located:
        raise UserError("no series in the input")
    where, records = zip(*located)
    train, test = contract.split_train_test(records, args.prediction_length, locations=where)
    with tempfile.TemporaryDirectory() as tmp:
        contract.write_jsonl(train, Path(tmp) / "train" / "train.json")
        contract.write_jsonl(test, Path(tmp) / "test" / "test.json")
        uris = publish(Path(tmp), args.output, args)
    print(
        f"{len(test)} series, {sum(len(r['target']) for r in test)} points; "
        f"train drops the last {args.prediction_length} of each"
    )
    for channel, uri in uris.items():
        print(f"{channel}: {uri}")
    return uris


def main(argv: list[str] | None = None) -> dict[str, str]:
    return run(parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(common.run_command(main))
