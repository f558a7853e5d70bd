"""The two GluonTS DeepAR backends, torch (default) and mxnet, behind one ``train`` function each.

Every DeepAR hyperparameter is mapped by hand: GluonTS's ``from_hyperparameters`` silently drops
names it does not know, and the two backends spell the same thing differently.
"""

from __future__ import annotations

import json
import logging
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..contract import FeatureSpec, UnsafePathError, backtest_cuts, confined_path, network_shape
from . import distributed, faults
from .hyperparameters import LIKELIHOODS, DeepARHyperparameters
from .warm_start import load_mxnet, torch_callback

log = logging.getLogger(__name__)

# Beta's support is the open interval (0, 1): 0 and 1 would give an infinite training loss.
BETA_EPSILON = 1e-5
LAST_CHECKPOINT_TORCH = "deepar-last.ckpt"
LAST_CHECKPOINT_MXNET = "deepar-last.params"
CHECKPOINT_STATE = "deepar-checkpoint.json"


# ---------------------------------------------------------------- shared training control


@dataclass
class TrainingControl:
    """What both backends report to and ask every epoch: metrics, early stopping, stop requests."""

    total_epochs: int
    batch_size: int
    on_epoch: Callable[[int, float, float, float], None]  # (epoch, loss, progress %, records/s)
    patience: Optional[int] = None
    stop_requested: threading.Event = field(default_factory=threading.Event)
    readable: bool = True  # readable epoch lines (off in a SageMaker job, whose log keeps the metric lines)
    start_epoch: int = 0
    best_loss: float = float("inf")  # the lowest train loss (the train final_loss metric)
    best_epoch: int = -1  # the epoch whose weights are kept: lowest validation loss when there is one
    best_validation_loss: Optional[float] = None
    epochs_run: int = 0
    batches_run: int = 0
    interrupted: bool = False
    epoch_batches: int = 0  # batches of the current epoch, for its throughput
    epoch_started: float = field(default_factory=time.perf_counter)
    initial_weights_sha256: Optional[str] = None  # set when a warm start loaded a previous model

    def epoch_started_now(self) -> None:
        self.epoch_batches, self.epoch_started = 0, time.perf_counter()

    def batch_finished(self) -> bool:
        """Count the batch; return whether the epoch should go on (False once SIGTERM arrived)."""
        self.batches_run += 1
        self.epoch_batches += 1
        faults.reached(f"batch:{self.batches_run}")
        return not self.stop_requested.is_set()

    def epoch_finished(self, epoch: int, loss: float, validation_loss: Optional[float] = None) -> bool:
        """Log the epoch; return whether training should go on.

        With held-out windows (``validation_loss``), the best epoch and early stopping follow the
        validation loss, as the kept weights do; else the train loss."""
        self.epochs_run = epoch + 1
        seconds = time.perf_counter() - self.epoch_started
        throughput = self.epoch_batches * self.batch_size / seconds if seconds > 0 else 0.0
        self.on_epoch(epoch, loss, 100.0 * (epoch + 1) / self.total_epochs, throughput)
        if validation_loss is not None and self.readable:
            log.info("epoch %d/%d: validation loss %.5f", epoch + 1, self.total_epochs, validation_loss)
        improved_train = bool(np.isfinite(loss) and loss < self.best_loss)
        if improved_train:
            self.best_loss = loss
        if validation_loss is None:
            if improved_train:
                self.best_epoch = epoch
        elif np.isfinite(validation_loss) and (
            self.best_validation_loss is None or validation_loss < self.best_validation_loss
        ):
            self.best_validation_loss, self.best_epoch = validation_loss, epoch
        if self.stop_requested.is_set():
            self.interrupted = True
            return False
        if self.patience is not None and epoch - self.best_epoch >= self.patience:
            log.info(
                "early stopping: %s loss has not improved for %d epochs (best epoch %d)",
                "train" if validation_loss is None else "validation",
                self.patience,
                self.best_epoch,
            )
            return False
        return True


@dataclass(frozen=True)
class TrainingJob:
    """What a backend's training function needs."""

    params: DeepARHyperparameters
    spec: FeatureSpec
    entries: list[dict]
    num_batches_per_epoch: int
    control: TrainingControl
    checkpoint_dir: Path
    initial_weights: Optional[Path] = None  # a previous model's weights (warm start, warm_start.py)


def seed_everything(seed: Optional[int]) -> None:
    if seed is None:
        return
    random.seed(seed)
    np.random.seed(seed)
    try:
        import torch

        torch.manual_seed(seed)
    except ImportError:  # pragma: no cover - torch is always installed with this package
        pass


def training_entries(job: TrainingJob) -> list[dict]:
    """The dataset as the backend trains on it: beta's targets clipped into its open support."""
    return clip_for_beta(job.entries) if job.params.likelihood == "beta" else job.entries


def clip_for_beta(entries: list[dict]) -> list[dict]:
    return [{**e, "target": np.clip(e["target"], BETA_EPSILON, 1 - BETA_EPSILON)} for e in entries]


def checkpoint_fingerprint(params: DeepARHyperparameters, spec: FeatureSpec) -> dict[str, Any]:
    """What must match for a checkpoint to be resumed: the contract's network shape and the features."""
    shaping = network_shape(params.model_dump())
    return {**shaping, "cardinality": list(spec.cardinality), "num_dynamic_feat": spec.num_dynamic_feat}


def write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)


def read_checkpoint_state(checkpoint_dir: Path, fingerprint: dict) -> Optional[dict]:
    """The saved state if a compatible checkpoint exists, else None (with a log line saying why)."""
    state_file = checkpoint_dir / CHECKPOINT_STATE
    if not state_file.exists():
        return None
    try:
        state = json.loads(state_file.read_text())
    except ValueError:
        log.warning("ignoring unreadable checkpoint state %s", state_file)
        return None
    if state.get("completed"):
        log.info("checkpoint in %s is from a completed run: starting a new training", checkpoint_dir)
        return None
    if state.get("fingerprint") != fingerprint:
        log.warning(
            "ignoring checkpoint in %s: it was written with different hyperparameters or features", checkpoint_dir
        )
        return None
    try:  # the folder is synced from S3: its state must not name a file elsewhere (#23 item 3)
        checkpoint = confined_path(checkpoint_dir, str(state.get("file", "")), f"{state_file}: file")
    except UnsafePathError as error:
        log.warning("ignoring checkpoint state: %s", error)
        return None
    if checkpoint.parent != checkpoint_dir or not checkpoint.exists():
        return None
    return state


def resume_state(
    params: DeepARHyperparameters, spec: FeatureSpec, checkpoint_dir: Path, control: TrainingControl
) -> tuple[dict[str, Any], Optional[dict]]:
    """This job's checkpoint fingerprint and the compatible unfinished checkpoint's state, if any."""
    fingerprint = checkpoint_fingerprint(params, spec)
    state = read_checkpoint_state(checkpoint_dir, fingerprint)
    if state:
        control.start_epoch = int(state["epochs_done"])
        log.info("resuming from checkpoint %s after %d epoch(s)", checkpoint_dir / state["file"], control.start_epoch)
    return fingerprint, state


def save_checkpoint(
    checkpoint_dir: Path, filename: str, write: Callable[[str], None], epochs_done: int, fingerprint: dict
) -> None:
    """Write the checkpoint through ``write(path)`` to a temp file, rename it, then record its state."""
    tmp = checkpoint_dir / f".{filename}.tmp"
    write(str(tmp))
    os.replace(tmp, checkpoint_dir / filename)
    write_json_atomic(
        checkpoint_dir / CHECKPOINT_STATE, {"file": filename, "epochs_done": epochs_done, "fingerprint": fingerprint}
    )


@dataclass(frozen=True)
class HeldOut:
    """The training series with their last window held out, and the series it is scored on."""

    train: list[dict]
    validation: list[dict]  # whole series: GluonTS scores the last prediction_length points of each


def hold_out_last_window(entries: list[dict], prediction_length: int, context_length: int) -> Optional[HeldOut]:
    """Hold out the contract's backtest window (the last ``prediction_length`` points) of every series
    long enough to keep one full training window before it; None when no series is.

    The network trains on what precedes the window; the epoch whose weights forecast the held-out
    windows best is the one kept. Measured on bench.accuracy (docs/accuracy.md): a lower median wQL
    than keeping the lowest train loss, and half the seed spread on a multi-series data set.
    """
    train, validation = [], []
    for entry in entries:
        cuts = backtest_cuts(len(entry["target"]), prediction_length, 1, min_history=context_length + prediction_length)
        if not cuts:
            train.append(entry)  # too short to spare a window: trained on whole, not validated on
            continue
        cut = cuts[0]
        truncated = {**entry, "target": entry["target"][:cut]}
        if "feat_dynamic_real" in entry:
            truncated["feat_dynamic_real"] = entry["feat_dynamic_real"][..., :cut]
        train.append(truncated)
        validation.append(entry)
    return HeldOut(train, validation) if validation else None


def _shared_estimator_kwargs(params: DeepARHyperparameters, spec: FeatureSpec) -> dict[str, Any]:
    """The DeepAR arguments both GluonTS backends spell alike (the rest is mapped per backend below)."""
    return dict(
        freq=params.pandas_freq,
        prediction_length=params.prediction_length,
        context_length=params.context_length,
        num_layers=params.num_layers,
        dropout_rate=params.dropout_rate,
        cardinality=list(spec.cardinality) or None,
        embedding_dimension=[params.embedding_dimension] * spec.num_cat or None,
        scaling=params.likelihood != "beta",  # beta's targets are probabilities: never rescaled
        batch_size=params.mini_batch_size,
        num_parallel_samples=params.num_eval_samples,
    )


# ---------------------------------------------------------------- torch


def _torch_distr_output(likelihood: str):
    from gluonts.torch.distributions import BetaOutput, NegativeBinomialOutput, NormalOutput, StudentTOutput

    from ..distributions import LaplaceFixedScaleOutput

    outputs = (
        NormalOutput,
        BetaOutput,
        NegativeBinomialOutput,
        StudentTOutput,
        LaplaceFixedScaleOutput,
    )  # LIKELIHOODS order
    return dict(zip(LIKELIHOODS, outputs))[likelihood]()


def build_torch_estimator(
    params: DeepARHyperparameters, spec: FeatureSpec, num_batches_per_epoch: int, trainer_kwargs: dict[str, Any]
):
    from .windows import VectorisedDeepAREstimator  # GluonTS's estimator, training windows from numpy

    return VectorisedDeepAREstimator(
        **_shared_estimator_kwargs(params, spec),
        hidden_size=params.num_cells,
        lr=params.learning_rate,
        num_feat_dynamic_real=spec.num_dynamic_feat,
        num_feat_static_cat=spec.num_cat,
        distr_output=_torch_distr_output(params.likelihood),
        num_batches_per_epoch=num_batches_per_epoch,
        trainer_kwargs=trainer_kwargs,
    )


def train_torch(job: TrainingJob):
    params, spec, control, checkpoint_dir = job.params, job.spec, job.control, job.checkpoint_dir
    import lightning.pytorch as pl

    for name in ("lightning.pytorch", "lightning.fabric"):  # lightning resets its levels on import
        logging.getLogger(name).setLevel(logging.WARNING)
    fingerprint, state = resume_state(params, spec, checkpoint_dir, control)
    resume_path = str(checkpoint_dir / state["file"]) if state else None
    our_sigterm_handler = signal.getsignal(signal.SIGTERM)

    class EpochReporter(pl.Callback):
        """Feeds TrainingControl and writes the resumable checkpoint atomically after every epoch."""

        def on_train_start(self, trainer, pl_module) -> None:
            # Lightning installs its own SIGTERM handler as fit starts; on SIGTERM it raises SystemExit
            # after the current batch (exit 0, no model). Put ours back: the batch finishes, the epoch
            # closes with a checkpoint and the job writes the model (Lightning restores ours at teardown).
            if threading.current_thread() is threading.main_thread():  # signal.signal works only there
                signal.signal(signal.SIGTERM, our_sigterm_handler)
            trainer._signal_connector.received_sigterm = False

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            control.epoch_started_now()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if not control.batch_finished():
                trainer.should_stop = True  # finish this batch, then close the epoch and checkpoint

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            loss = float(trainer.callback_metrics.get("train_loss", float("nan")))
            # Lightning runs the validation loop before this hook: val_loss is this epoch's.
            validation = trainer.callback_metrics.get("val_loss")
            epoch = trainer.current_epoch
            go_on = control.epoch_finished(epoch, loss, None if validation is None else float(validation))
            if control.interrupted:
                # We handle SIGTERM ourselves; Lightning would otherwise raise SystemExit and lose the model.
                trainer._signal_connector.received_sigterm = False
            if not go_on:
                trainer.should_stop = True
            self._save(trainer, epoch)

        def _save(self, trainer, epoch: int) -> None:
            # Lightning resumes after the epoch this checkpoint closes, even one cut short by SIGTERM.
            save_checkpoint(checkpoint_dir, LAST_CHECKPOINT_TORCH, trainer.save_checkpoint, epoch + 1, fingerprint)

    session = distributed.active()  # several hosts: DDP, and callbacks that keep the hosts in step
    before, after = session.callbacks(control) if session else ([], [])
    callbacks: list = [*before, EpochReporter(), *after]
    if job.initial_weights is not None and not state:  # a resumed checkpoint of this job wins
        callbacks.append(
            torch_callback(job.initial_weights, lambda sha: setattr(control, "initial_weights_sha256", sha))
        )
    trainer_kwargs = {
        "max_epochs": params.epochs,
        "callbacks": callbacks,
        "default_root_dir": str(checkpoint_dir),
        "accelerator": "cpu",
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "deterministic": params.seed is not None,
    }
    if session:
        trainer_kwargs.update(session.trainer_kwargs())
    estimator = build_torch_estimator(params, spec, job.num_batches_per_epoch, trainer_kwargs)
    entries = training_entries(job)
    held_out = None if session else hold_out_last_window(entries, params.prediction_length, params.context_length)
    if held_out is None:
        log.info("no validation window: the epoch with the lowest train loss is kept")
        predictor = estimator.train(entries, ckpt_path=resume_path)
    else:
        log.info(
            "validation: the last %d points of %d of %d series are held out; the epoch that forecasts them best "
            "is kept",
            params.prediction_length,
            len(held_out.validation),
            len(entries),
        )
        predictor = estimator.train(held_out.train, validation_data=held_out.validation, ckpt_path=resume_path)
    if session:
        session.raise_if_training_failed()
    return predictor


# ---------------------------------------------------------------- mxnet


def _mx_distr_output(likelihood: str):
    from gluonts.mx.distribution import BetaOutput, GaussianOutput, NegativeBinomialOutput, StudentTOutput
    from gluonts.mx.distribution.laplace import LaplaceFixedVarianceOutput

    outputs = (
        GaussianOutput,
        BetaOutput,
        NegativeBinomialOutput,
        StudentTOutput,
        LaplaceFixedVarianceOutput,
    )  # LIKELIHOODS order
    return dict(zip(LIKELIHOODS, outputs))[likelihood]()


def build_mx_estimator(
    params: DeepARHyperparameters, spec: FeatureSpec, num_batches_per_epoch: int, epochs: int, callbacks: list
):
    from gluonts.mx.model.deepar import DeepAREstimator
    from gluonts.mx.trainer import Trainer

    trainer = Trainer(
        epochs=epochs,
        num_batches_per_epoch=num_batches_per_epoch,
        learning_rate=params.learning_rate,
        hybridize=True,
        callbacks=callbacks,
    )
    return DeepAREstimator(
        **_shared_estimator_kwargs(params, spec),
        trainer=trainer,
        num_cells=params.num_cells,
        use_feat_dynamic_real=spec.num_dynamic_feat > 0,
        use_feat_static_cat=spec.num_cat > 0,
        distr_output=_mx_distr_output(params.likelihood),
    )


def train_mxnet(job: TrainingJob):
    params, spec, control, checkpoint_dir = job.params, job.spec, job.control, job.checkpoint_dir
    import mxnet as mx
    from gluonts.mx.trainer.callback import Callback

    if params.seed is not None:
        mx.random.seed(params.seed)
    fingerprint, state = resume_state(params, spec, checkpoint_dir, control)

    class EpochReporter(Callback):
        def on_network_initializing_end(self, training_network) -> None:
            if state:  # the mx trainer has no resume of its own: warm-start the weights
                training_network.load_parameters(str(checkpoint_dir / state["file"]), ctx=mx.cpu())
            elif job.initial_weights is not None:
                control.initial_weights_sha256 = load_mxnet(training_network, job.initial_weights)

        def on_train_epoch_start(self, training_network) -> None:
            control.epoch_started_now()

        def on_train_batch_end(self, training_network) -> bool:
            return control.batch_finished()

        def on_epoch_end(self, epoch_no, epoch_loss, training_network, trainer, best_epoch_info, ctx) -> bool:
            epoch = control.start_epoch + epoch_no
            go_on = control.epoch_finished(epoch, float(epoch_loss))
            # mxnet reruns an epoch cut short by SIGTERM: it is not counted as done.
            epochs_done = epoch + (0 if control.interrupted else 1)
            save_checkpoint(
                checkpoint_dir, LAST_CHECKPOINT_MXNET, training_network.save_parameters, epochs_done, fingerprint
            )
            return go_on

    remaining = params.epochs - control.start_epoch
    if remaining <= 0:
        remaining = 1  # a finished checkpoint: one more epoch rebuilds the predictor from it
    estimator = build_mx_estimator(params, spec, job.num_batches_per_epoch, remaining, [EpochReporter()])
    return estimator.train(training_entries(job))


def train(
    params: DeepARHyperparameters,
    spec: FeatureSpec,
    entries: list[dict],
    num_batches_per_epoch: int,
    control: TrainingControl,
    checkpoint_dir: Path,
    initial_weights: Optional[Path] = None,
):
    """Train DeepAR on the chosen backend; return the GluonTS predictor (best epoch's weights)."""
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    trainer = train_torch if params.backend == "torch" else train_mxnet
    predictor = trainer(
        TrainingJob(params, spec, entries, num_batches_per_epoch, control, checkpoint_dir, initial_weights)
    )
    state_file = checkpoint_dir / CHECKPOINT_STATE
    if not control.interrupted and state_file.exists():
        # A finished run is not resumed: the next job with this checkpoint folder trains anew.
        write_json_atomic(state_file, {**json.loads(state_file.read_text()), "completed": True})
    return predictor


def set_num_samples(predictor, num_samples: int) -> None:
    """Make one forward pass draw ``num_samples`` paths where the backend allows it (torch)."""
    model = getattr(getattr(predictor, "prediction_net", None), "model", None)
    if model is not None and hasattr(model, "num_parallel_samples"):
        model.num_parallel_samples = num_samples
