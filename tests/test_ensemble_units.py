"""The ensemble's library code in process (issue #22): the combination, greedy selection, the served
forecaster's fallbacks, the windows, the hyperparameters and the artifact's schema."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sagemaker_deepar.contract import ContractError, ModelArtifact
from sagemaker_deepar.ensemble import combine, members
from sagemaker_deepar.ensemble.forecaster import EnsembleForecaster
from sagemaker_deepar.ensemble.members import History, LocalMember, MemberFailure
from sagemaker_deepar.errors import UserError
from sagemaker_deepar.training.ensemble import backtest, selection
from sagemaker_deepar.training.hyperparameters import parse_hyperparameters

pytestmark = pytest.mark.unit

REQUIRED = {"time_freq": "D", "prediction_length": "7", "context_length": "14", "epochs": "1"}


def normal_quantiles(loc: np.ndarray, scale: float) -> np.ndarray:
    """(levels, steps) quantile function of N(loc, scale) at combine.GRID."""
    from scipy.stats import norm

    return loc[None, :] + scale * norm.ppf(combine.GRID)[:, None]


# ---------------------------------------------------------------- combination


def test_weighted_quantile_average_is_vincentization_and_never_crosses():
    a = normal_quantiles(np.zeros(3), 1.0)
    b = normal_quantiles(np.full(3, 10.0), 2.0)
    combined = combine.weighted_average(np.stack([a, b]), [0.25, 0.75])
    assert np.allclose(combined, 0.25 * a + 0.75 * b)
    assert (np.diff(combined, axis=0) >= 0).all()
    # Averaging quantiles of two normals gives the normal with averaged location and scale (not a mixture).
    assert np.allclose(combined, normal_quantiles(np.full(3, 7.5), 1.75))
    with pytest.raises(ValueError):
        combine.weighted_average(np.stack([a, b]), [0.0, 0.0])


def test_samples_reproduce_the_combined_quantiles_and_mean():
    q = normal_quantiles(np.array([5.0, 6.0, 7.0]), 2.0)[None]  # one series
    samples = combine.sample_paths(q, 1000, np.random.default_rng(0))
    assert samples.shape == (1, 1000, 3) and samples.dtype == np.float32 and samples.flags["C_CONTIGUOUS"]
    levels = [0.1, 0.25, 0.5, 0.75, 0.9]
    assert np.allclose(np.quantile(samples, levels, axis=1)[:, 0], combine.at_levels(q, levels)[0], atol=0.01)
    assert np.allclose(samples.mean(axis=1), combine.mean(q), atol=1e-3)


def test_at_levels_is_exact_on_the_grid_and_flat_beyond_it():
    q = normal_quantiles(np.zeros(2), 1.0)
    assert np.allclose(combine.at_levels(q, combine.GRID[[0, 99, 198]]), q[[0, 99, 198]])
    assert np.allclose(combine.at_levels(q, [0.0001, 0.9999]), q[[0, -1]])


def test_available_average_leaves_a_failed_member_out_of_that_series_only():
    good = np.stack([normal_quantiles(np.zeros(2), 1.0)] * 2)  # (series 2, levels, steps)
    other = np.stack([normal_quantiles(np.full(2, 4.0), 1.0)] * 2)
    other[1] = np.nan  # fails on series 1
    combined, used = combine.weighted_average_available(np.stack([good, other]), [0.5, 0.5])
    assert used.tolist() == [[True, True], [True, False]]
    assert np.allclose(combined[0], 0.5 * good[0] + 0.5 * other[0])
    assert np.allclose(combined[1], good[1])  # the remaining member reweighted to 1


# ---------------------------------------------------------------- selection


def test_greedy_selection_mixes_members_biased_in_opposite_directions():
    truth = np.full((6, 4), 10.0)
    low = np.stack([normal_quantiles(np.full(4, 8.0), 0.5)] * 6)
    high = np.stack([normal_quantiles(np.full(4, 12.0), 0.5)] * 6)
    noise = np.stack([normal_quantiles(np.full(4, 10.0), 20.0)] * 6)  # centred but far too wide
    levels = [0.1, 0.5, 0.9]
    weights, losses = selection.greedy_weights({"low": low, "high": high, "noise": noise}, truth, levels)
    assert weights["low"] == pytest.approx(0.5) and weights["high"] == pytest.approx(0.5) and weights["noise"] == 0
    singles = {n: selection.validation_loss(combine.at_levels(q, levels), truth, levels) for n, q in
               {"low": low, "high": high, "noise": noise}.items()}  # fmt: skip
    assert min(losses) < min(singles.values())
    assert sum(weights.values()) == pytest.approx(1.0)


def test_greedy_selection_keeps_a_dominant_member_alone():
    truth = np.arange(12, dtype=float).reshape(3, 4)
    perfect = np.stack([normal_quantiles(row, 0.01) for row in truth])
    poor = np.stack([normal_quantiles(row + 5, 1.0) for row in truth])
    weights, _ = selection.greedy_weights({"poor": poor, "perfect": perfect}, truth, [0.5])
    assert weights == {"poor": 0.0, "perfect": 1.0}


def test_selection_loss_agrees_with_gluonts_evaluator():
    rng = np.random.default_rng(3)
    start = pd.Period("2024-01-01", freq="D")
    windows = [
        backtest.Window(i, 20, {"start": start, "target": rng.uniform(5, 15, 20)}, rng.uniform(5, 15, 4))
        for i in range(5)
    ]
    q = np.stack([normal_quantiles(rng.uniform(5, 15, 4), 2.0) for _ in windows])
    levels = [0.1, 0.5, 0.9]
    by_evaluator = backtest.evaluate(windows, q, levels)["mean_wQuantileLoss"]
    truth = np.stack([w.truth for w in windows])
    assert selection.validation_loss(combine.at_levels(q, levels), truth, levels) == pytest.approx(
        by_evaluator, rel=1e-6
    )


# ---------------------------------------------------------------- members and windows


@pytest.mark.parametrize(
    "freq, season", [("D", 7), ("H", 24), ("5min", 12), ("2H", 12), ("W", 1), ("M", 12), ("min", 1), ("7H", 1)]
)
def test_season_length_by_frequency(freq, season):
    assert members.season_length(freq) == season


def test_history_drops_leading_gaps_and_interpolates_inner_ones():
    start = pd.Period("2024-01-01", freq="D")
    begin, y = members.prepared(History(start, np.array([np.nan, np.nan, 1.0, np.nan, 3.0])), 200)
    assert begin == start + 2 and y.tolist() == [1.0, 2.0, 3.0]
    with pytest.raises(MemberFailure, match="fewer than 2 observed"):
        members.prepared(History(start, np.array([np.nan, 4.0])), 200)


@pytest.mark.parametrize("name", members.LOCAL_MEMBERS)
def test_each_local_member_gives_a_monotone_quantile_function(name):
    start = pd.Period("2024-01-01", freq="D")
    target = 10 + 3 * np.sin(np.arange(120) * 2 * np.pi / 7)
    q = LocalMember(name, 7).quantiles(History(start, target), 7, np.random.default_rng(0))
    assert q.shape == (len(combine.GRID), 7) and (np.diff(q, axis=0) >= -1e-9).all()
    assert np.isfinite(q).all() and (q >= 0).all()  # a non-negative history is not forecast below zero


def test_windows_reduce_for_short_series_and_fail_named_when_none_fits(caplog):
    start = pd.Period("2024-01-01", freq="D")
    entries = [{"start": start, "target": np.arange(60, dtype=np.float32)}, {"start": start, "target": np.ones(27)}]
    with caplog.at_level(logging.WARNING):
        windows = backtest.validation_windows(entries, 7, 3, 21, required=True)
    assert [(w.series, w.cut) for w in windows] == [(0, 39), (0, 46), (0, 53)]  # series 1: 27 < 21 + 7
    assert "1 of 2 series are too short for backtest_windows=3" in caplog.text
    assert windows[0].history["target"].tolist() == list(range(39)) and windows[0].truth.tolist() == list(range(39, 46))
    view = backtest.training_view(entries, windows)
    assert len(view[0]["target"]) == 39 and len(view[1]["target"]) == 27  # the validation region is withheld
    with pytest.raises(UserError, match="backtest_windows=3"):
        backtest.validation_windows(entries[1:], 7, 3, 21, required=True)
    assert backtest.validation_windows(entries[1:], 7, 3, 21, required=False) == []


def test_backtests_use_at_most_the_series_limit_evenly_spaced():
    chosen = backtest.backtest_series(1000, limit=200)
    assert len(chosen) == 200 and chosen[0] == 0 and chosen[-1] == 999
    assert backtest.backtest_series(5) == [0, 1, 2, 3, 4]


# ---------------------------------------------------------------- the served forecaster


def ensemble_artifact(weights: dict[str, float]) -> ModelArtifact:
    return ModelArtifact(
        backend="torch",
        freq="D",
        prediction_length=7,
        context_length=14,
        likelihood="student-T",
        forecaster="ensemble",
        ensemble={
            "combination": "quantile_average",
            "grid_steps": combine.GRID_STEPS,
            "members": [
                {"name": n, "weight": w, "settings": {"season_length": 7} if n != "deepar" else {"num_samples": 50}}
                for n, w in weights.items()
            ],
        },
    )


def fake_deepar(calls: list):
    def sample(entries, num_samples, rng):
        calls.append(len(entries))
        return np.stack([np.random.default_rng(1).normal(50.0, 1.0, (num_samples, 7)) for _ in entries])

    return sample


def entry(values) -> dict:
    return {"start": pd.Period("2024-01-01", freq="D"), "target": np.asarray(values, dtype=np.float32)}


def test_weight_zero_members_are_not_run(monkeypatch):
    ran = []
    original = LocalMember.quantiles

    def spy(self, history, prediction_length, rng=None):
        ran.append(self.name)
        return original(self, history, prediction_length, rng)

    monkeypatch.setattr(LocalMember, "quantiles", spy)
    calls: list = []
    weights = {"seasonal_naive": 0.6, "auto_ets": 0.0, "auto_theta": 0.0, "npts": 0.0, "deepar": 0.4}
    forecaster = EnsembleForecaster(ensemble_artifact(weights), fake_deepar(calls))
    samples = forecaster.sample([entry(10 + np.arange(60) % 7)], 100, np.random.default_rng(0))
    assert samples.shape == (1, 100, 7)
    assert ran == ["seasonal_naive"] and calls == [1]
    assert forecaster.members == ["seasonal_naive", "deepar"]


def test_a_member_failing_on_one_instance_falls_back_to_the_others(caplog):
    calls: list = []
    weights = {"seasonal_naive": 0.5, "auto_ets": 0.0, "auto_theta": 0.0, "npts": 0.0, "deepar": 0.5}
    forecaster = EnsembleForecaster(ensemble_artifact(weights), fake_deepar(calls))
    lonely = entry([np.nan] * 59 + [3.0])  # one observed value: seasonal naive cannot fit it
    with caplog.at_level(logging.WARNING):
        q = forecaster.quantiles([entry(np.full(60, 10.0)), lonely], np.random.default_rng(0))
    assert "member seasonal_naive failed on series 1 of the batch" in caplog.text
    assert np.median(q[1]) == pytest.approx(50.0, abs=1.0)  # DeepAR's alone
    assert 25 < np.median(q[0]) < 35  # half seasonal naive (10), half DeepAR (50)


def test_deepar_answers_when_every_weighted_member_fails(caplog):
    calls: list = []
    weights = {"seasonal_naive": 0.5, "auto_ets": 0.5, "auto_theta": 0.0, "npts": 0.0, "deepar": 0.0}
    forecaster = EnsembleForecaster(ensemble_artifact(weights), fake_deepar(calls))
    with caplog.at_level(logging.WARNING):
        samples = forecaster.sample([entry([np.nan] * 10 + [1.0])], 20, None)
    assert np.isfinite(samples).all() and calls == [1]
    assert "DeepAR answers them" in caplog.text


# ---------------------------------------------------------------- hyperparameters and artifact


def test_forecaster_and_backtest_windows_hyperparameters():
    params = parse_hyperparameters(REQUIRED)
    assert params.forecaster == "deepar" and params.backtest_windows == 3
    assert parse_hyperparameters({**REQUIRED, "forecaster": "ensemble", "backtest_windows": "5"}).backtest_windows == 5
    with pytest.raises(UserError, match=r"hyperparameter 'backtest_windows' = '0' is invalid: forecaster=ensemble"):
        parse_hyperparameters({**REQUIRED, "forecaster": "ensemble", "backtest_windows": "0"})
    with pytest.raises(UserError, match=r"hyperparameter 'forecaster' = 'stacking' is invalid"):
        parse_hyperparameters({**REQUIRED, "forecaster": "stacking"})
    with pytest.raises(UserError, match=r"hyperparameter 'backtest_windows' = '-1' is invalid"):
        parse_hyperparameters({**REQUIRED, "backtest_windows": "-1"})


def test_old_metadata_files_load_as_deepar_and_round_trip(tmp_path: Path):
    old = {
        "format_version": 1,
        "backend": "torch",
        "freq": "h",
        "prediction_length": 6,
        "context_length": 12,
        "likelihood": "student-T",
        "cardinality": [],
        "num_dynamic_feat": 0,
        "hyperparameters": {"time_freq": "H"},
        "library_versions": {},
        "training_statistics": {},
        "train": {},
        "test_metrics": None,
    }
    artifact = ModelArtifact.from_dict(old)
    assert (
        artifact.forecaster == "deepar" and artifact.ensemble is None and artifact.ensemble_weights == {"deepar": 1.0}
    )
    assert artifact.to_dict() == old  # nothing added to an older file
    new = ensemble_artifact({"auto_theta": 0.7, "deepar": 0.3})
    new.write(tmp_path)
    read = ModelArtifact.read(tmp_path)
    assert read.schema_version == 2 and read.forecaster == "ensemble"
    assert read.ensemble_weights == {"auto_theta": 0.7, "deepar": 0.3}


@pytest.mark.parametrize(
    "change, message",
    [
        ({"forecaster": "stacking"}, "forecaster: 'stacking'"),
        ({"ensemble": None}, "ensemble: expected an object"),
        ({"ensemble": {"members": [{"name": "npts", "weight": 2}]}}, r"members\[0\]"),
        ({"ensemble": {"members": [{"name": "npts", "weight": 0}]}}, "every member has weight 0"),
    ],
)
def test_bad_ensemble_sections_are_named(change, message):
    data = {**ensemble_artifact({"npts": 1.0}).to_dict(), **change}
    with pytest.raises(ContractError, match=message):
        ModelArtifact.from_dict(json.loads(json.dumps(data)))


def test_newer_format_versions_are_refused():
    data = {**ensemble_artifact({"npts": 1.0}).to_dict(), "format_version": 3}
    with pytest.raises(ContractError, match="newer than this code reads"):
        ModelArtifact.from_dict(data)
