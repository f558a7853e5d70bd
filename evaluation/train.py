"""Train DeepAR with a SageMaker Estimator (SDK v2) on the image; print the model artifact and metrics.

Hyperparameters come from --hyperparameters (default: evaluation/hyperparameters.json) with --hp
key=value overrides. The metric definitions match the container's log lines, so CloudWatch and
tuning jobs see test:RMSE, test:mean_wQuantileLoss, train:final_loss, train:loss, ...

    python -m evaluation.train --image <ecr-uri> --train s3://b/deepar/data/train --test s3://b/deepar/data/test \\
        --output-path s3://b/deepar/output --spot --checkpoint-s3-uri s3://b/deepar/checkpoints
    python -m evaluation.train --local --train file:///tmp/eval/data/train --test file:///tmp/eval/data/test --hp epochs=5
"""

from __future__ import annotations

import argparse
import json
import tarfile
from pathlib import Path
from typing import Any

from sagemaker_deepar.contract import METADATA_FILE, ModelArtifact
from sagemaker_deepar.errors import UserError

from . import common

HERE = Path(__file__).resolve().parent


def add_training_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--image", help="training image URI (default with --local: sagemaker-deepar:latest)")
    parser.add_argument("--train", required=True, help="train channel URI (s3://, or file:// with --local)")
    parser.add_argument("--test", help="test channel URI: enables the test:* metrics")
    parser.add_argument(
        "--output-path",
        help="where model.tar.gz goes (default: the session's bucket; --local: file://./deepar-eval/output)",
    )
    parser.add_argument(
        "--hyperparameters",
        type=Path,
        default=HERE / "hyperparameters.json",
        help="JSON object of DeepAR hyperparameters",
    )
    parser.add_argument(
        "--hp",
        action="append",
        default=[],
        type=hyperparameter,
        metavar="KEY=VALUE",
        help="override one hyperparameter",
    )
    parser.add_argument("--instance-type", default=common.DEFAULT_INSTANCE_TYPE)
    parser.add_argument("--instance-count", type=int, default=1)
    parser.add_argument("--max-run", type=int, default=24 * 3600, help="seconds before SageMaker stops the job")
    parser.add_argument("--spot", action="store_true", help="managed spot training (needs --checkpoint-s3-uri)")
    parser.add_argument(
        "--max-wait", type=int, help="--spot: seconds to wait for capacity + run (default 2x --max-run)"
    )
    parser.add_argument("--checkpoint-s3-uri", help="checkpoints survive spot interruptions here; training resumes")
    parser.add_argument("--base-job-name", default="deepar")
    common.add_session_args(parser)


def hyperparameter(item: str) -> tuple[str, Any]:
    """One ``--hp KEY=VALUE``: the value as JSON when it is JSON (``5``, ``[0.1, 0.9]``), else the string."""
    key, raw = common.key_value(item, "--hp")
    try:
        return key, json.loads(raw)
    except ValueError:
        return key, raw


def hyperparameters(args: argparse.Namespace) -> dict:
    try:
        values = json.loads(args.hyperparameters.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"--hyperparameters {args.hyperparameters}: {error}") from None
    return {**values, **dict(args.hp)}


def build_estimator(args: argparse.Namespace, session):
    from sagemaker.estimator import Estimator

    from sagemaker_deepar.training.metrics import METRIC_DEFINITIONS

    if args.spot and args.local:
        raise UserError("--spot needs SageMaker; drop it with --local")
    if args.spot and not args.checkpoint_s3_uri:
        raise UserError("--spot without --checkpoint-s3-uri would restart from scratch after an interruption")
    output_path = args.output_path or (f"file://{Path('deepar-eval/output').resolve()}" if args.local else None)
    if args.local and output_path:
        common.local_path(output_path).mkdir(parents=True, exist_ok=True)
    return Estimator(
        image_uri=common.default_image(args),
        role=common.execution_role(args),
        instance_count=args.instance_count,
        instance_type="local" if args.local else args.instance_type,
        output_path=output_path,
        base_job_name=args.base_job_name,
        sagemaker_session=session,
        hyperparameters=hyperparameters(args),
        metric_definitions=METRIC_DEFINITIONS,
        max_run=args.max_run,
        use_spot_instances=args.spot,
        max_wait=(args.max_wait or 2 * args.max_run) if args.spot else None,
        checkpoint_s3_uri=args.checkpoint_s3_uri,
    )


def channels(args: argparse.Namespace) -> dict[str, str]:
    for name in ("train", "test"):
        uri = getattr(args, name)
        if uri and args.local and not uri.startswith("file://"):
            raise UserError(f"--{name} {uri}: local mode reads channels from file:// URIs")
    return {"train": args.train, **({"test": args.test} if args.test else {})}


def final_metrics(session, job_name: str, model_data: str) -> dict[str, float]:
    """SageMaker's FinalMetricDataList; in local mode (no CloudWatch) the metrics the model recorded."""
    if model_data.startswith("file://"):
        with tarfile.open(common.local_path(model_data)) as tar:
            member = tar.extractfile(METADATA_FILE)
            if member is None:
                raise UserError(f"{model_data}: no {METADATA_FILE}: not a model trained by this container")
            return ModelArtifact.from_bytes(member.read(), f"{model_data}:{METADATA_FILE}").metrics()
    description = session.sagemaker_client.describe_training_job(TrainingJobName=job_name)
    return {m["MetricName"]: m["Value"] for m in description.get("FinalMetricDataList", [])}


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m evaluation.train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_training_args(parser)
    parser.add_argument("--quiet", action="store_true", help="do not stream the job's logs")
    return parser


def run(args: argparse.Namespace) -> dict:
    session = common.open_session(args)
    estimator = build_estimator(args, session)
    estimator.fit(channels(args), logs="All" if not args.quiet else False)
    job_name = estimator.latest_training_job.name
    metrics = final_metrics(session, job_name, estimator.model_data)
    print(f"training job: {job_name}")
    print(f"model artifact: {estimator.model_data}")
    for name, value in sorted(metrics.items()):
        print(f"{name}: {value}")
    return {"job_name": job_name, "model_data": estimator.model_data, "metrics": metrics}


def main(argv: list[str] | None = None) -> dict:
    return run(parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(common.run_command(main))
