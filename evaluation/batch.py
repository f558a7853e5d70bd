"""Forecast held-out data with a batch transform job and report the accuracy.

Writes the evaluation series (last --prediction-length points held out) as JSON Lines, uploads them
(s3:// --work-path, or a local folder with --local), runs a transform job on the model artifact
(SplitType Line, AssembleWith Line, MultiRecord batches; the inference configuration travels in
DEEPAR_INFERENCE_CONFIG), checks that every input line got an output line, then prints the same
accuracy report as invoke.py.

    python -m evaluation.batch --model-data s3://b/out/job/output/model.tar.gz --image <ecr-uri> \\
        --work-path s3://b/deepar/batch --prediction-length 24
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from sagemaker_deepar import contract
from sagemaker_deepar.errors import UserError

from . import accuracy, common

INPUT_NAME = "batch-input.jsonl"


def upload_input(lines: list[dict], args: argparse.Namespace, session) -> str:
    if args.local:
        folder = common.local_path(args.work_path).resolve() / "input"
        contract.write_jsonl(lines, folder / INPUT_NAME)
        return f"file://{folder}"
    if not args.work_path.startswith("s3://"):
        raise UserError(f"--work-path {args.work_path}: batch transform reads from s3:// (or pass --local)")
    bucket, _, prefix = args.work_path.removeprefix("s3://").partition("/")
    with tempfile.TemporaryDirectory() as tmp:
        path = contract.write_jsonl(lines, Path(tmp) / INPUT_NAME)
        return session.upload_data(str(path), bucket=bucket, key_prefix=f"{prefix.rstrip('/')}/input".lstrip("/"))


def read_output(output_path: str, session) -> list[dict]:
    name = f"{INPUT_NAME}.out"
    if output_path.startswith("file://"):
        text = (common.local_path(output_path) / name).read_text()
    else:
        bucket, _, prefix = output_path.removeprefix("s3://").partition("/")
        key = f"{prefix.rstrip('/')}/{name}".lstrip("/")
        text = session.boto_session.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    return [json.loads(line) for line in text.splitlines() if line.strip()]  # S3 text: no file to iter_jsonl


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation.batch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model-data", required=True, help="model.tar.gz URI")
    parser.add_argument("--image", help="serving image (default with --local: sagemaker-deepar:latest)")
    parser.add_argument(
        "--work-path", required=True, help="s3:// prefix (or local folder with --local) for input/ and output/"
    )
    parser.add_argument("--instance-type", default=common.DEFAULT_INSTANCE_TYPE)
    parser.add_argument("--instance-count", type=int, default=1)
    parser.add_argument("--max-payload", type=int, default=6, help="MB per request")
    parser.add_argument(
        "--timeout",
        type=int,
        help="seconds per request (default: enough for --max-payload; README, Reliability: "
        "SAGEMAKER_MODEL_SERVER_TIMEOUT and InvocationsTimeoutInSeconds)",
    )
    accuracy.add_report_args(parser)
    common.add_session_args(parser)
    return parser


def run(args: argparse.Namespace) -> dict:
    from sagemaker.model import Model

    from sagemaker_deepar.training.report import QUANTILES

    session = common.open_session(args)
    records, held_out = accuracy.load_eval_series(args)
    input_uri = upload_input(held_out, args, session)
    output_path = f"{args.work_path.rstrip('/')}/output"
    if args.local:
        output_path = f"file://{(common.local_path(args.work_path).resolve() / 'output')}"
        common.local_path(output_path).mkdir(parents=True, exist_ok=True)
    model = Model(
        image_uri=common.default_image(args),
        model_data=args.model_data,
        role=common.execution_role(args),
        sagemaker_session=session,
    )
    config = {"num_samples": args.num_samples, "output_types": ["mean", "quantiles"], "quantiles": list(QUANTILES)}
    timeout = args.timeout or contract.batch_payload_timeout(args.max_payload)
    transformer = model.transformer(
        instance_count=args.instance_count,
        instance_type="local" if args.local else args.instance_type,
        strategy="MultiRecord",
        assemble_with="Line",
        accept="application/jsonlines",
        output_path=output_path,
        max_payload=args.max_payload,
        env={"DEEPAR_INFERENCE_CONFIG": json.dumps(config), "SAGEMAKER_MODEL_SERVER_TIMEOUT": str(timeout)},
    )
    extra = {} if args.local else {"model_client_config": {"InvocationsTimeoutInSeconds": timeout}}
    transformer.transform(
        input_uri, content_type="application/jsonlines", split_type="Line", logs=False, wait=True, **extra
    )
    predictions = read_output(output_path, session)
    print(
        f"transform job {transformer.latest_transform_job.name}: {len(records)} lines in, {len(predictions)} out "
        f"({output_path})"
    )
    if len(predictions) != len(records):
        raise UserError(f"batch output has {len(predictions)} lines for {len(records)} input lines")
    result = accuracy.report(records, predictions, args, "batch output")
    if model.name and not args.local:
        session.delete_model(model.name)  # the transform created it; nothing else uses it
    return {**result, "input_lines": len(records), "output_lines": len(predictions), "output_path": output_path}


def main(argv: list[str] | None = None) -> dict:
    return run(parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(common.run_command(main))
