"""mlflow tracking of a training job: one run per job, recorded after the model is saved.

When ``MLFLOW_TRACKING_URI`` is set, ``container/train`` records a run in experiment
``MLFLOW_EXPERIMENT_NAME`` (default ``deepar``), named after SageMaker's ``TRAINING_JOB_NAME`` when there
is one: every hyperparameter as a param, the train loss of each epoch (step = epoch), the test metrics,
the data statistics, ``leaderboard.json`` when the job wrote one, and the model as an mlflow pyfunc
under ``model`` (``mlflow_pyfunc``), registered as a new version of ``MLFLOW_REGISTERED_MODEL_NAME`` when
set.

Tracking never costs the model: it runs after the model is written and checked, every failure is caught,
retried with back-off inside one time budget (``DEEPAR_MLFLOW_RETRY_SECONDS``), then logged as a warning
and written to ``/opt/ml/output/data/mlflow.json`` (what was recorded, what was not and why). A setting
that cannot be used (a malformed URI, a bad number) is the same kind of warning, naming the variable.

mlflow is imported only here and only when tracking is configured (the image carries mlflow-skinny; the
server never imports it).
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, TypeVar
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

log = logging.getLogger("sagemaker_deepar.tracking")

REPORT_FILE = "mlflow.json"
LEADERBOARD_FILE = "leaderboard.json"
MODEL_NAME = "model"
# Schemes mlflow's client accepts as a tracking URI (the stores; http(s) for a tracking server).
URI_SCHEMES = ("http", "https", "databricks", "file", "sqlite", "postgresql", "mysql", "mssql")
# Errors a retry cannot fix: the server answered and said no.
_FINAL_ERROR_CODES = {
    "INVALID_PARAMETER_VALUE",
    "BAD_REQUEST",
    "PERMISSION_DENIED",
    "UNAUTHENTICATED",
    "RESOURCE_DOES_NOT_EXIST",
    "INVALID_STATE",
    "ENDPOINT_NOT_FOUND",
}
T = TypeVar("T")


class TrackingSettings(BaseModel):
    """The environment's tracking settings, parsed once; a validation error names the variable (its alias)."""

    model_config = ConfigDict(frozen=True, populate_by_name=True)

    tracking_uri: str = Field(alias="MLFLOW_TRACKING_URI")
    experiment_name: str = Field("deepar", alias="MLFLOW_EXPERIMENT_NAME", min_length=1, max_length=500)
    registered_model_name: Optional[str] = Field(None, alias="MLFLOW_REGISTERED_MODEL_NAME", max_length=256)
    run_name: Optional[str] = Field(None, alias="TRAINING_JOB_NAME", max_length=250)
    # The whole tracking step (every retry of every call) ends within about this many seconds.
    retry_seconds: float = Field(60.0, alias="DEEPAR_MLFLOW_RETRY_SECONDS", ge=0, le=3600)

    @field_validator("tracking_uri")
    @classmethod
    def _usable_uri(cls, value: str) -> str:
        value = value.strip()
        parsed = urlparse(value)
        if value == "databricks" or value.startswith("databricks://"):
            return value
        if parsed.scheme not in URI_SCHEMES:
            raise ValueError(
                f"{value!r} is not a tracking URI: expected http(s)://host[:port], databricks, sqlite:///file.db "
                "or another store URI"
            )
        if parsed.scheme in ("http", "https"):
            try:
                port = parsed.port
            except ValueError:
                raise ValueError(f"{value!r}: the port is not a number between 0 and 65535") from None
            if not parsed.hostname or port == 0:
                raise ValueError(f"{value!r}: no host to connect to")
        return value

    @field_validator("experiment_name", "registered_model_name", "run_name", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Optional["TrackingSettings"]:
        """None when ``MLFLOW_TRACKING_URI`` is unset or empty; ``TrackingSettingsError`` naming the variable."""
        if not env.get("MLFLOW_TRACKING_URI", "").strip():
            return None
        names = [info.alias for info in cls.model_fields.values() if info.alias]
        raw = {name: env[name] for name in names if name in env}
        if raw.get("MLFLOW_EXPERIMENT_NAME", "x").strip() == "":
            raw.pop("MLFLOW_EXPERIMENT_NAME")
        try:
            return cls.model_validate(raw)
        except ValidationError as error:
            problems = [
                f"{'.'.join(map(str, e['loc']))}={raw.get(str(e['loc'][0]), '')!r}: {e['msg']}" for e in error.errors()
            ]
            raise TrackingSettingsError("; ".join(problems)) from None


class TrackingSettingsError(ValueError):
    """A tracking setting that cannot be used; the message starts with the variable's name."""


@dataclass
class TrainingRecord:
    """What the job learned, gathered while it ran; recorded once the model is saved."""

    hyperparameters: dict[str, Any]
    epochs: list[tuple[int, float, float]] = field(default_factory=list)  # (epoch, train loss, records/s)
    train_summary: dict[str, Any] = field(default_factory=dict)
    test_metrics: Optional[dict[str, float]] = None
    statistics: dict[str, Any] = field(default_factory=dict)  # {"train": {...}, "test": {...}}
    tags: dict[str, str] = field(default_factory=dict)


@dataclass
class TrackingReport:
    """The content of ``mlflow.json``: where the run went, what was recorded and what was not (why)."""

    tracking_uri: Optional[str]
    experiment_name: Optional[str] = None
    run_name: Optional[str] = None
    experiment_id: Optional[str] = None
    run_id: Optional[str] = None
    model_uri: Optional[str] = None
    registered_model: Optional[dict[str, Any]] = None
    recorded: list[str] = field(default_factory=list)
    not_recorded: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def complete(self) -> bool:
        return not self.not_recorded

    def as_dict(self) -> dict[str, Any]:
        return {
            "tracking_uri": self.tracking_uri,
            "experiment_name": self.experiment_name,
            "experiment_id": self.experiment_id,
            "run_name": self.run_name,
            "run_id": self.run_id,
            "model_uri": self.model_uri,
            "registered_model": self.registered_model,
            "complete": self.complete,
            "recorded": self.recorded,
            "not_recorded": self.not_recorded,
            "seconds": round(self.seconds, 3),
        }


class Budget:
    """Retries with exponential back-off (0.5 s doubling, at most 8 s apart), all within one deadline."""

    def __init__(
        self, seconds: float, stop: Optional[threading.Event] = None, clock: Callable[[], float] = time.monotonic
    ):
        self.deadline = clock() + seconds
        self.stop = stop or threading.Event()
        self.clock = clock

    def call(self, what: str, action: Callable[[], T]) -> T:
        delay = 0.5
        attempt = 1
        while True:
            try:
                return action()
            except Exception as error:  # noqa: BLE001 - any client failure: retried or reported, never raised
                left = self.deadline - self.clock()
                if not retryable(error) or left <= delay or self.stop.is_set():
                    raise
                log.warning(
                    "mlflow: %s failed (attempt %d: %s); retrying in %.1f s", what, attempt, brief(error), delay
                )
                if self.stop.wait(delay):
                    raise
                delay = min(delay * 2, 8.0)
                attempt += 1


def retryable(error: BaseException) -> bool:
    """Connection failures, timeouts and 5xx/429 are worth a retry; the server's refusals are not."""
    code = getattr(error, "error_code", None)
    return code not in _FINAL_ERROR_CODES


def brief(error: BaseException) -> str:
    """One line: the exception's class and the first line of its message (no tracebacks in the log)."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}"[:500]


# ---------------------------------------------------------------- the run


def metric_name(name: str) -> str:
    """mlflow's metric names allow letters, digits, ``_ - . / `` and spaces: ``wQuantileLoss[0.5]`` -> ``wQuantileLoss_0.5``."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in name).strip("_")


def run_metrics(record: TrainingRecord, timestamp_ms: int) -> list[Any]:
    from mlflow.entities import Metric

    metrics = []
    for epoch, loss, throughput in record.epochs:
        if math.isfinite(loss):
            metrics.append(Metric("train_loss", loss, timestamp_ms, epoch))
        if math.isfinite(throughput):
            metrics.append(Metric("train_throughput", throughput, timestamp_ms, epoch))
    final_loss = record.train_summary.get("final_loss")
    if isinstance(final_loss, (int, float)) and math.isfinite(final_loss):
        metrics.append(Metric("train_final_loss", float(final_loss), timestamp_ms, 0))
    for name, value in (record.test_metrics or {}).items():
        if isinstance(value, (int, float)) and math.isfinite(value):
            metrics.append(Metric(metric_name(f"test_{name}"), float(value), timestamp_ms, 0))
    for channel, stats in record.statistics.items():
        for name, value in stats.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                metrics.append(Metric(metric_name(f"data_{channel}_{name}"), float(value), timestamp_ms, 0))
    return metrics


def run_params(record: TrainingRecord) -> list[Any]:
    from mlflow.entities import Param

    params = []
    for name, value in sorted(record.hyperparameters.items()):
        text = value if isinstance(value, str) else json.dumps(value)
        params.append(Param(name, text[:6000]))  # mlflow's limit on a param value
    return params


def record_run(
    settings: TrackingSettings,
    record: TrainingRecord,
    model_dir: Path,
    output_data_dir: Path,
    stop: Optional[threading.Event] = None,
) -> TrackingReport:
    """Record the run; never raises. Writes ``mlflow.json`` and returns what it says."""
    started = time.monotonic()
    report = TrackingReport(settings.tracking_uri, settings.experiment_name, settings.run_name)
    try:
        _record(settings, record, model_dir, output_data_dir, stop, report)
    except Exception as error:  # noqa: BLE001 - a bug or an unforeseen client failure: the model is kept anyway
        report.not_recorded.append({"what": "run", "reason": brief(error)})
    report.seconds = time.monotonic() - started
    write_report(output_data_dir, report)
    if report.complete:
        log.info(
            "mlflow: run %s recorded in experiment %r at %s (%s)",
            report.run_id,
            report.experiment_name,
            settings.tracking_uri,
            ", ".join(report.recorded),
        )
    else:
        missing = "; ".join(f"{item['what']}: {item['reason']}" for item in report.not_recorded)
        log.warning("mlflow: not recorded at %s: %s; the model is saved regardless", settings.tracking_uri, missing)
    return report


def _configure_client(settings: TrackingSettings) -> None:
    """mlflow's own HTTP retries would wait minutes on a down server: our Budget retries instead."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(int(max(5, min(60, settings.retry_seconds)))))


def _record(
    settings: TrackingSettings,
    record: TrainingRecord,
    model_dir: Path,
    output_data_dir: Path,
    stop: Optional[threading.Event],
    report: TrackingReport,
) -> None:
    _configure_client(settings)
    import mlflow
    from mlflow.tracking import MlflowClient

    budget = Budget(settings.retry_seconds, stop)  # after the (slow) import: the budget is for the server

    client = MlflowClient(tracking_uri=settings.tracking_uri)

    def experiment_id() -> str:
        found = client.get_experiment_by_name(settings.experiment_name)
        return found.experiment_id if found else client.create_experiment(settings.experiment_name)

    try:
        experiment = report.experiment_id = budget.call("experiment", experiment_id)
        tags = {"mlflow.source.name": "container/train", **record.tags}
        if settings.run_name:
            tags["sagemaker.training_job_name"] = settings.run_name
        run = budget.call("run", lambda: client.create_run(experiment, run_name=settings.run_name, tags=tags))
    except Exception as error:  # noqa: BLE001
        report.not_recorded.append({"what": "run", "reason": f"{brief(error)} (nothing was recorded)"})
        return
    run_id = report.run_id = run.info.run_id
    report.run_name = run.info.run_name

    def step(what: str, action: Callable[[], Any]) -> Any:
        try:
            result = budget.call(what, action)
        except Exception as error:  # noqa: BLE001
            report.not_recorded.append({"what": what, "reason": brief(error)})
            return None
        report.recorded.append(what)
        return result

    now = int(time.time() * 1000)
    step("params", lambda: client.log_batch(run_id, params=run_params(record)))
    metrics = run_metrics(record, now)
    step(
        "metrics",
        lambda: [client.log_batch(run_id, metrics=metrics[i : i + 1000]) for i in range(0, len(metrics), 1000)],
    )
    summary = {"train": record.train_summary, "test": record.test_metrics, "statistics": record.statistics}
    step("statistics", lambda: client.log_dict(run_id, summary, "training-summary.json"))
    leaderboard = output_data_dir / LEADERBOARD_FILE
    if leaderboard.is_file():
        step("leaderboard", lambda: client.log_artifact(run_id, str(leaderboard)))

    from .. import mlflow_pyfunc

    def log_model() -> Any:
        mlflow.set_tracking_uri(settings.tracking_uri)
        with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
            return mlflow_pyfunc.log_model(model_dir, name=MODEL_NAME)

    info = step("model", log_model)
    if info is not None:
        report.model_uri = info.model_uri
        if settings.registered_model_name:
            name = settings.registered_model_name

            def register() -> Any:
                return mlflow.register_model(
                    info.model_uri, name, await_registration_for=int(max(1, settings.retry_seconds))
                )

            version = step("registered model", register)
            if version is not None:
                report.registered_model = {"name": name, "version": str(version.version)}
    elif settings.registered_model_name:
        report.not_recorded.append({"what": "registered model", "reason": "not attempted: the model was not logged"})
    status = "FINISHED" if report.complete else "FAILED"
    if not report.complete:
        missing = ", ".join(item["what"] for item in report.not_recorded)
        step("incomplete tag", lambda: client.set_tag(run_id, "sagemaker_deepar.not_recorded", missing))
    try:
        budget.call("run end", lambda: client.set_terminated(run_id, status=status))
    except Exception as error:  # noqa: BLE001
        report.not_recorded.append({"what": "run end", "reason": brief(error)})


def write_report(output_data_dir: Path, report: TrackingReport) -> None:
    try:
        output_data_dir.mkdir(parents=True, exist_ok=True)
        tmp = output_data_dir / f".{REPORT_FILE}.tmp"
        tmp.write_text(json.dumps(report.as_dict(), indent=2) + "\n")
        os.replace(tmp, output_data_dir / REPORT_FILE)
    except OSError as error:
        log.warning("mlflow: could not write %s: %s", output_data_dir / REPORT_FILE, error)


def settings_problem_report(output_data_dir: Path, env: Mapping[str, str], problem: str) -> None:
    """A setting that cannot be used: warned, and written to ``mlflow.json``; nothing else is attempted."""
    log.warning("mlflow: tracking disabled: %s; the model is saved regardless", problem)
    report = TrackingReport(env.get("MLFLOW_TRACKING_URI"))
    report.not_recorded.append({"what": "run", "reason": f"tracking settings: {problem}"})
    write_report(output_data_dir, report)
