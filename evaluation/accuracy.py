"""What the commands that forecast held-out data share (evaluation.invoke through an endpoint,
evaluation.batch through a transform job): the report's options, the held-out series and the
accuracy report itself."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sagemaker_deepar import contract
from sagemaker_deepar.errors import UserError

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE / "eval_data" / "eval_data.json"


def add_report_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="full series with ground truth (JSON Lines)")
    parser.add_argument("--prediction-length", type=int, required=True, help="the model's prediction_length")
    parser.add_argument("--freq", default="H", help="the data's time_freq (for plot axes)")
    parser.add_argument("--series", type=int, help="only the first N series")
    parser.add_argument("--num-samples", type=int, default=100)
    parser.add_argument("--plot-dir", type=Path, help="write one PNG per series here")
    parser.add_argument("--json-out", type=Path, help="write the report (and forecasts) as JSON here")


def load_eval_series(args: argparse.Namespace) -> tuple[list[dict], list[dict]]:
    """The full series (ground truth) and their held-out forms (what the model is asked)."""
    records = contract.read_jsonl(args.data, limit=args.series)
    if not records:
        raise UserError(f"{args.data}: no series")
    held_out = []
    for number, record in enumerate(records, 1):
        try:
            held_out.append(contract.holdout(record, args.prediction_length))
        except contract.ContractError as error:
            raise UserError(f"{args.data}: series {number}: {error}") from None
    return records, held_out


def report(records: list[dict], predictions: list[dict], args: argparse.Namespace, source: str) -> dict:
    from sagemaker_deepar.training.report import AccuracyReport

    if len(predictions) != len(records):
        raise UserError(f"{source}: {len(predictions)} forecasts for {len(records)} series")
    accuracy = AccuracyReport(prediction_length=args.prediction_length, freq=args.freq)
    for i, (record, prediction) in enumerate(zip(records, predictions)):
        name = str(record.get("item_id", record.get("id", f"series-{i}")))
        try:
            accuracy.add(name, record, prediction, args.plot_dir)
        except ValueError as error:
            raise UserError(f"{source}: {error}") from None
    result = accuracy.print()
    if args.json_out:
        args.json_out.parent.mkdir(parents=True, exist_ok=True)
        args.json_out.write_text(json.dumps({**result, "predictions": predictions}))
    return result
