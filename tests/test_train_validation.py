"""The held-out validation window (issue #22 item 5): the network trains on what precedes each series'
last window (the contract's backtest cut), and the epoch whose weights forecast those windows best is
the one kept, logged and reported; early stopping follows the same loss."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from sagemaker_deepar import contract
from sagemaker_deepar.training import backends

from .conftest import OptMl, run_train, series, standard_job


def entry(length: int, dynamic: bool = False) -> dict:
    result = {"start": pd.Period("2024-01-01 00:00", "h"), "target": np.arange(length, dtype=np.float32)}
    if dynamic:
        result["feat_dynamic_real"] = np.vstack([np.arange(length + 0.0), -np.arange(length + 0.0)]).astype(np.float32)
    return result


@pytest.mark.unit
def test_the_held_out_window_is_the_contracts_cut_and_short_series_train_whole():
    long, short = entry(60, dynamic=True), entry(20)
    held = backends.hold_out_last_window([long, short], prediction_length=6, context_length=12)
    assert held is not None
    (cut,) = contract.backtest_cuts(60, 6, 1)
    assert [len(e["target"]) for e in held.train] == [cut, 20]  # 20 < 12 + 6 + 6: no window to spare
    assert held.train[0]["feat_dynamic_real"].shape == (2, cut)
    assert held.validation == [long]  # whole: GluonTS scores its last prediction_length points


@pytest.mark.unit
def test_no_series_long_enough_means_no_validation():
    assert backends.hold_out_last_window([entry(20), entry(23)], prediction_length=6, context_length=12) is None


@pytest.mark.unit
def test_with_a_validation_loss_the_best_epoch_and_early_stopping_follow_it():
    control = backends.TrainingControl(total_epochs=10, batch_size=1, on_epoch=lambda *a: None, patience=2)
    go_on = [
        control.epoch_finished(epoch, train, validation)
        for epoch, (train, validation) in enumerate([(3.0, 2.0), (2.0, 1.0), (1.0, 1.5), (0.5, 1.2)])
    ]
    assert go_on == [True, True, True, False]  # validation last improved at epoch 1, patience 2
    assert (control.best_epoch, control.best_validation_loss, control.best_loss) == (1, 1.0, 0.5)


def test_the_kept_epoch_is_the_one_with_the_lowest_validation_loss(opt_ml: OptMl):
    # A learning rate this high makes the validation loss move from epoch to epoch, so the lowest is
    # rarely the last; patience 3 stops three epochs after it.
    standard_job(opt_ml, with_test=False, epochs="30", early_stopping_patience="3", learning_rate="0.05")
    result = run_train(opt_ml)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "validation: the last 6 points of 4 of 4 series are held out" in result.stderr
    losses = [float(v) for v in re.findall(r"epoch \d+/30: validation loss (\S+)", result.stderr)]
    train = opt_ml.metrics["train"]
    assert len(losses) == train["epochs_run"]
    assert train["best_epoch"] == int(np.argmin(losses))
    assert train["best_validation_loss"] == pytest.approx(min(losses), rel=1e-4)
    assert train["epochs_run"] - 1 - train["best_epoch"] == 3 or train["epochs_run"] == 30
    # The weights served are that epoch's: GluonTS's best-model checkpoint, named by its epoch.
    import torch

    (best,) = (opt_ml.root / "checkpoints" / "checkpoints").glob("epoch=*.ckpt")
    assert best.name.startswith(f"epoch={train['best_epoch']}-")
    kept = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
    served = torch.load(opt_ml.root / "model" / "predictor" / "prediction-net-state.pt", weights_only=True)
    assert served.keys() == kept.keys() and all(torch.equal(served[k], kept[k]) for k in kept)


def test_series_too_short_for_a_window_train_as_before(opt_ml: OptMl):
    opt_ml.hyperparameters()
    opt_ml.channel("train", [series(n=20, offset=10 + i) for i in range(3)])  # 20 < 12 + 6 + 6
    opt_ml.channels(train=None)
    result = run_train(opt_ml)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "no validation window: the epoch with the lowest train loss is kept" in result.stderr
    assert opt_ml.metrics["train"]["best_validation_loss"] is None
