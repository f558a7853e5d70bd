"""The ``train`` job: configuration -> data -> DeepAR -> model, metrics, or a failure file."""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import platform
import shutil
import signal
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

from .. import __version__
from ..contract import ONNX_FILE, FeatureSpec, ModelArtifact
from ..errors import UserError
from ..logs import configure_logging
from ..paths import METADATA_FILE, PREDICTOR_DIR, SageMakerPaths, probe_output_dirs
from . import backends, distributed, faults, warm_start
from .data import (
    Channel,
    apply_features,
    check_observed,
    check_target_domain,
    check_train_lengths,
    log_channel_stats,
    read_channel,
    resolve_features,
)
from .ensemble import leaderboard
from .hyperparameters import DeepARHyperparameters, load_hyperparameters
from .metrics import MetricLogger, evaluate_forecasts, write_forecasts
from .settings import TrainingEnvironment

log = logging.getLogger("sagemaker_deepar")

SUPPORTED_CHANNELS = ("train", "test")
# Inside /opt/ml/model: the model is assembled here, checked, then moved into place. Hidden so that a
# job killed mid-write leaves nothing that looks like a model (no deepar-metadata.json at the top).
STAGING_DIR = ".staging"


# BaseException, not Exception: raised from the SIGTERM handler into whatever code runs at that
# moment, they must not be swallowed by a library's `except Exception`.
class StoppedBeforeTraining(BaseException):
    pass


class ScoringInterrupted(BaseException):
    pass


@dataclass(frozen=True)
class JobConfig:
    params: DeepARHyperparameters
    channels: dict[str, dict[str, Any]]
    host: str
    checkpoint_dir: Path


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise UserError(f"{path} ({what}) is not valid JSON: {error}") from None
    except RecursionError:
        raise UserError(f"{path} ({what}) is nested too deeply to be a configuration file") from None


def read_job_config(paths: SageMakerPaths) -> JobConfig:
    params = load_hyperparameters(paths.hyperparameters)
    if paths.input_data_config.exists():
        channels = _read_json(paths.input_data_config, "input data configuration")
    else:  # local runs without SageMaker's config: every folder under input/data is a channel
        data_root = paths.root / "input" / "data"
        channels = {p.name: {} for p in sorted(data_root.iterdir()) if p.is_dir()} if data_root.is_dir() else {}
    unknown = [name for name in channels if name not in (*SUPPORTED_CHANNELS, warm_start.MODEL_CHANNEL)]
    if unknown:
        raise UserError(
            f"channel(s) {', '.join(repr(c) for c in unknown)} not supported: DeepAR takes 'train' "
            "(required), 'test' (optional) and 'model' (optional: a previous model to warm-start from)"
        )
    if "train" not in channels:
        raise UserError("the 'train' channel is required but was not provided")
    for name, channel in channels.items():
        if channel.get("TrainingInputMode", "File") == "Pipe":
            raise UserError(f"channel '{name}' uses Pipe input mode; use File or FastFile")
    host = "algo-1"
    if paths.resource_config.exists():
        host = _read_json(paths.resource_config, "resource configuration").get("current_host", host)
    checkpoint_dir = paths.default_checkpoint_dir
    if paths.checkpoint_config.exists():
        local_path = _read_json(paths.checkpoint_config, "checkpoint configuration").get("LocalPath")
        checkpoint_dir = Path(local_path) if local_path else checkpoint_dir
    return JobConfig(params=params, channels=channels, host=host, checkpoint_dir=checkpoint_dir)


# Plain GluonTS's epoch (its Trainer's 50 batches of 32 windows): the fewest windows an epoch sees. On a
# small data set one pass is a single batch, and 20 such epochs leave the network near its random
# start, where the seed decides the forecast (docs/accuracy.md).
MIN_WINDOWS_PER_EPOCH = 50 * 32


def default_batches_per_epoch(params: DeepARHyperparameters, train: Channel) -> int:
    """One epoch = one pass over the data (as many training windows as fit end to end in all series),
    and at least plain GluonTS's epoch of ``MIN_WINDOWS_PER_EPOCH`` windows."""
    window = params.context_length + params.prediction_length
    windows = max(train.stats.num_series, math.ceil(train.stats.num_observations / window), MIN_WINDOWS_PER_EPOCH)
    return max(1, math.ceil(windows / params.mini_batch_size))


def load_channels(paths: SageMakerPaths, config: JobConfig) -> tuple[Channel, Optional[Channel], FeatureSpec]:
    """Read and check both channels: every data problem surfaces here, before any epoch runs."""
    params = config.params
    faults.reached("reading")
    train = read_channel(
        "train", paths.channel("train"), params.pandas_freq, config.channels["train"].get("ContentType")
    )
    spec = resolve_features(params, train)
    apply_features(train, spec)
    check_target_domain(train, params.likelihood)
    log_channel_stats(train, spec)
    check_observed(train)
    check_train_lengths(train, params.context_length, params.prediction_length)
    test = None
    if "test" in config.channels:
        test = read_channel(
            "test",
            paths.channel("test"),
            params.pandas_freq,
            config.channels["test"].get("ContentType"),
            min_length=params.prediction_length + 1,
        )
        apply_features(test, spec)
        log_channel_stats(test)
        check_observed(test)
    return train, test, spec


def evaluate_test(predictor, test: Channel, params: DeepARHyperparameters, out_dir: Path) -> dict[str, float]:
    """Forecast the withheld last ``prediction_length`` points of every test series and score them.

    The forecasts (mean and test quantiles) are kept in ``test-forecasts.jsonl`` for inspection.
    """
    from gluonts.evaluation import make_evaluation_predictions

    backends.set_num_samples(predictor, params.num_eval_samples)
    forecast_it, _ = make_evaluation_predictions(test.entries, predictor, num_samples=params.num_eval_samples)
    forecasts = []
    for forecast in forecast_it:
        forecasts.append(forecast)
        if len(forecasts) == 1:
            faults.reached("scoring")
    out_dir.mkdir(parents=True, exist_ok=True)
    write_forecasts(forecasts, test.locations, params.test_quantiles, out_dir / "test-forecasts.jsonl")
    return evaluate_forecasts(test.entries, forecasts, params.test_quantiles)


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version(), "sagemaker_deepar": __version__}
    for name in ("gluonts", "torch", "lightning", "mxnet", "numpy", "pandas"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return versions


def check_loadable(model_dir: Path) -> None:
    """Load the model the way serving does; raises if it cannot be served."""
    from ..runtimes.model import Model

    Model.load(model_dir, max_batch_series=1, runtime="torch")  # ONNX is checked at export (onnx_export)


def export_onnx(predictor, backend: str, likelihood: str, freq: str, staging: Path) -> dict[str, Any]:
    """The network as ONNX beside the predictor (torch); a failure is logged and recorded, never fatal."""
    if backend != "torch":
        reason = f"{backend} backend: only torch networks are exported to ONNX"
        log.info("no ONNX network: %s", reason)
        return {"file": None, "reason": reason}
    from .onnx_export import export_checked

    return export_checked(predictor.prediction_net.model.eval(), likelihood, freq, staging)


def publish_model(staging: Path, model_dir: Path) -> None:
    """Move a checked model from ``staging`` into ``model_dir``, metadata last: its presence marks a complete model."""
    (model_dir / METADATA_FILE).unlink(missing_ok=True)
    if (model_dir / PREDICTOR_DIR).exists():
        shutil.rmtree(model_dir / PREDICTOR_DIR)
    os.replace(staging / PREDICTOR_DIR, model_dir / PREDICTOR_DIR)
    # A stale network from an earlier run must not outlive the model it was exported from.
    (model_dir / ONNX_FILE).unlink(missing_ok=True)
    if (staging / ONNX_FILE).exists():
        os.replace(staging / ONNX_FILE, model_dir / ONNX_FILE)
    os.replace(staging / METADATA_FILE, model_dir / METADATA_FILE)
    staging.rmdir()


def write_outputs(
    paths: SageMakerPaths,
    predictor,
    config: JobConfig,
    spec: FeatureSpec,
    train: Channel,
    test: Optional[Channel],
    control: backends.TrainingControl,
    interrupted: bool,
    test_metrics: Optional[dict[str, float]],
    num_batches_per_epoch: int,
    seconds: float,
    warm_started: Optional[dict[str, Any]] = None,
    forecaster: Optional[dict[str, Any]] = None,
) -> None:
    """Write the model to a hidden staging folder, load it as serving would, then move it into place."""
    params = config.params
    staging = paths.model_dir / STAGING_DIR
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    predictor_dir = staging / PREDICTOR_DIR
    predictor_dir.mkdir()
    predictor.serialize(predictor_dir)
    faults.reached("writing")
    onnx = export_onnx(predictor, params.backend, params.likelihood, params.pandas_freq, staging)
    train_summary = {
        "final_loss": control.best_loss,
        "best_epoch": control.best_epoch,
        "best_validation_loss": control.best_validation_loss,  # None: no held-out window, best train loss kept
        "epochs_run": control.epochs_run,
        "interrupted": interrupted,
        "num_batches_per_epoch": num_batches_per_epoch,
        "seconds": round(seconds, 3),
    }
    ModelArtifact(
        backend=params.backend,
        hyperparameters=params.model_dump(),
        freq=params.pandas_freq,
        prediction_length=params.prediction_length,
        context_length=params.context_length,
        likelihood=params.likelihood,
        cardinality=tuple(spec.cardinality),
        num_dynamic_feat=spec.num_dynamic_feat,
        library_versions=library_versions(),
        training_statistics={"train": train.stats.as_dict(), **({"test": test.stats.as_dict()} if test else {})},
        train=train_summary,
        test_metrics=test_metrics,
        warm_start=warm_started,
        onnx=onnx,
        **(forecaster or {}),
    ).write(staging)
    check_loadable(staging)
    publish_model(staging, paths.model_dir)
    paths.output_data_dir.mkdir(parents=True, exist_ok=True)
    backends.write_json_atomic(paths.output_data_dir / "metrics.json", {"train": train_summary, "test": test_metrics})


def run(paths: SageMakerPaths, settings: Optional[TrainingEnvironment] = None, tracking: Any = None) -> None:
    started = time.perf_counter()
    stop = SigtermHandler.install()
    config = read_job_config(paths)
    params = config.params
    log.info("hyperparameters: %s", json.dumps(params.model_dump()))
    settings = settings or TrainingEnvironment.defaults()
    cluster = distributed.read_cluster(paths.resource_config, settings)
    distributed.check_backend(params.backend, cluster)
    probe_output_dirs(
        {
            "model folder": paths.model_dir,
            "output data folder": paths.output_data_dir,
            "checkpoint folder": config.checkpoint_dir,
        },
        estimated_output_bytes(params),
    )
    train, test, spec = load_channels(paths, config)
    from .ensemble import job as ensemble_job

    windows = ensemble_job.prepare(params, train.entries)  # a ClientError now, before any epoch
    previous = None
    if warm_start.MODEL_CHANNEL in config.channels:
        previous = warm_start.prepare(
            paths.channel(warm_start.MODEL_CHANNEL), params, backends.checkpoint_fingerprint(params, spec)
        )
    num_batches = params.num_batches_per_epoch or default_batches_per_epoch(params, train)
    log.info(
        "backend %s, %d epochs of %d batches of %d windows",
        params.backend,
        params.epochs,
        num_batches,
        params.mini_batch_size,
    )
    entries = ensemble_job.deepar_entries(params, train.entries, windows)
    if cluster.is_distributed:
        if not distributed.check_data_distribution(config.channels, params.num_batches_per_epoch):
            entries = distributed.shard_entries(entries, cluster)
        num_batches = distributed.batches_per_host(num_batches, cluster.world_size)
        log.info(
            "this host trains on %d of %d series, %d batches per epoch", len(entries), len(train.entries), num_batches
        )
    session = distributed.start(cluster)
    backends.seed_everything(params.seed)

    metric_logger = MetricLogger(config.host)
    readable = settings.job_name is None
    epoch_losses: list[tuple[int, float, float]] = []  # for mlflow: (epoch, train loss, records/s)

    def on_epoch(epoch: int, loss: float, progress: float, throughput: float) -> None:
        if cluster.is_leader:  # one set of metric lines per job: the loss is already the hosts' mean
            metric_logger.epoch(epoch, loss, progress, throughput)
            epoch_losses.append((epoch, loss, throughput))
        if readable:
            log.info("epoch %d/%d: train loss %.5f, %.0f records/s", epoch + 1, params.epochs, loss, throughput)

    control = backends.TrainingControl(
        total_epochs=params.epochs,
        batch_size=params.mini_batch_size,
        on_epoch=on_epoch,
        patience=params.early_stopping_patience,
        stop_requested=stop.requested,
        readable=readable,
    )
    # The members' fits beside the network's training (the leader's job: it scores and writes the model).
    local_runs = ensemble_job.start_local_runs(
        params, windows if cluster.is_leader else [], test.entries if test and cluster.is_leader else None
    )
    stop.phase = "training"
    training_started = time.perf_counter()
    try:
        predictor = backends.train(
            params, spec, entries, num_batches, control, config.checkpoint_dir, previous.weights if previous else None
        )
    except BaseException:  # the job ends: its background members must not hold it open
        local_runs.close()
        raise
    if session and not cluster.is_leader:  # the leader scores and writes the model; this host waits for it
        local_runs.close()
        stop.phase = "waiting for the leader"
        session.wait_for_leader()
        return
    metric_logger.final_loss(control.best_loss)
    training_seconds = time.perf_counter() - training_started
    test_metrics = None
    deepar_test_metrics = None
    outcome = None
    if stop.requested.is_set():
        local_runs.close()
        log.warning(
            "stopped by SIGTERM after %d epoch(s) (%d batches): saving the best model so far, skipping test "
            "scoring; a restart with the same checkpoint folder resumes training",
            control.epochs_run,
            control.batches_run,
        )
    else:
        stop.phase = "scoring"
        try:
            if test is not None and params.forecaster == "deepar":
                deepar_test_metrics = test_metrics = evaluate_test(predictor, test, params, paths.output_data_dir)
            outcome = ensemble_job.score_members(
                params,
                predictor,
                windows,
                test.entries if test else None,
                local_runs,
                training_seconds,
                deepar_test_metrics,
            )
            if outcome.test_metrics is not None and test is not None:  # the served ensemble's
                test_metrics = outcome.test_metrics
                paths.output_data_dir.mkdir(parents=True, exist_ok=True)
                write_forecasts(
                    outcome.test_forecasts,
                    test.locations,
                    params.test_quantiles,
                    paths.output_data_dir / "test-forecasts.jsonl",
                )
            if test_metrics is not None:
                metric_logger.test_scores(test_metrics, params.test_quantiles)
        except ScoringInterrupted:
            local_runs.close()
            log.warning("stopped by SIGTERM during test scoring: skipping it, saving the trained model")
    if params.forecaster == "ensemble" and outcome is None:
        log.warning("stopped before the members were scored: the ensemble is served with DeepAR alone")
    leaderboard_rows = outcome.rows if outcome else ensemble_job.deepar_only_rows(training_seconds, test_metrics)
    leaderboard.write(leaderboard_rows, paths.output_data_dir)
    # A stop from here on changes nothing: the model is written and checked before the job exits.
    stop.phase = "writing"
    write_outputs(
        paths,
        predictor,
        config,
        spec,
        train,
        test,
        control,
        control.interrupted or stop.requested.is_set(),
        test_metrics,
        num_batches,
        time.perf_counter() - started,
        previous.description(control.initial_weights_sha256) if previous else None,
        ensemble_job.artifact_fields(params, outcome),
    )
    log.info("model written to %s and checked to load, in %.1f s", paths.model_dir, time.perf_counter() - started)
    if session:
        session.publish()
    if tracking is not None:  # after the model is saved (and the followers released): it can only add records
        stop.phase = "tracking"
        track_run(paths, tracking, params, epoch_losses, stop.requested)


@dataclass(frozen=True)
class TrackingProblem:
    """A tracking setting that cannot be used (the message names the variable), and the URI as given."""

    problem: str
    tracking_uri: Optional[str]


def read_tracking_settings(env: Mapping[str, str]) -> Any:
    """``TrackingSettings`` when MLFLOW_TRACKING_URI is set, else None; an unusable setting is a
    ``TrackingProblem``, reported after the model is saved: tracking never fails the job."""
    from .tracking import TrackingSettings, TrackingSettingsError

    try:
        return TrackingSettings.from_env(env)
    except TrackingSettingsError as error:
        log.warning("mlflow: %s; the job runs on, its run will not be recorded", error)
        return TrackingProblem(str(error), env.get("MLFLOW_TRACKING_URI"))


def track_run(
    paths: SageMakerPaths,
    tracking: Any,
    params: DeepARHyperparameters,
    epochs: list[tuple[int, float, float]],
    stop: threading.Event,
) -> None:
    from .tracking import TrainingRecord, record_run, settings_problem_report

    if isinstance(tracking, TrackingProblem):
        uri = {"MLFLOW_TRACKING_URI": tracking.tracking_uri} if tracking.tracking_uri else {}
        settings_problem_report(paths.output_data_dir, uri, tracking.problem)
        return
    artifact = ModelArtifact.read(paths.model_dir)
    record = TrainingRecord(
        hyperparameters=params.model_dump(),
        epochs=epochs,
        train_summary=dict(artifact.train or {}),
        test_metrics=artifact.test_metrics,
        statistics=dict(artifact.training_statistics or {}),
        tags={"sagemaker_deepar.version": __version__, "sagemaker_deepar.backend": params.backend},
    )
    record_run(tracking, record, paths.model_dir, paths.output_data_dir, stop)


def estimated_output_bytes(params: DeepARHyperparameters) -> int:
    """A generous bound on what the job writes: model, checkpoints (weights + Adam moments), copies in flight."""
    inputs = 100 + params.num_cells + params.embedding_dimension  # lags, time features, one embedding
    weights = 4 * (params.num_layers * 4 * params.num_cells * (inputs + params.num_cells + 2) + 10 * params.num_cells)
    return 16 * weights + 16 * 2**20  # ~4 checkpoints of 3x the weights, 2 model copies, 16 MB of files


# ---------------------------------------------------------------- signals, logging, failures


@dataclass
class SigtermHandler:
    """What SIGTERM does depends on the phase: before training, stop now (nothing to save); while
    training, finish the batch, checkpoint and save the model; while scoring the test channel, skip
    the rest of it and save the model; while writing the model, finish writing it."""

    requested: threading.Event
    phase: str = "reading"

    @classmethod
    def install(cls) -> SigtermHandler:
        handler = cls(requested=threading.Event())
        signal.signal(signal.SIGTERM, handler)
        return handler

    def __call__(self, signum, frame) -> None:
        log.warning("SIGTERM received while %s", self.phase)
        self.requested.set()
        if self.phase == "reading":
            raise StoppedBeforeTraining()
        if self.phase == "scoring":
            raise ScoringInterrupted()


def write_failure(paths: SageMakerPaths, reason: str) -> None:
    reason = distributed.failure_reason(reason)  # on several hosts: which host failed, told to the others
    try:
        paths.failure_file.parent.mkdir(parents=True, exist_ok=True)
        paths.failure_file.write_text(reason)
    except OSError as error:  # never hide the original failure behind this one
        log.error("could not write %s: %s", paths.failure_file, error)


def main() -> int:
    configure_logging()
    try:  # `train`'s entry point: its settings are parsed here, once, and handed down
        settings = TrainingEnvironment.from_env(os.environ)
    except UserError as error:  # a number that is none: reported where the job's failure always goes
        reason = f"ClientError: {error}"
        log.error("%s", reason)
        base_dir = os.environ.get("SAGEMAKER_BASE_DIR") or TrainingEnvironment.model_fields["base_dir"].default
        write_failure(SageMakerPaths(Path(base_dir)), reason)
        return 1
    tracking = read_tracking_settings(os.environ)
    faults.arm(settings.fault)
    paths = SageMakerPaths(Path(settings.base_dir))
    try:
        run(paths, settings, tracking)
        return 0
    except UserError as error:
        reason = f"ClientError: {error}"
        log.error("%s", reason)
        write_failure(paths, reason)
        return 1
    except StoppedBeforeTraining:
        write_failure(paths, "ClientError: the job was stopped (SIGTERM) before training started; no model was written")
        return 1
    except OSError as error:
        if error.errno not in (errno.ENOSPC, errno.EDQUOT):
            return internal_error(paths, error)
        reason = (
            f"ClientError: no space left on the device while writing {error.filename or 'output'}; "
            "use a larger volume (VolumeSizeInGB) or a smaller model"
        )
        log.error("%s", reason)
        write_failure(paths, reason)
        return 1
    except MemoryError:
        reason = (
            "ClientError: out of memory while training; use an instance type with more memory, "
            "or reduce mini_batch_size, context_length or num_cells"
        )
        log.error("%s", reason)
        write_failure(paths, reason)
        return 1
    except Exception as error:  # a bug of ours: say so, keep the traceback for the log and the failure file
        return internal_error(paths, error)


def internal_error(paths: SageMakerPaths, error: BaseException) -> int:
    detail = traceback.format_exc()
    reason = (
        f"AlgorithmError: internal error (not caused by your input): {type(error).__name__}: {error}\n"
        f"Please report this with the training log.\n{detail}"
    )
    log.error("%s", reason)
    write_failure(paths, reason)
    return 2
