"""python -m mlops monitor: one scoring run of the production model (an EventBridge schedule triggers it).

    python -m mlops monitor --forecasts s3://B/forecasts/ --lake s3://B/readings/ --pipeline P \\
        [--from-queue URL] [--target particulate_matter] [--time-freq H] [--name N] [--threshold-parameter P]

With --from-queue it runs only when the schedule rule's SQS target (mlops/template.yaml) holds a
trigger, and deletes the triggers once the run completed.

Reads the production forecasts stored as JSON Lines (one per series: item_id, start, mean, quantiles —
what batch transform or the endpoint answered, plus the series' item_id) and the actuals that arrived
since from the curated Parquet lake (device_id, timestamp, one column per pollutant; an item_id
"device/pollutant" names its column, else --target). Scores them as the built-in does
(sagemaker_deepar.training.metrics.score_forecasts), publishes mean_wQuantileLoss and RMSE to CloudWatch
(namespace DeepAR/MLOps, dimension Endpoint=<name>-prod) and, when mean_wQuantileLoss exceeds the SSM
threshold, starts the build pipeline — once: not while an execution is Executing, nor while one that
succeeded after the newest registered package awaits its model's approval.
Exit status: 0 healthy or no actuals yet, 2 breach (retrain started or already running), 1 error.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from sagemaker_deepar.contract import (
    ContractError,
    PeriodMeans,
    TimeFreq,
    UnsafePathError,
    iter_jsonl,
    key_path,
    parse_time_freq,
    period_means,
)
from sagemaker_deepar.training.metrics import score_forecasts

from . import registry
from .events import WQL, LoopError, now, read_threshold

NAMESPACE = "DeepAR/MLOps"


@dataclass(frozen=True)
class MonitorResult:
    status: str  # "healthy" | "no-data" | "retrain-started" | "retrain-running"
    wql: Optional[float]
    rmse: Optional[float]
    threshold: float
    points: int  # forecast points that had an actual
    execution_arn: Optional[str] = None
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def breached(self) -> bool:
        return self.status in ("retrain-started", "retrain-running")


# --- inputs --------------------------------------------------------------------------------------


def local_copy(uri: str, folder: Path, s3: Any, suffixes: tuple[str, ...]) -> Path:
    """An s3:// prefix downloaded into ``folder`` (only ``suffixes``), or the local path itself."""
    if not uri.startswith("s3://"):
        path = Path(uri.removeprefix("file://"))
        if not path.exists():
            raise LoopError(f"{uri}: no such file or folder")
        return path
    bucket, _, prefix = uri[5:].partition("/")
    found = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            if item["Key"].endswith(suffixes):
                try:  # a key such as forecasts/../../x must not write outside the work folder (#23 item 3)
                    target = key_path(folder, item["Key"], prefix)
                except UnsafePathError as error:
                    raise LoopError(f"{uri}: {error}") from None
                target.parent.mkdir(parents=True, exist_ok=True)
                s3.download_file(bucket, item["Key"], str(target))
                found += 1
    if not found:
        raise LoopError(f"{uri}: no {'/'.join(suffixes)} objects under this prefix")
    return folder


def read_forecasts(path: Path) -> list[tuple[str, dict]]:
    """(where, forecast) for every line of every JSON Lines file under ``path``."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    forecasts = []
    for file in files:
        for line, record in iter_jsonl(file):
            where = f"{file}:{line}"
            if not isinstance(record, dict) or not {"item_id", "start", "mean", "quantiles"} <= record.keys():
                raise LoopError(f"{where}: a stored forecast needs item_id, start, mean and quantiles")
            forecasts.append((where, record))
    if not forecasts:
        raise LoopError(f"{path}: no stored forecasts")
    return forecasts


def read_actuals(lake: Path, columns: set[str], freq: TimeFreq) -> dict[str, PeriodMeans]:
    """Per device, the lake's ``columns`` (in sorted order) averaged per period of ``freq``."""
    import pandas as pd

    try:
        frame = pd.read_parquet(lake, columns=["device_id", "timestamp", *sorted(columns)])
    except (OSError, ValueError, KeyError) as error:
        raise LoopError(f"lake {lake}: {error}") from None
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True).dt.tz_localize(None)
    frame["device_id"] = frame["device_id"].astype(str)
    grids = {}
    for device, readings in frame.groupby("device_id"):
        try:
            grids[str(device)] = period_means(
                readings["timestamp"].to_numpy(), readings[sorted(columns)].to_numpy(float), freq
            )
        except ContractError as error:
            raise LoopError(f"lake {lake}: device {device}: {error}") from None
    return grids


def align(forecasts: list[tuple[str, dict]], lake: Path, target: str, time_freq: str):
    """(actuals, means, {q: quantiles}) arrays of shape (series, prediction_length); NaN = no actual yet.

    Forecast and actuals meet as periods of the contract's grid (issue #23 item 5: matching month-end
    or Sunday resampling labels against period starts once left M and W series unscored): a forecast's
    point ``i`` is the ``i``-th period from the one its ``start`` falls in."""

    def column(item_id: str) -> tuple[str, str]:
        device, _, pollutant = item_id.partition("/")
        return device, pollutant or target

    try:
        freq = parse_time_freq(time_freq, "--time-freq")
    except ContractError as error:
        raise LoopError(str(error)) from None
    columns = sorted({column(f["item_id"])[1] for _, f in forecasts})
    grids = read_actuals(lake, set(columns), freq)
    quantile_names = sorted(forecasts[0][1]["quantiles"], key=float)
    actuals: list[np.ndarray] = []
    means: list[np.ndarray] = []
    bands: dict[float, list[np.ndarray]] = {float(q): [] for q in quantile_names}
    length = len(forecasts[0][1]["mean"])
    for where, forecast in forecasts:
        if len(forecast["mean"]) != length or sorted(forecast["quantiles"], key=float) != quantile_names:
            raise LoopError(f"{where}: every forecast must have {length} points and quantiles {quantile_names}")
        device, pollutant = column(str(forecast["item_id"]))
        try:
            first = freq.ordinal_of(forecast["start"], f"{where}: start")
        except ContractError as error:
            raise LoopError(str(error)) from None
        grid = grids.get(device)
        observed = grid.window(first, length, columns.index(pollutant)) if grid is not None else np.full(length, np.nan)
        actuals.append(observed)
        means.append(np.asarray(forecast["mean"], dtype=float))
        for q in quantile_names:
            bands[float(q)].append(np.asarray(forecast["quantiles"][q], dtype=float))
    return np.array(actuals), np.array(means), {q: np.array(v) for q, v in bands.items()}


# --- the retrain trigger -------------------------------------------------------------------------


def running_retrain(sagemaker: Any, pipeline: str, group: Optional[str]) -> Optional[str]:
    """The execution a new one would duplicate: one Executing, or (when ``group`` is given) the newest
    one that Succeeded after the group's newest package was registered — its model is on the way
    (moto marks executions Succeeded at once and never registers anything: this keeps it to one)."""
    executions = sagemaker.list_pipeline_executions(
        PipelineName=pipeline, SortBy="CreationTime", SortOrder="Descending", MaxResults=10
    ).get("PipelineExecutionSummaries", [])
    for execution in executions:
        if execution.get("PipelineExecutionStatus") in ("Executing", "Stopping"):
            return execution["PipelineExecutionArn"]
    if group and executions and executions[0].get("PipelineExecutionStatus") == "Succeeded":
        packages = sagemaker.list_model_packages(
            ModelPackageGroupName=group, SortBy="CreationTime", SortOrder="Descending", MaxResults=1
        ).get("ModelPackageSummaryList", [])
        if not packages or packages[0]["CreationTime"] < executions[0]["StartTime"]:
            return executions[0]["PipelineExecutionArn"]
    return None


NETWORK_HYPERPARAMETERS = ("time_freq", "prediction_length", "context_length", "num_cells", "num_layers")


def start_retrain(
    sagemaker: Any,
    pipeline: str,
    group: Optional[str],
    reason: str,
    *,
    ssm: Any,
    threshold_parameter: str,
    window: str,
) -> tuple[str, bool]:
    """(execution ARN, started?) — never a second execution for one breach, also when monitors run at
    once (issue #23 item 8), and every execution gated by the bar of now (item 6).

    Once: not while one runs (``running_retrain``); and a breach (pipeline, group's newest package,
    the scored forecast ``window``) gets one token, which takes an SSM lock parameter (created without
    overwrite: exactly one monitor succeeds) and is the execution's ClientRequestToken (SageMaker's own
    idempotency). The loser answers the winner's execution. With ``group``, the execution warm-starts
    from the group's production model (see ``warm_start_from_production``).
    """
    running = running_retrain(sagemaker, pipeline, group)
    if running:
        return running, False
    definition = json.loads(sagemaker.describe_pipeline(PipelineName=pipeline)["PipelineDefinition"])
    parameters, gate = gate_parameters(ssm, definition, pipeline, threshold_parameter)
    token = breach_token(pipeline, group, newest_package(sagemaker, group), window)
    lock = retrain_lock(threshold_parameter, token)
    if not take_lock(ssm, lock):
        return winners_execution(ssm, lock), False
    try:
        warm = f"; {warm_start_from_production(sagemaker, pipeline, group, definition)}" if group else ""
        arn = sagemaker.start_pipeline_execution(
            PipelineName=pipeline,
            PipelineExecutionDescription=f"{reason}; {gate}{warm}"[:3072],
            PipelineExecutionDisplayName="monitor-retrain",
            PipelineParameters=parameters,
            ClientRequestToken=token,
        )["PipelineExecutionArn"]
    except BaseException:
        ssm.delete_parameter(Name=lock)  # nothing started: the next run may try this breach again
        raise
    ssm.put_parameter(Name=lock, Value=arn, Type="String", Overwrite=True)
    return arn, True


def gate_parameters(ssm: Any, definition: dict, pipeline: str, threshold_parameter: str) -> tuple[list[dict], str]:
    """The execution's ``AccuracyThreshold`` (and ``ThresholdParameterName``), read from SSM now.

    The gate's parameter is the one ``build`` stored as the definition's ThresholdParameterName
    default (the demo's monitor alerts on another one); without it, the monitor's own. A definition
    without an AccuracyThreshold parameter cannot be gated by the current bar: an error.
    """
    declared = {p.get("Name"): p for p in definition.get("Parameters", [])}
    if "AccuracyThreshold" not in declared:
        raise LoopError(
            f"pipeline {pipeline} declares no AccuracyThreshold parameter: a retrain would not be gated by the "
            "current threshold (upsert it with `python -m mlops build`)"
        )
    name = str((declared.get("ThresholdParameterName") or {}).get("DefaultValue") or threshold_parameter)
    threshold = read_threshold(ssm, name)
    parameters = [{"Name": "AccuracyThreshold", "Value": repr(threshold)}]
    if "ThresholdParameterName" in declared:
        parameters.append({"Name": "ThresholdParameterName", "Value": name})
    return parameters, f"gate {WQL} <= {threshold:g} (SSM parameter {name})"


def newest_package(sagemaker: Any, group: Optional[str]) -> str:
    if not group:
        return ""
    packages = sagemaker.list_model_packages(
        ModelPackageGroupName=group, SortBy="CreationTime", SortOrder="Descending", MaxResults=1
    ).get("ModelPackageSummaryList", [])
    return str(packages[0]["ModelPackageArn"]) if packages else ""


def breach_token(pipeline: str, group: Optional[str], package: str, window: str) -> str:
    """One breach, one token (64 hex digits; SageMaker takes 32 to 128 characters): the same pipeline,
    group, newest package and scored window, whichever monitor saw it."""
    return hashlib.sha256("\n".join((pipeline, group or "", package, window)).encode()).hexdigest()


def retrain_lock(threshold_parameter: str, token: str) -> str:
    """The SSM parameter that marks a breach's retrain: beside the threshold, ``<folder>/retrains/<token>``."""
    folder = threshold_parameter.rsplit("/", 1)[0].strip("/") if "/" in threshold_parameter else ""
    return f"/{folder}/retrains/{token}" if folder else f"/retrains/{token}"


LOCK_WAIT_SECONDS = 30.0  # how long a loser waits for the winner to write its execution's ARN


def winners_execution(ssm: Any, lock: str, wait: float = LOCK_WAIT_SECONDS) -> str:
    """The execution ARN the monitor holding ``lock`` started; while it is still starting (the lock says
    "starting since ..."), wait for it a bounded time, then answer what the lock says."""
    deadline = time.monotonic() + wait
    while True:
        value = str(ssm.get_parameter(Name=lock)["Parameter"]["Value"])
        if value.startswith("arn:") or time.monotonic() >= deadline:
            return value
        time.sleep(0.5)


def take_lock(ssm: Any, name: str) -> bool:
    """Create ``name``; False when it exists (another monitor started, or is starting, this retrain)."""
    try:
        ssm.put_parameter(
            Name=name, Value=f"starting since {now()}", Type="String", Overwrite=False,
            Description="mlops monitor: the retrain of one accuracy breach (its execution ARN once started)",
        )  # fmt: skip
    except ssm.exceptions.ParameterAlreadyExists:
        return False
    return True


def warm_start_from_production(sagemaker: Any, pipeline: str, group: str, definition: Optional[dict] = None) -> str:
    """Point the pipeline's Train step at the production model before an execution starts; what was done, said.

    ``build`` fixes its warm-start choice into the definition it upserts, so an execution started
    here would otherwise train from whatever was in production at the last build (or cold, when
    there was none then). The model channel is set (or replaced) in the stored definition, unless
    the production model has another network shape than the Train step's hyperparameters (the step
    would refuse it): then the definition is left as it is.
    """
    production = registry.production_model(sagemaker, group)
    if production is None:
        return f"no approved model in {group}: the pipeline's own warm-start choice stands"
    if definition is None:
        definition = json.loads(sagemaker.describe_pipeline(PipelineName=pipeline)["PipelineDefinition"])
    train = next((s for s in definition.get("Steps", []) if s.get("Type") == "Training"), None)
    if train is None:
        return f"pipeline {pipeline} has no training step: nothing to warm-start"
    arguments = train["Arguments"]
    wanted = {
        name: value
        for name in NETWORK_HYPERPARAMETERS
        if (value := _resolve(arguments.get("HyperParameters", {}).get(name), definition)) is not None
    }
    differ = registry.shape_differences(production.hyperparameters, wanted)
    if differ:
        return f"model package {production.package_arn} has another network shape ({', '.join(differ)}): not used"
    channels = [c for c in arguments.get("InputDataConfig", []) if c.get("ChannelName") != "model"]
    channels.append(
        {
            "ChannelName": "model",
            "DataSource": {
                "S3DataSource": {
                    "S3DataType": "S3Prefix",
                    "S3Uri": production.model_data,
                    "S3DataDistributionType": "FullyReplicated",
                }
            },
            "ContentType": "application/x-sagemaker-model",
        }
    )
    arguments["InputDataConfig"] = channels
    sagemaker.update_pipeline(PipelineName=pipeline, PipelineDefinition=json.dumps(definition))
    return f"warm start from {production.model_data} (model package {production.package_arn})"


def _resolve(value: Any, definition: dict) -> Optional[str]:
    """A hyperparameter's value in a stored definition: a string, a parameter's default, or a join of
    those (the SDK's form for numbers); None when it is only known at run time."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("Get"), str) and value["Get"].startswith("Parameters."):
        name = value["Get"].removeprefix("Parameters.")
        default = next((p.get("DefaultValue") for p in definition.get("Parameters", []) if p.get("Name") == name), None)
        return None if default is None else str(default)
    if isinstance(value, dict) and "Std:Join" in value:
        parts = [_resolve(v, definition) for v in value["Std:Join"].get("Values", [])]
        return None if any(p is None for p in parts) else str(value["Std:Join"].get("On", "")).join(parts)  # type: ignore[arg-type]
    return None


# --- one run -------------------------------------------------------------------------------------


def monitor_once(
    *,
    forecasts: str,
    lake: str,
    pipeline: str,
    threshold_parameter: str,
    endpoint: str,
    target: str = "particulate_matter",
    time_freq: str = "H",
    group: Optional[str] = None,
    sagemaker: Any = None,
    ssm: Any = None,
    cloudwatch: Any = None,
    s3: Any = None,
) -> MonitorResult:
    from awsinfra.clients import client

    sagemaker = sagemaker or client("sagemaker")
    ssm, cloudwatch, s3 = ssm or client("ssm"), cloudwatch or client("cloudwatch"), s3 or client("s3")
    threshold = read_threshold(ssm, threshold_parameter)  # a bad threshold stops the run before any work
    with tempfile.TemporaryDirectory() as tmp:
        stored = read_forecasts(local_copy(forecasts, Path(tmp) / "forecasts", s3, (".out", ".json", ".jsonl")))
        actual, mean, bands = align(stored, local_copy(lake, Path(tmp) / "lake", s3, (".parquet",)), target, time_freq)
    points = int((~np.isnan(actual)).sum())
    if points == 0:
        return MonitorResult(
            "no-data", None, None, threshold, 0, message="no actuals have arrived for the forecasts yet"
        )
    scores = score_forecasts(actual, mean, bands)
    wql, rmse = scores[WQL], scores["RMSE"]
    if not (math.isfinite(wql) and math.isfinite(rmse)):
        raise LoopError(
            f"{WQL} is {wql} over {points} point(s) (the actuals sum to zero or a forecast holds NaN): "
            "nothing published, no retrain started"
        )
    cloudwatch.put_metric_data(
        Namespace=NAMESPACE,
        MetricData=[
            {"MetricName": name, "Dimensions": [{"Name": "Endpoint", "Value": endpoint}], "Value": value}
            for name, value in ((WQL, wql), ("RMSE", rmse), ("ScoredPoints", float(points)))
        ],
    )
    if wql <= threshold:
        return MonitorResult("healthy", wql, rmse, threshold, points, metrics=scores)
    reason = f"{endpoint}: {WQL} {wql:.4g} > threshold {threshold:.4g} over {points} point(s)"
    window = scored_window(stored)
    arn, started = start_retrain(
        sagemaker, pipeline, group, reason, ssm=ssm, threshold_parameter=threshold_parameter, window=window
    )
    if started:
        return MonitorResult("retrain-started", wql, rmse, threshold, points, arn, f"{reason}: started {arn}", scores)
    return MonitorResult(
        "retrain-running",
        wql,
        rmse,
        threshold,
        points,
        arn,
        f"{reason}: retrain {arn} already running, none started",
        scores,
    )


def scored_window(forecasts: list[tuple[str, dict]]) -> str:
    """The forecast window a run scored (first and last start, points per series): part of a breach's token."""
    starts = sorted(str(forecast["start"]) for _, forecast in forecasts)
    return f"{starts[0]}..{starts[-1]} x{len(forecasts[0][1]['mean'])}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--from-queue",
        metavar="URL",
        help="run only when the schedule rule's SQS target holds a message (deleted after the run)",
    )
    parser.add_argument("--forecasts", required=True, help="stored production forecasts (s3:// prefix or path)")
    parser.add_argument("--lake", required=True, help="curated Parquet lake (s3:// prefix or path)")
    parser.add_argument("--pipeline", required=True, help="the build pipeline to start on a breach")
    parser.add_argument("--group", help="model package group (a succeeded retrain counts until it registers)")
    parser.add_argument("--target", default="particulate_matter", help="lake column when item_id names none")
    parser.add_argument("--time-freq", default="H", help="the model's time_freq")
    parser.add_argument("--name", default=os.environ.get("MLOPS_NAME", "deepar"), help="endpoint base name")
    parser.add_argument(
        "--threshold-parameter", default=os.environ.get("MLOPS_THRESHOLD_PARAMETER", "/deepar/mlops/wql-threshold")
    )


def scheduled_messages(sqs: Any, queue_url: str) -> list[dict]:
    """The schedule's pending trigger messages (several missed periods make one run)."""
    messages: list[dict] = []
    while True:
        batch = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
        if not batch:
            return messages
        messages.extend(batch)


def run(args: argparse.Namespace) -> int:
    triggers: list[dict] = []
    if args.from_queue:
        from awsinfra.clients import client

        sqs = client("sqs")
        triggers = scheduled_messages(sqs, args.from_queue)
        if not triggers:
            print("no scheduled run pending", flush=True)
            return 0
    result = monitor_once(
        forecasts=args.forecasts,
        lake=args.lake,
        pipeline=args.pipeline,
        threshold_parameter=args.threshold_parameter,
        endpoint=f"{args.name}-prod",
        target=args.target,
        time_freq=args.time_freq,
        group=args.group,
    )
    for message in triggers:  # only after a completed run: a failed one is retried on redelivery
        sqs.delete_message(QueueUrl=args.from_queue, ReceiptHandle=message["ReceiptHandle"])
    if result.wql is None:
        print(f"{result.status}: {result.message}", flush=True)
        return 0
    print(
        f"{result.status}: {WQL} {result.wql:.4g} (threshold {result.threshold:.4g}), RMSE {result.rmse:.4g}, "
        f"{result.points} point(s)" + (f"; {result.message}" if result.breached else ""),
        flush=True,
    )
    return 2 if result.breached else 0


if __name__ == "__main__":
    from .events import standalone

    raise SystemExit(standalone("monitor", __doc__, add_arguments, run))
