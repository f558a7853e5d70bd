"""Warm start through the real `container/train`: the `model` channel initialises the network from a
previous artifact (tarball or extracted files, torch and mxnet), and every mismatch or unusable
channel is a ClientError before any epoch."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from sagemaker_deepar.training.warm_start import arrays_sha256

from .conftest import OptMl, run_train, series

# A job that barely moves the weights: 1 batch at a learning rate of 1e-9 (Adam steps are ~lr each).
FROZEN = {"epochs": "1", "num_batches_per_epoch": "1", "learning_rate": "1e-9"}


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]


def job(root: Path, backend: str = "torch", n_series: int = 4, offset: float = 10.0, **hyperparameters: str) -> OptMl:
    m = OptMl(root)
    m.hyperparameters(backend=backend, **hyperparameters)
    m.channel("train", [series(n=60, offset=offset + 3 * i, cat=[i % 2]) for i in range(n_series)])
    m.channels(train="application/jsonlines")
    return m


def give_model_channel(m: OptMl, previous: Path, as_tarball: bool) -> Path:
    """Put ``previous`` (a model folder) into ``m``'s model channel the way SageMaker File mode delivers it."""
    channel = m.root / "input" / "data" / "model"
    channel.mkdir(parents=True)
    if as_tarball:  # what Estimator(model_uri=".../model.tar.gz") delivers: the tarball, not extracted
        with tarfile.open(channel / "model.tar.gz", "w:gz") as archive:
            for item in sorted(previous.iterdir()):
                archive.add(item, arcname=item.name)
    else:
        shutil.copytree(previous, channel, dirs_exist_ok=True)
    m.config(
        "inputdataconfig.json",
        {
            "train": {"ContentType": "application/jsonlines", "TrainingInputMode": "File"},
            "model": {"ContentType": "application/x-sagemaker-model", "TrainingInputMode": "File"},
        },
    )
    return channel


def torch_weights(model_dir: Path) -> dict[str, np.ndarray]:
    import torch

    state = torch.load(model_dir / "predictor" / "prediction-net-state.pt", map_location="cpu", weights_only=True)
    return {name: tensor.numpy() for name, tensor in state.items()}


def mxnet_weights(model_dir: Path) -> dict[str, np.ndarray]:
    import mxnet as mx

    return {
        name: array.asnumpy()
        for name, array in mx.nd.load(str(model_dir / "predictor" / "prediction_net-0000.params")).items()
    }


@pytest.fixture(scope="module")
def previous_torch(tmp_path_factory) -> Path:
    m = job(tmp_path_factory.mktemp("previous") / "opt_ml")
    assert_ok(run_train(m))
    return m.root / "model"


def test_torch_warm_start_from_a_tarball_starts_from_the_previous_weights(tmp_path, previous_torch: Path):
    m = job(tmp_path / "opt_ml", offset=12.0, **FROZEN)  # new data, same network
    channel = give_model_channel(m, previous_torch, as_tarball=True)
    result = run_train(m)
    assert_ok(result)
    before = torch_weights(previous_torch)
    recorded = m.metadata["warm_start"]
    # What the network held as training began, digested by the job, equals the previous model's file.
    assert recorded["initial_weights_sha256"] == arrays_sha256(before)
    assert recorded["source"] == "model.tar.gz"
    assert recorded["source_sha256"] == hashlib.sha256((channel / "model.tar.gz").read_bytes()).hexdigest()
    assert recorded["previous_train"]["epochs_run"] == 2
    # And independently: one step at lr 1e-9 leaves the previous weights (a cold start would be random).
    after = torch_weights(m.root / "model")
    assert before.keys() == after.keys()
    for name in before:
        np.testing.assert_allclose(after[name], before[name], atol=1e-6, err_msg=name)
    # The channel is not training data: the statistics count only the 4 train series.
    assert m.metadata["training_statistics"]["train"]["num_series"] == 4
    assert "warm start from model.tar.gz" in result.stderr


def test_mxnet_warm_start_from_extracted_files(tmp_path):
    previous = job(tmp_path / "previous", backend="mxnet", epochs="1")
    assert_ok(run_train(previous))
    m = job(tmp_path / "opt_ml", backend="mxnet", offset=12.0, **FROZEN)
    give_model_channel(m, previous.root / "model", as_tarball=False)
    assert_ok(run_train(m))
    before = mxnet_weights(previous.root / "model")
    assert m.metadata["warm_start"]["initial_weights_sha256"] == arrays_sha256(before)
    assert m.metadata["warm_start"]["source"] == "extracted files"
    after = mxnet_weights(m.root / "model")
    for name in before:
        np.testing.assert_allclose(after[name], before[name], atol=1e-6, err_msg=name)


def assert_client_error_before_training(m: OptMl, result: subprocess.CompletedProcess, *expected: str) -> str:
    assert result.returncode == 1, result.stderr[-3000:]
    failure = m.failure or ""
    assert failure.startswith("ClientError: "), failure
    for text in expected:
        assert text in failure, (text, failure)
    assert "train loss" not in result.stdout  # no epoch ran
    assert not (m.root / "model" / "deepar-metadata.json").exists()
    return failure


def test_mismatching_hyperparameters_and_features_name_each_with_old_and_new(tmp_path, previous_torch: Path):
    m = OptMl(tmp_path / "opt_ml")
    m.hyperparameters(num_cells="16", context_length="24", epochs="1")
    m.channel("train", [series(n=60, offset=10 + i) for i in range(4)])  # no "cat" this time
    give_model_channel(m, previous_torch, as_tarball=True)
    failure = assert_client_error_before_training(
        m,
        run_train(m),
        "cannot warm-start from model.tar.gz",
        "num_cells: previous model 8, this job 16",
        "context_length: previous model 12, this job 24",
        "cardinality: previous model [2], this job []",
    )
    assert "num_layers" not in failure and "prediction_length" not in failure  # only what differs


def test_a_model_of_the_other_backend_is_a_client_error(tmp_path, previous_torch: Path):
    m = job(tmp_path / "opt_ml", backend="mxnet", epochs="1")
    give_model_channel(m, previous_torch, as_tarball=False)
    assert_client_error_before_training(m, run_train(m), "backend: previous model 'torch', this job 'mxnet'")


def test_a_model_channel_archive_with_links_is_refused_before_training(tmp_path, previous_torch: Path):
    """#23 item 1 through container/train: the symlink chain that wrote outside the unpack folder."""
    from .test_security import symlink_chain_archive

    m = job(tmp_path / "opt_ml", epochs="1")
    channel = give_model_channel(m, previous_torch, as_tarball=True)
    shutil.rmtree(channel)
    channel.mkdir()
    symlink_chain_archive(channel / "model.tar.gz")
    expected = "model.tar.gz was refused: "
    assert_client_error_before_training(m, run_train(m), expected)
    assert "member 'a' is a link to '.'" in (m.failure or "")


@pytest.mark.parametrize("content", ["empty", "corrupt", "not-a-model", "incomplete"])
def test_unusable_model_channel_is_a_client_error(tmp_path, previous_torch: Path, content: str):
    m = job(tmp_path / "opt_ml", epochs="1")
    channel = give_model_channel(m, previous_torch, as_tarball=content == "incomplete")
    if content == "incomplete":  # a tarball whose predictor lost its weights
        shutil.rmtree(channel)
        channel.mkdir()
        broken = tmp_path / "broken"
        shutil.copytree(previous_torch, broken)
        (broken / "predictor" / "prediction-net-state.pt").unlink()
        with tarfile.open(channel / "model.tar.gz", "w:gz") as archive:
            for item in sorted(broken.iterdir()):
                archive.add(item, arcname=item.name)
    else:
        shutil.rmtree(channel)
        channel.mkdir()
    if content == "corrupt":
        (channel / "model.tar.gz").write_bytes(b"\x1f\x8b" + bytes(range(200)))
    if content == "not-a-model":
        with tarfile.open(channel / "model.tar.gz", "w:gz") as archive:
            archive.add(m.root / "input" / "data" / "train" / "data.json", arcname="data.json")
    expected = {
        "empty": "the 'model' channel",
        "corrupt": "model.tar.gz is not a readable tar.gz",
        "not-a-model": "model.tar.gz has no deepar-metadata.json",
        "incomplete": "has no predictor/prediction-net-state.pt",
    }[content]
    assert_client_error_before_training(m, run_train(m), expected)
    if content == "empty":
        assert "is empty" in (m.failure or "")
