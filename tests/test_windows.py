"""Vectorised training windows (sagemaker_deepar.training.windows) against GluonTS's own training loader.

For the same ``np.random`` seed, the batches must be the same as GluonTS's, field by field, value by
value: same window positions, padding at the series start, observed-value masks for NaN, time
features, age feature, dynamic features, static categories. Fast, in-process.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch
from gluonts.torch.distributions import BetaOutput, NegativeBinomialOutput, StudentTOutput
from gluonts.torch.model.deepar import DeepAREstimator

from sagemaker_deepar.errors import UserError
from sagemaker_deepar.training import windows
from sagemaker_deepar.training.windows import ExpectedNumInstanceWindows, VectorisedDeepAREstimator

from .conftest import OptMl, run_train, series, standard_job

PREDICTION_LENGTH = 6


def make_entries(freq: str, num_dynamic_feat: int, num_cat: int, seed: int = 0, in_unit: bool = False) -> list[dict]:
    """Series of varied lengths (shorter and longer than the past window, one too short to train on),
    different starts, missing values, including at the very start and end."""
    rng = np.random.default_rng(seed)
    lengths = [40, 3, 900, 120, 6, 7, 300, 75]
    entries = []
    for i, length in enumerate(lengths):
        target = (rng.uniform(0.05, 0.95, length) if in_unit else rng.gamma(2.0, 3.0, length)).astype(np.float32)
        target[rng.random(length) < 0.1] = np.nan
        if i == 3:
            target[0] = target[-1] = np.nan
        entry = {"start": pd.Period("2024-01-01 00:00", freq=freq) + 7 * i, "target": target}
        if num_cat:
            entry["feat_static_cat"] = [i % 3, i % 2][:num_cat]
        if num_dynamic_feat:
            entry["feat_dynamic_real"] = rng.normal(size=(num_dynamic_feat, length)).astype(np.float32)
        entries.append(entry)
    return entries


def estimator_kwargs(freq: str, num_dynamic_feat: int, num_cat: int, distr_output) -> dict:
    return dict(
        freq=freq,
        prediction_length=PREDICTION_LENGTH,
        context_length=12,
        num_layers=1,
        hidden_size=4,
        dropout_rate=0.0,
        num_feat_dynamic_real=num_dynamic_feat,
        num_feat_static_cat=num_cat,
        cardinality=[3, 2][:num_cat] or None,
        embedding_dimension=[2] * num_cat or None,
        distr_output=distr_output,
        scaling=not isinstance(distr_output, BetaOutput),
        batch_size=5,
        num_batches_per_epoch=7,
    )


def first_batches(estimator, entries: list[dict], count: int, seed: int, first_epoch_cut_at: int = 7) -> list[dict]:
    """The batches of two epochs (7 batches each), the first one cut short after ``first_epoch_cut_at``."""
    transformation = estimator.create_transformation()
    module = estimator.create_lightning_module()
    estimator._training_entries = entries  # what train_model records for the vectorised loader
    np.random.seed(seed)
    loader = estimator.create_training_data_loader(transformation.apply(entries, is_train=True), module)
    # Each epoch re-iterates the loader: the stream goes on, cycling over the series many times,
    # and GluonTS drops the windows of the series in progress at the end of an epoch.
    return list(itertools.chain(itertools.islice(loader, first_epoch_cut_at), loader))[:count]


@pytest.mark.parametrize(
    "freq, num_dynamic_feat, num_cat, distr_output",
    [
        ("h", 0, 0, StudentTOutput()),
        ("h", 2, 2, StudentTOutput()),
        ("2h", 1, 1, NegativeBinomialOutput()),
        ("D", 0, 2, BetaOutput()),  # dummy value 0.5: padding and imputation are not zeros
        ("W", 1, 0, StudentTOutput()),
        ("M", 0, 1, StudentTOutput()),
    ],
)
def test_batches_equal_gluonts_for_the_same_seed(freq, num_dynamic_feat, num_cat, distr_output):
    entries = make_entries(freq, num_dynamic_feat, num_cat, in_unit=isinstance(distr_output, BetaOutput))
    kwargs = estimator_kwargs(freq, num_dynamic_feat, num_cat, distr_output)
    theirs = first_batches(DeepAREstimator(**kwargs), entries, 14, seed=3)
    ours = first_batches(VectorisedDeepAREstimator(**kwargs), entries, 14, seed=3)
    assert len(theirs) == len(ours) == 14
    assert_same_batches(theirs, ours)
    padded = torch.cat([b["past_observed_values"] for b in ours])
    assert (padded == distr_output.value_in_support).any(), "the windows should include padding"
    assert (torch.cat([b["future_observed_values"] for b in ours]) == 0).any(), "and missing values"


def test_an_epoch_cut_short_continues_like_gluonts():
    """SIGTERM or early stopping ends an epoch early: the next one starts where GluonTS's would."""
    entries = make_entries("h", 1, 1)
    kwargs = estimator_kwargs("h", 1, 1, StudentTOutput())
    theirs = first_batches(DeepAREstimator(**kwargs), entries, 10, seed=8, first_epoch_cut_at=3)
    ours = first_batches(VectorisedDeepAREstimator(**kwargs), entries, 10, seed=8, first_epoch_cut_at=3)
    assert len(theirs) == len(ours) == 10
    assert_same_batches(theirs, ours)


def assert_same_batches(theirs: list[dict], ours: list[dict]) -> None:
    for index, (a, b) in enumerate(zip(theirs, ours)):
        assert set(b) == set(windows.TRAINING_FIELDS) <= set(a), index
        for name in windows.TRAINING_FIELDS:
            assert a[name].dtype == b[name].dtype, (index, name)
            assert a[name].shape == b[name].shape, (index, name)
            assert torch.equal(a[name], b[name]), (index, name)


def test_calendar_and_direct_time_features_agree(monkeypatch):
    entries = make_entries("h", 0, 0)
    kwargs = estimator_kwargs("h", 0, 0, StudentTOutput())
    with_calendar = first_batches(VectorisedDeepAREstimator(**kwargs), entries, 4, seed=5)
    monkeypatch.setattr(windows, "MIN_CALENDAR_SIZE", 0)
    monkeypatch.setattr(windows, "MAX_CALENDAR_FACTOR", 0)  # data spanning centuries: features per batch
    direct = first_batches(VectorisedDeepAREstimator(**kwargs), entries, 4, seed=5)
    for a, b in zip(with_calendar, direct):
        assert torch.equal(a["past_time_feat"], b["past_time_feat"])
        assert torch.equal(a["future_time_feat"], b["future_time_feat"])


def test_chunked_draws_give_the_same_windows(monkeypatch):
    sizes = np.array([5, 0, 1200, 40, 300, 1, 77])

    def windows_of(limit: int) -> tuple[np.ndarray, np.ndarray]:
        monkeypatch.setattr(windows, "MAX_DRAWS_PER_CALL", limit)
        np.random.seed(11)
        sampler = ExpectedNumInstanceWindows(sizes)
        draws = []
        while sampler.next_visit < 600:  # 100 passes
            draws.append(sampler.draw())
        return np.concatenate([s for s, _, _ in draws]), np.concatenate([p for _, p, _ in draws])

    whole_series, whole_points = windows_of(1 << 22)
    chunked_series, chunked_points = windows_of(50)
    count = min(len(whole_series), len(chunked_series))
    assert count > 400
    assert np.array_equal(whole_series[:count], chunked_series[:count])
    assert np.array_equal(whole_points[:count], chunked_points[:count])
    assert 1 not in whole_series  # no split point in a series shorter than prediction_length
    assert (whole_points < sizes[whole_series]).all() and (whole_points >= 0).all()


def test_about_one_window_per_series_per_pass():
    sizes = np.array([10, 1000, 200, 5000])
    sampler = ExpectedNumInstanceWindows(sizes)
    np.random.seed(0)
    counts = np.zeros(len(sizes))
    passes = 2000
    while sampler.next_visit < passes * len(sizes):
        np.add.at(counts, sampler.draw()[0], 1)
    # p = 1 / mean(size): windows per series ~ size / mean(size); one per series per pass on average.
    expected = sizes / sizes.mean() * passes
    assert np.allclose(counts, expected, rtol=0.1), (counts, expected)


def test_no_window_at_all_is_an_error():
    with pytest.raises(UserError, match="no series has at least prediction_length values"):
        ExpectedNumInstanceWindows(np.array([0, -3]))


def test_train_job_with_only_too_short_series_fails_with_a_client_error(opt_ml: OptMl):
    """GluonTS's loader would hang forever on this data: the job must say what is wrong instead."""
    standard_job(opt_ml, with_test=False)
    opt_ml.channel("train", [series(n=5), series(n=3)])  # prediction_length is 6
    result = run_train(opt_ml, timeout=240)
    assert result.returncode == 1, result.stderr[-2000:]
    failure = opt_ml.failure or ""
    # The reader may already refuse such data (naming the series); otherwise the loader must.
    assert failure.startswith("ClientError: ") and "prediction_length" in failure, failure
