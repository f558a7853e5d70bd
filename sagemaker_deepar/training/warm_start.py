"""Warm start (SageMaker incremental training): the ``model`` channel initialises the network.

The channel holds a previous job's ``model.tar.gz`` (SageMaker File mode copies the S3 object as
is) or its extracted files (``deepar-metadata.json`` and ``predictor/``). The network is
initialised from it only when everything that shapes the weights or the meaning of their inputs
matches: exactly what a checkpoint must match to be resumed (``backends.checkpoint_fingerprint``:
backend, time_freq, prediction_length, context_length, likelihood, num_cells, num_layers,
embedding_dimension, and the features: cardinality, number of dynamic features). Everything else
(epochs, learning_rate, mini_batch_size, dropout_rate, early stopping, data) may change.
Every problem is a UserError raised before any epoch runs.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from ..contract import ContractError, ModelArtifact, UnsafeArchiveError, extract_model_tarball
from ..errors import UserError
from ..paths import METADATA_FILE, PREDICTOR_DIR
from .hyperparameters import DeepARHyperparameters

log = logging.getLogger(__name__)

MODEL_CHANNEL = "model"
TORCH_WEIGHTS = "prediction-net-state.pt"  # PyTorchPredictor.serialize: the LightningModule's state dict
MXNET_WEIGHTS = "prediction_net-0000.params"  # RepresentableBlockPredictor.serialize: structural names


@dataclass
class PreviousModel:
    """A previous artifact, unpacked: where its weights are and what it was trained as."""

    channel_file: str  # what the channel held: "model.tar.gz" or "extracted files"
    artifact: ModelArtifact
    predictor_dir: Path
    source_sha256: Optional[str]  # of the tarball, when the channel held one
    unpacked: Optional[Path] = None  # temporary folder to remove once the weights are loaded

    @property
    def weights(self) -> Path:
        return self.predictor_dir / (TORCH_WEIGHTS if self.artifact.backend == "torch" else MXNET_WEIGHTS)

    def description(self, initial_weights_sha256: Optional[str]) -> dict[str, Any]:
        """What ``deepar-metadata.json`` records under ``warm_start``."""
        return {
            "channel": MODEL_CHANNEL,
            "source": self.channel_file,
            "source_sha256": self.source_sha256,
            "previous_train": self.artifact.train,
            "previous_training_statistics": self.artifact.training_statistics.get("train"),
            "initial_weights_sha256": initial_weights_sha256,
        }

    def cleanup(self) -> None:
        if self.unpacked is not None:
            shutil.rmtree(self.unpacked, ignore_errors=True)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _where(channel_dir: Path) -> str:
    return f"the '{MODEL_CHANNEL}' channel ({channel_dir})"


def _unpack(tarball: Path, channel_dir: Path) -> Path:
    target = Path(tempfile.mkdtemp(prefix="deepar-warm-start-"))
    try:
        extract_model_tarball(tarball, target)
    except UnsafeArchiveError as error:  # links, a bomb (#23 item 1): refused before anything was written
        shutil.rmtree(target, ignore_errors=True)
        raise UserError(f"{_where(channel_dir)}: {tarball.name} was refused: {error}") from None
    except (tarfile.TarError, OSError, EOFError) as error:
        shutil.rmtree(target, ignore_errors=True)
        raise UserError(
            f"{_where(channel_dir)}: {tarball.name} is not a readable tar.gz ({error}); "
            "give the model.tar.gz of a previous training job"
        ) from None
    return target


def _model_root(folder: Path) -> Optional[Path]:
    """The folder holding deepar-metadata.json: ``folder`` itself or its only subfolder."""
    if (folder / METADATA_FILE).exists():
        return folder
    subfolders = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if len(subfolders) == 1 and (subfolders[0] / METADATA_FILE).exists():
        return subfolders[0]
    return None


def locate(channel_dir: Path) -> PreviousModel:
    """Find the previous model in the channel: a tarball (unpacked to a temporary folder) or extracted files."""
    if not channel_dir.is_dir():
        raise UserError(f"{_where(channel_dir)} was configured but its folder does not exist")
    files = sorted(p for p in channel_dir.iterdir() if not p.name.startswith("."))
    if not files:
        raise UserError(
            f"{_where(channel_dir)} is empty: it must hold the model.tar.gz of a previous training job "
            "(Estimator(model_uri=...)) or its extracted files"
        )
    tarballs = [p for p in files if p.is_file() and p.name.endswith((".tar.gz", ".tgz", ".tar"))]
    root = _model_root(channel_dir)
    if root is not None:
        return _read(channel_dir, root, "extracted files", None, None)
    if len(tarballs) != 1:
        found = ", ".join(p.name for p in files[:5])
        raise UserError(
            f"{_where(channel_dir)} holds {found}: expected exactly one model.tar.gz of a previous "
            f"training job, or its extracted files ({METADATA_FILE} and {PREDICTOR_DIR}/)"
        )
    tarball = tarballs[0]
    unpacked = _unpack(tarball, channel_dir)
    root = _model_root(unpacked)
    if root is None:
        shutil.rmtree(unpacked, ignore_errors=True)
        raise UserError(
            f"{_where(channel_dir)}: {tarball.name} has no {METADATA_FILE}: it is not a model trained by this container"
        )
    atexit.register(shutil.rmtree, unpacked, ignore_errors=True)  # the job's end, whatever it is
    return _read(channel_dir, root, tarball.name, _sha256(tarball), unpacked)


def _read(channel_dir: Path, root: Path, what: str, sha: Optional[str], unpacked: Optional[Path]) -> PreviousModel:
    try:
        artifact = ModelArtifact.read(root)
    except (ContractError, OSError) as error:
        if unpacked is not None:
            shutil.rmtree(unpacked, ignore_errors=True)
        raise UserError(f"{_where(channel_dir)}: {what}: {error}") from None
    previous = PreviousModel(what, artifact, root / PREDICTOR_DIR, sha, unpacked)
    if not previous.weights.is_file():
        previous.cleanup()
        raise UserError(
            f"{_where(channel_dir)}: {what} has no {PREDICTOR_DIR}/{previous.weights.name}: the model is incomplete"
        )
    return previous


def mismatches(previous: ModelArtifact, params: DeepARHyperparameters, now: dict[str, Any]) -> list[str]:
    """Each network-shaping hyperparameter or feature that differs, as ``name: previous X, now Y``.

    ``now``: this job's ``backends.checkpoint_fingerprint`` (passed in: backends loads the weights with this
    module's functions, so this module does not import backends)."""
    before: dict[str, Any] = {
        **{name: previous.hyperparameters.get(name) for name in now},
        "backend": previous.backend,
        "prediction_length": previous.prediction_length,
        "context_length": previous.context_length,
        "likelihood": previous.likelihood,
        "cardinality": list(previous.cardinality),
        "num_dynamic_feat": previous.num_dynamic_feat,
    }
    problems = []
    for name, value in now.items():
        old = before[name]
        if name == "time_freq":  # "H" and "1H" are one frequency: compare pandas' spelling
            old, value = previous.freq, params.pandas_freq
        if old != value:
            problems.append(f"{name}: previous model {old!r}, this job {value!r}")
    return problems


def prepare(channel_dir: Path, params: DeepARHyperparameters, fingerprint: dict[str, Any]) -> PreviousModel:
    """The previous model, checked against this job's network (``fingerprint``: ``backends.checkpoint_fingerprint``);
    a UserError naming every mismatch otherwise."""
    previous = locate(channel_dir)
    problems = mismatches(previous.artifact, params, fingerprint)
    if problems:
        previous.cleanup()
        raise UserError(
            f"{_where(channel_dir)}: cannot warm-start from {previous.channel_file}: the network would not match "
            f"({'; '.join(problems)}). Use the previous model's values, or train without the '{MODEL_CHANNEL}' channel"
        )
    log.info(
        "warm start from %s (%s backend, trained %s epoch(s), final loss %s)",
        previous.channel_file,
        previous.artifact.backend,
        previous.artifact.train.get("epochs_run"),
        previous.artifact.train.get("final_loss"),
    )
    return previous


# ---------------------------------------------------------------- loading the weights


def state_dict_sha256(state: dict) -> str:
    """A digest of a torch state dict's names, shapes and values (equal weights, equal digest)."""
    return arrays_sha256({name: tensor.detach().cpu().numpy() for name, tensor in state.items()})


def load_torch(module, weights: Path) -> str:
    """Load the previous LightningModule's weights into ``module``; return the digest of what it now holds."""
    import torch

    state = torch.load(weights, map_location="cpu", weights_only=True)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise UserError(f"the '{MODEL_CHANNEL}' channel's weights do not fit this network: {error}") from None
    return state_dict_sha256(module.state_dict())


def torch_callback(weights: Path, on_loaded: Callable[[str], None]):
    """A Lightning callback loading ``weights`` in ``setup``: before any epoch, and before Lightning
    restores a checkpoint (so a resumed checkpoint of this job wins over the previous model)."""
    import lightning.pytorch as pl

    class WarmStart(pl.Callback):
        def setup(self, trainer, pl_module, stage: str) -> None:
            on_loaded(load_torch(pl_module, weights))
            log.info("network initialised from the previous model's weights")

    return WarmStart()


def load_mxnet(training_network, weights: Path) -> str:
    """Load the previous prediction network's parameters into the training network (same blocks, same names)."""
    import mxnet as mx

    try:
        training_network.load_parameters(str(weights), ctx=mx.cpu())
    except (AssertionError, mx.base.MXNetError) as error:
        raise UserError(f"the '{MODEL_CHANNEL}' channel's weights do not fit this network: {error}") from None
    # Structural names (as in the file), not the prefixed ones: the digest compares with the file's.
    params = training_network._collect_params_with_prefix()
    return arrays_sha256({name: params[name].data().asnumpy() for name in params})


def arrays_sha256(arrays: dict) -> str:
    """A digest of named numpy arrays' names, shapes and values (equal weights, equal digest)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.shape}:{array.dtype}".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
