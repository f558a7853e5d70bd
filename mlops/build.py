"""python -m mlops build: upsert the gated training pipeline and start an execution, or with --local run
it here with the SDK's local pipeline session (real containers of our image; AWS calls to moto).

    python -m mlops build --local --lake file:///data/curated --image sagemaker-deepar:latest
    python -m mlops build --lake s3://lake/curated/readings/ --image <ecr-uri> --role <arn> --bucket <bucket>

The accuracy bar is the SSM parameter --threshold-parameter (created with --default-threshold when
missing). --local registers a model that passed through the registry API (local pipelines reject a
register step); on SageMaker the pipeline's own Register step does it. --warm-start-model auto (the
default) initialises the Train step from the production model, the newest Approved version of
--model-package-group, and starts cold when there is none (or its recorded network shape differs).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

from sagemaker_deepar.errors import UserError

from . import aws, registry
from .pipeline import EVALUATION_FILE, PIPELINE_NAME, Defaults, PipelineSettings, build_pipeline

LOCAL_IMAGE = "sagemaker-deepar:latest"
# What the Train step's job gets from this environment, so that it records its run in mlflow (docs/mlflow.md).
# Credentials (MLFLOW_TRACKING_TOKEN, ...) are not copied: a job's environment is readable in its description.
TRACKING_VARIABLES = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_REGISTERED_MODEL_NAME",
    "DEEPAR_MLFLOW_RETRY_SECONDS",
)
REGISTERED, REJECTED, STARTED = "registered", "rejected", "started"
AUTO, NONE = "auto", "none"  # --warm-start-model: the production model if there is one / random weights


@dataclass
class BuildResult:
    """What one build did: ``registered`` (passed, package ARN), ``rejected`` (the Fail step's reason),
    or ``started`` (an execution on SageMaker, its ARN)."""

    status: str
    threshold: float
    wql: Optional[float] = None
    rmse: Optional[float] = None
    model_package_arn: Optional[str] = None
    reason: Optional[str] = None
    execution_arn: Optional[str] = None
    model_data: Optional[str] = None
    seconds: float = 0.0
    steps: dict[str, str] = field(default_factory=dict)
    warm_start_model: Optional[str] = None  # the Train step's model channel; None: a cold start
    warm_start_package_arn: Optional[str] = None  # the production package it came from (auto)
    warm_start: str = ""  # which, and why, in one line

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class BuildSettings(PipelineSettings):
    """The ``build`` command's settings: one field per CLI flag (``settings_from``), the instance types,
    hyperparameters and registry names those of ``PipelineSettings``."""

    lake_uri: str
    local: bool = False
    image: Optional[str] = None
    workdir: Path = Path("mlops-build")
    role: Optional[str] = None
    bucket: Optional[str] = None
    pipeline_name: str = PIPELINE_NAME
    default_threshold: float = registry.DEFAULT_THRESHOLD
    # auto | none | an s3:// (or with --local a file://, a path) model.tar.gz or its folder; None is none
    warm_start_model: Optional[str] = AUTO


@dataclass(frozen=True)
class WarmStart:
    """What the Train step starts from: ``model`` (its model channel) or, when None, random weights."""

    model: Optional[str]
    package_arn: Optional[str]
    note: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    default = PipelineSettings()  # each flag's default is its setting's: declared once
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--lake", required=True, help="curated Parquet lake: s3:// prefix (or a folder/file:// with --local)"
    )
    parser.add_argument("--local", action="store_true", help="run here: local pipeline session, moto for AWS calls")
    parser.add_argument("--image", help=f"the image (default with --local: {LOCAL_IMAGE}; else an ECR URI)")
    parser.add_argument("--workdir", type=Path, default=Path("mlops-build"), help="--local: where each run writes")
    parser.add_argument(
        "--role", default=os.environ.get("SAGEMAKER_ROLE"), help="execution role ARN (env SAGEMAKER_ROLE)"
    )
    parser.add_argument(
        "--bucket", help="the SDK's bucket for code and step outputs (default: the SDK's default bucket)"
    )
    parser.add_argument("--pipeline-name", default=PIPELINE_NAME)
    parser.add_argument("--threshold-parameter", default=default.threshold_parameter, help="SSM parameter name")
    parser.add_argument(
        "--default-threshold", type=float, default=registry.DEFAULT_THRESHOLD, help="created if missing"
    )
    parser.add_argument("--model-package-group", default=default.model_package_group)
    parser.add_argument("--instance-type", default=default.instance_type, help="training")
    parser.add_argument("--transform-instance-type", default=default.transform_instance_type)
    parser.add_argument("--processing-instance-type", default=default.processing_instance_type)
    hp = parser.add_argument_group("hyperparameters")
    hp.add_argument("--time-freq", default=default.time_freq)
    hp.add_argument("--prediction-length", type=int, default=default.prediction_length)
    hp.add_argument("--context-length", type=int, default=default.context_length)
    hp.add_argument("--epochs", type=int, default=default.epochs)
    hp.add_argument("--num-batches-per-epoch", type=int, default=default.num_batches_per_epoch)
    hp.add_argument("--num-cells", type=int, default=default.num_cells)
    hp.add_argument("--num-layers", type=int, default=default.num_layers)
    parser.add_argument(
        "--warm-start-model",
        default=AUTO,
        metavar="{auto,none,URI}",
        help="the Train step's model channel: auto (default) = the newest Approved package of "
        "--model-package-group (cold start when none), none = cold start, or an s3:// URI of a "
        "model.tar.gz (with --local also file:// or a path)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")


def settings_from(args: argparse.Namespace) -> BuildSettings:
    names = {f for f in BuildSettings.__dataclass_fields__} - {"lake_uri"}
    return BuildSettings(lake_uri=args.lake, **{n: getattr(args, n) for n in names if hasattr(args, n)})


def run(args: argparse.Namespace) -> int:
    result = run_build(settings_from(args))
    if args.json:
        print(json.dumps(result.as_dict()))
    else:
        print(describe(result))
    return 2 if result.status == REJECTED else 0


def describe(result: BuildResult) -> str:
    warm = f"\n{result.warm_start}" if result.warm_start else ""
    if result.status == STARTED:
        return f"pipeline execution started: {result.execution_arn} (threshold {result.threshold}){warm}"
    measured = f"mean_wQuantileLoss {result.wql:.4f}, RMSE {result.rmse:.4f}, threshold {result.threshold}"
    if result.status == REGISTERED:
        registered = f"registered {result.model_package_arn} (PendingManualApproval)"
        return f"{registered}: {measured}, {result.seconds:.0f} s{warm}"
    return f"rejected: {result.reason} ({result.seconds:.0f} s){warm}"


def check_settings(settings: BuildSettings) -> None:
    if settings.prediction_length < 1 or settings.context_length < 1 or settings.epochs < 1:
        raise UserError("--prediction-length, --context-length and --epochs must be positive integers")
    if not settings.local and not settings.lake_uri.startswith("s3://"):
        raise UserError(f"--lake {settings.lake_uri}: SageMaker reads the lake from s3:// (or pass --local)")
    if not settings.local and not settings.image:
        raise UserError("no image: pass --image <account>.dkr.ecr.<region>.amazonaws.com/<name>:<tag>")
    if not settings.local and not settings.role:
        raise UserError("no execution role: pass --role arn:aws:iam::<account>:role/<role> or set SAGEMAKER_ROLE")
    model = settings.warm_start_model
    if not settings.local and model not in (None, AUTO, NONE) and not str(model).startswith("s3://"):
        raise UserError(
            f"--warm-start-model {model}: SageMaker reads the model from s3:// (or pass auto, none, or --local)"
        )


def resolve_warm_start(settings: BuildSettings, sagemaker_client: Any) -> WarmStart:
    """The model channel of this build: the explicit URI, none, or (auto) the production model of the
    group; auto without an approved version is a cold start, said so."""
    choice, group = settings.warm_start_model or NONE, settings.model_package_group
    if choice == NONE:
        return WarmStart(None, None, "cold start: --warm-start-model none")
    if choice != AUTO:
        return WarmStart(choice, None, f"warm start from {choice} (--warm-start-model)")
    production = registry.production_model(sagemaker_client, group)
    if production is None:
        return WarmStart(None, None, f"cold start: no approved model in {group}")
    arn, model_data, recorded = production
    differ = registry.shape_differences(recorded, network_hyperparameters(settings))
    if differ:  # the Train step would refuse it (sagemaker_deepar.training.warm_start): a new shape starts afresh
        return WarmStart(None, None, f"cold start: model package {arn} has another network shape ({', '.join(differ)})")
    if not settings.local and not model_data.startswith("s3://"):
        return WarmStart(None, None, f"cold start: model package {arn} holds {model_data}, not an s3:// model")
    return WarmStart(model_data, arn, f"warm start from {model_data} (model package {arn})")


def network_hyperparameters(settings: BuildSettings) -> dict[str, str]:
    """The hyperparameters this build sets that shape the network: a warm start must match them (the
    pipeline's Register step records the same names)."""
    return {
        "time_freq": settings.time_freq,
        "prediction_length": str(settings.prediction_length),
        "context_length": str(settings.context_length),
        "num_cells": str(settings.num_cells),
        "num_layers": str(settings.num_layers),
    }


def local_model_channel(model: str, folder: Path, named: str = "--warm-start-model") -> str:
    """The model channel as local mode mounts it: a file:// input is its whole folder, and a model's
    output folder also holds extracted files and output.tar.gz, so a model.tar.gz is copied alone into
    ``folder``; an s3:// URI (moto) or a folder is used as it is."""
    if model.startswith("s3://"):
        return model
    path = Path(model.removeprefix("file://")).resolve()
    if path.is_dir():
        return f"file://{path}"
    if not path.is_file():
        raise UserError(f"{named} {model}: no such file or folder (--warm-start-model none starts cold)")
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(path, folder / "model.tar.gz")
    return f"file://{folder}"


def run_build(settings: BuildSettings) -> BuildResult:
    """Run (--local) or start the gated training pipeline; the library entry point of ``build``."""
    check_settings(settings)
    aws.quiet_logs()
    aws.validate_sdk_config_once()
    if settings.local:
        with aws.moto_server():
            return _run_local(settings)
    return _upsert_and_start(settings)


def read_threshold(settings: BuildSettings) -> float:
    return registry.threshold(aws.client("ssm"), settings.threshold_parameter, settings.default_threshold)


def execution_parameters(settings: BuildSettings, threshold: float) -> dict[str, Any]:
    return {
        "LakeUri": settings.lake_uri,
        "AccuracyThreshold": threshold,
        "ThresholdParameterName": settings.threshold_parameter,
    }


def tracking_environment(env: Any = os.environ, local: bool = False) -> dict[str, str]:
    """The MLFLOW_* settings the Train step passes to its job (none without MLFLOW_TRACKING_URI).

    A local build's containers cannot reach this machine's loopback: such a URI is passed as is (the job
    then records why nothing was tracked in mlflow.json) and said here, with the command that works.
    """
    if not env.get("MLFLOW_TRACKING_URI", "").strip():
        return {}
    passed = {name: env[name] for name in TRACKING_VARIABLES if env.get(name, "").strip()}
    host = urlparse(passed["MLFLOW_TRACKING_URI"].strip()).hostname or ""
    if local and (host in ("localhost", "::1") or host.startswith("127.")):
        print(
            f"[build] MLFLOW_TRACKING_URI={passed['MLFLOW_TRACKING_URI']} is this machine's loopback, which the "
            "training container cannot reach: start the server with `python -m mlflow_local --docker` and use "
            "the URI it prints",
            flush=True,
        )
    return passed


def _defaults(
    settings: BuildSettings, image: str, output_uri: str, threshold: float, warm_start_model: Optional[str]
) -> Defaults:
    shared = {f.name: getattr(settings, f.name) for f in fields(PipelineSettings)}
    if settings.local:  # a local pipeline runs every step in a container here
        shared.update(dict.fromkeys(("instance_type", "transform_instance_type", "processing_instance_type"), "local"))
    return Defaults(
        **shared,
        lake_uri=settings.lake_uri,
        image=image,
        output_uri=output_uri,
        threshold=threshold,
        warm_start_model=warm_start_model,
        training_environment=tracking_environment(os.environ, settings.local),
    )


def _upsert_and_start(settings: BuildSettings) -> BuildResult:
    """SageMaker (or moto with AWS_ENDPOINT_URL): upsert the definition, start one execution."""
    from sagemaker.workflow.pipeline_context import PipelineSession

    started = time.monotonic()
    if aws.endpoint_url():
        aws.offline_credentials()
    session = aws.boto_session()
    bucket = settings.bucket or ("mlops-artifacts" if aws.endpoint_url() else None)
    if bucket and aws.endpoint_url():
        aws.ensure_bucket(bucket)  # moto starts empty; on AWS the bucket is yours and exists
    pipeline_session = PipelineSession(
        boto_session=session, sagemaker_client=aws.client("sagemaker", session), default_bucket=bucket
    )
    threshold = read_threshold(settings)
    registry.ensure_group(aws.client("sagemaker", session), settings.model_package_group)
    warm = resolve_warm_start(settings, aws.client("sagemaker", session))
    output_uri = f"s3://{pipeline_session.default_bucket()}/mlops/{settings.pipeline_name}"
    image = settings.image or ""
    pipeline = build_pipeline(
        _defaults(settings, image, output_uri, threshold, warm.model), pipeline_session, str(settings.role),
        local=False, name=settings.pipeline_name,
    )  # fmt: skip
    pipeline.upsert(role_arn=str(settings.role), description="DeepAR: lake -> train -> evaluate -> gated register")
    execution = pipeline.start(parameters=execution_parameters(settings, threshold))
    return BuildResult(
        status=STARTED, threshold=threshold, execution_arn=execution.arn, seconds=time.monotonic() - started,
        warm_start_model=warm.model, warm_start_package_arn=warm.package_arn, warm_start=warm.note,
    )  # fmt: skip


class _Tee(io.TextIOBase):
    """stdout that also keeps the lines: local mode streams each container's output through
    sys.stdout, and a failed step's own ``error:`` line is the only place its reason is said."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.lines = stream, []  # type: ignore[var-annotated]

    def write(self, text: str) -> int:
        self.lines.extend(line for line in text.splitlines() if "error: " in line)
        return int(self.stream.write(text))

    def flush(self) -> None:
        self.stream.flush()


def _quiet_container_threads(hook: Any) -> None:
    """The SDK streams a local serving container from a thread that ends in a traceback when the
    container stops early; the failed step already says why (one line), so keep the traceback for
    DEEPAR_MLOPS_DEBUG."""
    if os.environ.get("DEEPAR_MLOPS_DEBUG") or "Failed to run" not in str(hook.exc_value):
        threading.__excepthook__(hook)


def _containers(image: str) -> set[str]:
    """Stopped containers of the image: what local mode leaves behind. Running ones are never
    touched, since they may be another build's steps or a local endpoint."""
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"ancestor={image}", "--filter", "status=exited"],
        capture_output=True,
        text=True,
    )
    return set(out.stdout.split())


def _run_local(settings: BuildSettings) -> BuildResult:
    from sagemaker.workflow.pipeline_context import LocalPipelineSession

    started = time.monotonic()
    image = settings.image or LOCAL_IMAGE
    run_dir = (settings.workdir / (time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6])).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    lake = (
        settings.lake_uri
        if settings.lake_uri.startswith(("s3://", "file://"))
        else f"file://{Path(settings.lake_uri).resolve()}"
    )
    settings = BuildSettings(**{**asdict(settings), "lake_uri": lake})
    threshold = read_threshold(settings)
    warm = resolve_warm_start(settings, aws.client("sagemaker"))
    named = f"model package {warm.package_arn}: model data" if warm.package_arn else "--warm-start-model"
    channel = local_model_channel(warm.model, run_dir / "warm-start", named) if warm.model else None
    warmed: dict[str, Any] = {
        "warm_start_model": channel,
        "warm_start_package_arn": warm.package_arn,
        "warm_start": warm.note,
    }
    print(f"[build] {warm.note}", flush=True)
    session = LocalPipelineSession(default_bucket=settings.bucket or "mlops-artifacts")
    # the Forecast step's serving container listens on this host port: never a fixed 8080 that a
    # parallel build or a local endpoint may hold
    session.config = {"local": {"local_code": True, "serving_port": aws.free_port()}}
    pipeline = build_pipeline(
        _defaults(settings, image, f"file://{run_dir}", threshold, channel), session,
        settings.role or aws.LOCAL_ROLE, local=True, name=settings.pipeline_name,
    )  # fmt: skip
    before = _containers(image)
    pipeline.create(role_arn=settings.role or aws.LOCAL_ROLE)
    tee = _Tee(sys.stdout)
    previous, sys.stdout = sys.stdout, tee  # type: ignore[assignment]
    previous_hook, threading.excepthook = threading.excepthook, _quiet_container_threads
    try:
        execution = pipeline.start(parameters=execution_parameters(settings, threshold))
    finally:
        sys.stdout, threading.excepthook = previous, previous_hook
        leftover = sorted(_containers(image) - before)
        if leftover:  # local mode leaves each job's stopped container behind
            subprocess.run(["docker", "rm", "-f", *leftover], capture_output=True)
    listed = execution.list_steps()["PipelineExecutionSteps"]
    steps = {step["StepName"]: step["StepStatus"] for step in listed}
    failures = {step["StepName"]: step.get("FailureReason", "") for step in listed if step["StepStatus"] == "Failed"}
    evaluation = _read_evaluation(execution)
    seconds = time.monotonic() - started
    if "Fail" in failures:  # the condition sent it to the Fail step: a measured, rejected model
        wql, rmse = evaluation or (None, None)
        return BuildResult(
            REJECTED, threshold, wql, rmse, reason=failures["Fail"], seconds=seconds, steps=steps, **warmed
        )
    if failures:
        step, reason = next(iter(failures.items()))
        said = next((line.split("error: ", 1)[1].strip() for line in reversed(tee.lines)), None)
        raise UserError(f"pipeline step {step} failed: {said or reason} (run folder {run_dir})")
    if evaluation is None:
        raise UserError(f"the pipeline ended {steps} without {EVALUATION_FILE} (run folder {run_dir})")
    wql, rmse = evaluation
    model_data = _step_properties(execution, "Train")["ModelArtifacts"]["S3ModelArtifacts"]
    arn = registry.register(
        aws.client("sagemaker"),
        settings.model_package_group,
        image,
        model_data,
        {"mean_wQuantileLoss": wql, "RMSE": rmse},
        evaluation_uri=_evaluation_uri(execution),
        hyperparameters=network_hyperparameters(settings),
    )
    return BuildResult(
        REGISTERED, threshold, wql, rmse, model_package_arn=arn, model_data=model_data,
        seconds=time.monotonic() - started, steps=steps, **warmed,
    )  # fmt: skip


def _step_properties(execution: Any, step: str) -> dict[str, Any]:
    """What a local step's job description says (its outputs' URIs); the local execution keeps them."""
    return dict(execution.step_execution[step].properties or {})


def _evaluation_uri(execution: Any) -> str:
    outputs = _step_properties(execution, "Evaluate")["ProcessingOutputConfig"]["Outputs"]
    # local executions key the outputs by name (SageMaker's describe answers a list)
    named = outputs if isinstance(outputs, dict) else {o["OutputName"]: o for o in outputs}
    folder = named["evaluation"]["S3Output"]["S3Uri"]
    return f"{folder.rstrip('/')}/{EVALUATION_FILE}"


def read_uri(uri: str) -> bytes:
    if uri.startswith("s3://"):
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        return bytes(aws.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read())
    return Path(uri.removeprefix("file://")).read_bytes()


def _read_evaluation(execution: Any) -> Optional[tuple[float, float]]:
    if execution.step_execution.get("Evaluate") is None or not execution.step_execution["Evaluate"].properties:
        return None
    uri = _evaluation_uri(execution)
    return parse_evaluation(read_uri(uri), uri)


def parse_evaluation(document: bytes, where: str) -> tuple[float, float]:
    """(mean_wQuantileLoss, RMSE) of an evaluation.json; not finite numbers are an error naming the file."""
    metrics = registry.evaluation_metrics(document, where)
    try:
        wql, rmse = metrics["mean_wQuantileLoss"], metrics["RMSE"]
    except KeyError as error:
        raise UserError(f"{where}: not an evaluation document ({error})") from None
    if not (math.isfinite(wql) and math.isfinite(rmse)):
        raise UserError(f"{where}: mean_wQuantileLoss {wql}, RMSE {rmse}: the evaluation is not a number")
    return wql, rmse
