"""Pipeline step "Evaluate": the batch transform's forecasts against the held-out points.

Inputs: the test channel (full series, the prepare step's ``test`` output) and the transform output
(one forecast line per line of the train channel, in order). Writes ``evaluation.json`` (the
pipeline's PropertyFile) with mean_wQuantileLoss and RMSE as GluonTS's Evaluator aggregates them
(``sagemaker_deepar.training.report``). A forecast count that does not match, a malformed forecast or a
metric that is not a finite number fails the step with a message naming it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any, Optional

TEST = "/opt/ml/processing/input/test"
FORECASTS = "/opt/ml/processing/input/forecasts"
OUTPUT = "/opt/ml/processing/evaluation"


def read_folder(folder: Path, suffix: str) -> list[tuple[str, Any]]:
    """(``file:line``, record) for every JSON line of the folder's files ending in ``suffix``, in name order."""
    from sagemaker_deepar import contract

    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(suffix))
    if not files:
        raise ValueError(f"{folder}: no *{suffix} file")
    return [(f"{path.name}:{number}", record) for path in files for number, record in contract.iter_jsonl(path)]


def evaluate(tests: list[tuple[str, Any]], forecasts: list[tuple[str, Any]], prediction_length: int, freq: str) -> dict:
    """The evaluation document: overall and per-series scores; raises ValueError naming the bad input."""
    from sagemaker_deepar.training.report import AccuracyReport

    if len(tests) != len(forecasts):
        raise ValueError(f"{len(forecasts)} forecasts for {len(tests)} test series: every series needs one line")
    report = AccuracyReport(prediction_length=prediction_length, freq=freq)
    for (where, record), (answer_where, prediction) in zip(tests, forecasts):
        report.add(f"{record.get('item_id', where)} ({answer_where})", record, prediction)
    overall = report.scores()
    bad = {k: overall[k] for k in ("mean_wQuantileLoss", "RMSE") if not math.isfinite(overall[k])}
    if bad:
        raise ValueError(
            f"evaluation over {len(tests)} series yields {', '.join(f'{k}={v}' for k, v in bad.items())}: "
            "the held-out points are all missing or all zero, so the model cannot be judged"
        )
    return {
        "regression_metrics": {
            "mean_wQuantileLoss": {"value": overall["mean_wQuantileLoss"]},
            "RMSE": {"value": overall["RMSE"]},
        },
        "series": len(tests),
        "prediction_length": prediction_length,
        "per_series": report.series_scores(),
    }


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="evaluate.py", description=__doc__.splitlines()[0])
    parser.add_argument("--test", type=Path, default=Path(TEST))
    parser.add_argument("--forecasts", type=Path, default=Path(FORECASTS))
    parser.add_argument("--output", type=Path, default=Path(OUTPUT))
    parser.add_argument("--prediction-length", type=int, required=True)
    parser.add_argument("--time-freq", default="H")
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    from sagemaker_deepar.cli import run_command

    def run(arguments: Optional[list[str]]) -> None:
        args = parser().parse_args(arguments)
        document = evaluate(
            read_folder(args.test, ".json"), read_folder(args.forecasts, ".out"), args.prediction_length, args.time_freq
        )
        args.output.mkdir(parents=True, exist_ok=True)
        (args.output / "evaluation.json").write_text(json.dumps(document, indent=1))
        metrics = document["regression_metrics"]
        print(
            f"evaluation over {document['series']} series x {args.prediction_length} steps: "
            f"mean_wQuantileLoss {metrics['mean_wQuantileLoss']['value']:.4f}, RMSE {metrics['RMSE']['value']:.4f}"
        )

    return run_command(run, argv, debug_env="DEEPAR_MLOPS_DEBUG")


if __name__ == "__main__":
    sys.exit(main())
