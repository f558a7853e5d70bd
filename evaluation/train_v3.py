"""train.py's equivalent on the SageMaker Python SDK v3: a `ModelTrainer` with the image.

Same flags as train.py (hyperparameters file + --hp, channels, instance, spot + checkpoints); the
metric definitions go in with `with_metric_definitions`. Runs in .venv-sdk3
(evaluation/requirements-v3.lock). --local trains in a local container (v3's LOCAL_CONTAINER mode;
the image trains because SageMaker writes resourceconfig.json, see the README). --dry-run prints the
CreateTrainingJob request and sends nothing.

    .venv-sdk3/bin/python -m evaluation.train_v3 --image <ecr-uri> --role <arn> --train s3://b/d/train \\
        --test s3://b/d/test --output-path s3://b/deepar/output
    .venv-sdk3/bin/python -m evaluation.train_v3 --local --train /tmp/eval/data/train --local-root /tmp/v3
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from sagemaker_deepar.contract import ModelArtifact
from sagemaker_deepar.errors import UserError

from . import common
from . import train as train_v2


class DryRunDone(Exception):
    """Raised in place of sending CreateTrainingJob."""


def intercept_create(boto_session) -> list[dict]:
    """Keep CreateTrainingJob's parameters and stop before sending (botocore event hooks)."""
    captured: list[dict] = []

    def stop(**_):
        raise DryRunDone()

    boto_session.events.register(
        "before-parameter-build.sagemaker.CreateTrainingJob", lambda params, **_: captured.append(dict(params))
    )
    boto_session.events.register("before-call.sagemaker.CreateTrainingJob", stop)
    return captured


def build_trainer(args: argparse.Namespace):
    from sagemaker.core.shapes import MetricDefinition
    from sagemaker.core.training.configs import CheckpointConfig, Compute, OutputDataConfig, StoppingCondition
    from sagemaker.train.model_trainer import Mode, ModelTrainer

    from sagemaker_deepar.training.metrics import METRIC_DEFINITIONS

    if args.spot and (args.local or not args.checkpoint_s3_uri):
        raise UserError("--spot needs SageMaker and --checkpoint-s3-uri")
    if args.local:
        common.local_environment()
        from sagemaker.core.local import LocalSession

        session, mode = LocalSession(), Mode.LOCAL_CONTAINER
        compute = Compute(instance_type="local_cpu", instance_count=args.instance_count)
    else:
        import boto3
        from sagemaker.core.helper.session_helper import Session

        session, mode = Session(boto_session=boto3.Session(region_name=args.region)), Mode.SAGEMAKER_TRAINING_JOB
        compute = Compute(
            instance_type=args.instance_type,
            instance_count=args.instance_count,
            **({"enable_managed_spot_training": True} if args.spot else {}),
        )
    extra = {}
    if args.output_path and not args.local:
        extra["output_data_config"] = OutputDataConfig(s3_output_path=args.output_path)
    if args.checkpoint_s3_uri:
        extra["checkpoint_config"] = CheckpointConfig(s3_uri=args.checkpoint_s3_uri, local_path="/opt/ml/checkpoints")
    trainer = ModelTrainer(
        training_image=common.default_image(args),
        training_mode=mode,
        role=common.execution_role(args),
        sagemaker_session=session,
        compute=compute,
        base_job_name=args.base_job_name,
        hyperparameters=train_v2.hyperparameters(args),
        stopping_condition=StoppingCondition(
            max_runtime_in_seconds=args.max_run,
            **({"max_wait_time_in_seconds": args.max_wait or 2 * args.max_run} if args.spot else {}),
        ),
        **({"local_container_root": str(args.local_root)} if args.local else {}),
        **extra,
    )
    trainer.with_metric_definitions([MetricDefinition(name=m["Name"], regex=m["Regex"]) for m in METRIC_DEFINITIONS])
    return trainer, session


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    train_v2.add_training_args(parser)
    parser.add_argument(
        "--local-root",
        type=Path,
        default=Path("deepar-eval/v3"),
        help="--local: the job's folder (model/, compressed_artifacts/ end up here)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the CreateTrainingJob request; send nothing")
    parser.add_argument("--quiet", action="store_true", help="do not stream the job's logs")
    args = parser.parse_args(argv)
    from sagemaker.core.training.configs import InputData

    if args.dry_run:  # v3 checks the role with IAM's policy simulator before building the request
        os.environ.setdefault("SAGEMAKER_VALIDATE_ROLE", "false")
    channels = train_v2.channels(args)
    if args.local:  # v3 local mode takes plain folders
        channels = {name: str(common.local_path(uri)) for name, uri in channels.items()}
    trainer, session = build_trainer(args)
    inputs = [InputData(channel_name=name, data_source=uri) for name, uri in channels.items()]
    if args.dry_run:
        if args.local:
            raise UserError("--dry-run shows a SageMaker request: drop --local")
        captured = intercept_create(session.boto_session)
        try:
            trainer.train(input_data_config=inputs, wait=False, logs=False)
        except DryRunDone:
            pass
        print(json.dumps(captured[0], indent=2, default=str))
        return {"request": captured[0]}
    trainer.train(input_data_config=inputs, wait=True, logs=not args.quiet)
    if args.local:
        model_data = f"file://{(args.local_root / 'compressed_artifacts' / 'model.tar.gz').resolve()}"
        metrics = ModelArtifact.read(args.local_root / "model").metrics()
        job_name = "local"
    else:
        job = trainer._latest_training_job  # noqa: SLF001 - v3 keeps the job here; no public accessor yet
        job.refresh()
        job_name, model_data = job.training_job_name, job.model_artifacts.s3_model_artifacts
        metrics = {m.metric_name: m.value for m in (job.final_metric_data_list or [])}
    print(f"training job: {job_name}")
    print(f"model artifact: {model_data}")
    for name, value in sorted(metrics.items()):
        print(f"{name}: {value}")
    return {"job_name": job_name, "model_data": model_data, "metrics": metrics}


if __name__ == "__main__":
    raise SystemExit(common.run_command(main))
