"""Forecast held-out data with a SageMaker endpoint and report the accuracy.

Reads full series (JSON Lines, default evaluation/eval_data/eval_data.json), holds out the last
--prediction-length points of each as ground truth, sends DeepAR JSON requests with boto3's
invoke_endpoint (adaptive retries on throttling), then prints a per-series table, RMSE and
mean_wQuantileLoss (the built-in's definitions) and writes one PNG per series.

    python -m evaluation.invoke --name deepar-pollution --prediction-length 24 --plot-dir plots/
    python -m evaluation.invoke --local --name any --prediction-length 24      (the local endpoint on --serving-port)
    python -m evaluation.invoke --name fleet --target-model site-7/model.tar.gz --prediction-length 24   (multi-model)
"""

from __future__ import annotations

import argparse
import json

from sagemaker_deepar.errors import UserError

from . import common
from .accuracy import DEFAULT_DATA, add_report_args, load_eval_series, report

__all__ = ["DEFAULT_DATA", "add_report_args", "invoke", "load_eval_series", "report", "request_body"]


def request_body(records: list[dict], num_samples: int, quantiles: tuple[str, ...]) -> bytes:
    return json.dumps(
        {
            "instances": records,
            "configuration": {
                "num_samples": num_samples,
                "output_types": ["mean", "quantiles"],
                "quantiles": list(quantiles),
            },
        }
    ).encode()


def invoke(
    runtime, endpoint: str, body: bytes, variant: str | None = None, target_model: str | None = None
) -> list[dict]:
    """One invoke_endpoint call; the predictions, or a clear error with the container's message."""
    request = {"EndpointName": endpoint, "Body": body, "ContentType": "application/json", "Accept": "application/json"}
    if variant:
        request["TargetVariant"] = variant
    if target_model:  # multi-model endpoint: the model.tar.gz path relative to the endpoint's S3 prefix
        request["TargetModel"] = target_model
    response = runtime.invoke_endpoint(**request)
    stream = response["Body"]
    status = getattr(stream, "status", 200)  # the local runtime does not raise on 4xx/5xx; SageMaker does
    text = stream.read().decode()
    try:
        answer = json.loads(text)
    except ValueError:
        raise UserError(f"endpoint {endpoint} answered {status} with a body that is not JSON: {text[:200]}") from None
    if status != 200 or "predictions" not in answer:
        raise UserError(f"endpoint {endpoint} answered {status}: {answer.get('error', text[:200])}")
    return answer["predictions"]


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation.invoke", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--name", required=True, help="endpoint name")
    parser.add_argument("--variant", help="send every request to this production variant (TargetVariant)")
    parser.add_argument(
        "--target-model",
        help="multi-model endpoint: the model to use, relative to its S3 prefix (e.g. site-7/model.tar.gz)",
    )
    parser.add_argument("--batch-size", type=int, default=10, help="series per request")
    add_report_args(parser)
    common.add_session_args(parser)
    return parser


def run(args: argparse.Namespace) -> dict:
    from sagemaker_deepar.training.report import QUANTILES

    records, held_out = load_eval_series(args)
    runtime = common.runtime_client(common.open_session(args), args)
    predictions: list[dict] = []
    for chunk in common.chunks(held_out, args.batch_size):
        body = request_body(chunk, args.num_samples, QUANTILES)
        predictions.extend(invoke(runtime, args.name, body, args.variant, getattr(args, "target_model", None)))
    print(f"endpoint {args.name}: {len(predictions)} forecasts of {args.prediction_length} steps")
    return report(records, predictions, args, f"endpoint {args.name}")


def main(argv: list[str] | None = None) -> dict:
    return run(parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(common.run_command(main))
