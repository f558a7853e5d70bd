"""python -m mlops demo --local: the whole retraining loop offline, on the bundled sample data.

    python -m mlops demo --local [--workdir DIR] [--image sagemaker-deepar:latest] [--level-shift 100]

build -> register -> approve -> staging -> promote -> prod -> monitor (healthy) -> drift (a level shift
in the new actuals) -> monitor (breach: the pipeline's start is recorded) -> retrain (the local run of
that pipeline, since moto never runs one) -> version 2 registered. Prints a timeline (step, status,
seconds, metric). Every AWS call goes to a moto server (AWS_ENDPOINT_URL's, left with its state, or one
started here and stopped at the end); the endpoints' containers are removed on success, failure and
Ctrl-C alike. Exit status: 0 when version 2 is registered, 2 when a step did not reach its outcome.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

from sagemaker_deepar.contract import record_inputs

from . import aws, registry
from .build import LOCAL_IMAGE, NONE, REGISTERED, BuildResult, BuildSettings, run_build
from .deploy import deploy_to_staging, stage_endpoint
from .endpoints import LocalEndpoints
from .events import approve
from .monitor import monitor_once
from .promote import promote

NAME = "deepar-demo"
GROUP = "deepar-demo-models"
PIPELINE = "deepar-demo-build"
THRESHOLD_PARAMETER = "/mlops/demo/wql-threshold"
QUANTILES = ["0.1", "0.5", "0.9"]


@dataclass
class Step:
    step: str
    status: str
    seconds: float
    metric: str = ""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--local", action="store_true", required=True, help="offline: moto + containers (required)")
    parser.add_argument("--image", default=LOCAL_IMAGE)
    parser.add_argument("--workdir", type=Path, help="where the lakes, runs and endpoints go (default: a temp dir)")
    parser.add_argument("--days", type=int, default=6, help="days of hourly sample data in the lake")
    parser.add_argument("--level-shift", type=float, default=300.0, help="the drift added to the new actuals")
    parser.add_argument(
        "--default-threshold", type=float, default=1.0, help="the first model's bar (mean_wQuantileLoss)"
    )
    parser.add_argument(
        "--alert-margin",
        type=float,
        default=1.25,
        help="monitor alerts above margin x the served model's wQL (sampling noise of one forecast window)",
    )
    parser.add_argument("--epochs", type=int, default=10, help="enough for the model to learn the series' level")
    parser.add_argument("--num-batches-per-epoch", type=int, default=20)
    parser.add_argument(
        "--cold-start",
        dest="warm_start",
        action="store_false",
        help="retrain from random weights (default: from the production model's, through the Train step's model channel)",
    )
    parser.add_argument("--json", action="store_true", help="also print the timeline as one JSON line")


def run(args: argparse.Namespace) -> int:
    if args.workdir is None:
        with tempfile.TemporaryDirectory(prefix="mlops-demo-") as tmp:
            return _run(args, Path(tmp))
    args.workdir.mkdir(parents=True, exist_ok=True)
    return _run(args, args.workdir.resolve())


def _run(args: argparse.Namespace, workdir: Path) -> int:
    timeline: list[Step] = []
    aws.quiet_logs()
    try:
        with aws.moto_server():
            endpoints = LocalEndpoints(workdir / "endpoints", ready_timeout=300)
            try:
                ok = _loop(args, workdir, endpoints, timeline)
            finally:
                endpoints.delete_all()  # also on failure and Ctrl-C: no container outlives the demo
    finally:
        print(format_timeline(timeline), flush=True)
        if args.json:
            print(json.dumps([vars(step) for step in timeline]), flush=True)
    return 0 if ok else 2


def _timed(timeline: list[Step], name: str, action: Callable[[], tuple[str, str]]) -> str:
    started = time.monotonic()
    try:
        status, metric = action()
    except BaseException as error:
        timeline.append(Step(name, "failed", time.monotonic() - started, str(error).splitlines()[0][:120]))
        raise
    timeline.append(Step(name, status, time.monotonic() - started, metric))
    print(f"[demo] {name}: {status} {metric}", flush=True)
    return status


def _build_settings(args: argparse.Namespace, lake: Path, workdir: Path) -> BuildSettings:
    return BuildSettings(
        lake_uri=str(lake), local=True, image=args.image, workdir=workdir / "runs", pipeline_name=PIPELINE,
        threshold_parameter=THRESHOLD_PARAMETER, default_threshold=args.default_threshold,
        model_package_group=GROUP, prediction_length=12, context_length=24, epochs=args.epochs,
        num_batches_per_epoch=args.num_batches_per_epoch, num_cells=8, num_layers=1,
    )  # fmt: skip


def _loop(args: argparse.Namespace, workdir: Path, endpoints: LocalEndpoints, timeline: list[Step]) -> bool:
    from .lake import write_sample_lake

    sagemaker, ssm, s3 = aws.client("sagemaker"), aws.client("ssm"), aws.client("s3")
    cloudwatch = aws.client("cloudwatch")
    lake = write_sample_lake(workdir / "lake", days=args.days)
    settings = _build_settings(args, lake, workdir)
    registry.ensure_group(sagemaker, GROUP)
    # moto records a pipeline's executions but never runs them: the definition only needs to exist
    # for monitor to start it (with the gate's parameters, which it passes the current bar through);
    # the demo then performs that run locally.
    gate = [
        {"Name": "AccuracyThreshold", "Type": "Float", "DefaultValue": args.default_threshold},
        {"Name": "ThresholdParameterName", "Type": "String", "DefaultValue": THRESHOLD_PARAMETER},
    ]
    sagemaker.create_pipeline(
        PipelineName=PIPELINE,
        PipelineDefinition=json.dumps({"Version": "2020-12-01", "Parameters": gate, "Steps": []}),
        RoleArn=aws.LOCAL_ROLE,
    )
    built: dict[str, BuildResult] = {}

    def build(key: str, lake_settings: BuildSettings) -> tuple[str, str]:
        built[key] = result = run_build(lake_settings)
        return result.status, _wql(result.wql, result.threshold)

    if _timed(timeline, "build", lambda: build("v1", settings)) != REGISTERED:
        return False
    v1 = built["v1"]
    _timed(timeline, "register", lambda: ("v" + _version(v1.model_package_arn), _arn_tail(v1.model_package_arn)))
    _timed(timeline, "approve", lambda: (approve(sagemaker, str(v1.model_package_arn), "demo").approval, ""))

    def rollout(stage: str) -> tuple[str, str]:
        if stage == "staging":
            done = deploy_to_staging(sagemaker, ssm, endpoints, str(v1.model_package_arn), NAME, THRESHOLD_PARAMETER)
            return "InService", f"threshold {done.threshold_before:g} -> {done.threshold_after:g}"
        done = promote(sagemaker, ssm, endpoints, str(v1.model_package_arn), NAME, "demo", THRESHOLD_PARAMETER)
        return "InService", endpoints.url(done.endpoint)

    _timed(timeline, "staging", lambda: rollout("staging"))
    _timed(timeline, "prod", lambda: rollout("prod"))

    forecasts = workdir / "forecasts" / "prod.jsonl"
    alert_parameter = THRESHOLD_PARAMETER + "-alert"
    bar = registry.threshold(ssm, THRESHOLD_PARAMETER, args.default_threshold)
    ssm.put_parameter(Name=alert_parameter, Value=f"{bar * args.alert_margin:.6g}", Type="String", Overwrite=True)

    def monitor(key: str) -> tuple[str, str]:
        if not forecasts.exists():
            _store_forecasts(endpoints.url(stage_endpoint(NAME, "prod")), s3, forecasts)
        result = monitor_once(
            forecasts=str(forecasts.parent), lake=str(lake), pipeline=PIPELINE, threshold_parameter=alert_parameter,
            endpoint=stage_endpoint(NAME, "prod"), group=GROUP, sagemaker=sagemaker, ssm=ssm,
            cloudwatch=cloudwatch, s3=s3,
        )  # fmt: skip
        monitored[key] = result
        metric = _wql(result.wql, result.threshold)
        return result.status, metric + (
            f", execution {_arn_tail(result.execution_arn)}" if result.execution_arn else ""
        )

    monitored: dict[str, Any] = {}
    if _timed(timeline, "monitor", lambda: monitor("healthy")) != "healthy":
        return False

    def drift() -> tuple[str, str]:
        # the new actuals arrive level-shifted: the lake the monitor and the retrain read
        import shutil

        shutil.rmtree(lake)
        write_sample_lake(lake, days=args.days, level_shift=args.level_shift)
        return "injected", f"level shift +{args.level_shift:g}"

    _timed(timeline, "drift", drift)
    if _timed(timeline, "monitor", lambda: monitor("breach")) != "retrain-started":
        return False
    # the execution monitor started on (moto's) SageMaker is the record; the run happens here, gated by
    # the current bar, initialised from the production model unless --cold-start
    retrain = (
        replace(settings, warm_start_model=_warm_start_channel(v1.model_data, workdir / "warm-start"))
        if args.warm_start
        else replace(settings, warm_start_model=NONE)
    )
    if _timed(timeline, "retrain", lambda: build("v2", retrain)) != REGISTERED:
        return False
    v2 = built["v2"]
    return (
        _timed(timeline, "register", lambda: ("v" + _version(v2.model_package_arn), _arn_tail(v2.model_package_arn)))
        == "v2"
    )


def _warm_start_channel(model_data: Optional[str], folder: Path) -> str:
    """A folder holding only the production model's model.tar.gz: local mode mounts a file:// input's
    folder, and the model's own output folder also holds extracted files and output.tar.gz."""
    import shutil

    if not model_data or not model_data.startswith("file://"):
        raise RuntimeError(f"the production model {model_data} is not a local artifact")
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(model_data.removeprefix("file://"), folder / "model.tar.gz")
    return f"file://{folder}"


def _store_forecasts(url: str, s3: Any, target: Path) -> None:
    """Ask the prod endpoint to forecast every series of the first build's train channel (the lake
    minus its held-out points, which the Prepare step wrote to the artifacts bucket): what a
    production job stores and the monitor scores."""
    import requests

    bucket = "mlops-artifacts"
    keys = [
        item["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for item in page.get("Contents", [])
        if "/train/" in item["Key"] and item["Key"].endswith((".json", ".jsonl"))
    ]
    if not keys:
        raise RuntimeError(f"no train channel in s3://{bucket} to forecast from")
    body = s3.get_object(Bucket=bucket, Key=sorted(keys)[0])["Body"].read().decode()
    series = [json.loads(line) for line in body.splitlines() if line.strip()]
    instances = [record_inputs(s) for s in series]
    request = {"instances": instances, "configuration": {"output_types": ["mean", "quantiles"], "quantiles": QUANTILES}}
    response = requests.post(url + "/invocations", json=request, timeout=300)
    response.raise_for_status()
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w") as out:
        for instance, prediction in zip(series, response.json()["predictions"]):
            start = _after(instance["start"], len(instance["target"]))
            out.write(json.dumps({"item_id": instance["item_id"], "start": start, **prediction}) + "\n")


def _after(start: str, points: int) -> str:
    import pandas as pd

    return str(pd.Timestamp(start) + pd.Timedelta(hours=points))


def _version(arn: Optional[str]) -> str:
    return str(arn).rsplit("/", 1)[-1]


def _arn_tail(arn: Optional[str]) -> str:
    return str(arn).split(":", 5)[-1]


def _wql(wql: Optional[float], threshold: float) -> str:
    return f"wQL {wql:.4f} / bar {threshold:g}" if wql is not None else f"bar {threshold:g}"


def format_timeline(timeline: list[Step]) -> str:
    rows = [("step", "status", "seconds", "metric")]
    rows += [(s.step, s.status, f"{s.seconds:.1f}", s.metric) for s in timeline]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(
        f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]}".rstrip() for row in rows
    )
