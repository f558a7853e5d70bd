"""Validation windows carved from the end of the training series (the contract's cut), and members' forecasts
and scores on them.

A window is (history, truth): a member forecasts ``prediction_length`` points from the series up to the cut,
and is scored on the points after it with GluonTS's Evaluator at the job's ``test_quantiles`` (the metric
the test channel reports). The test channel is one more window per test series (cut = its length minus
``prediction_length``), so both go through the same code.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from ...contract import backtest_cuts, backtest_window
from ...ensemble import combine
from ...ensemble.members import History, LocalMember, MemberFailure
from ...errors import UserError

log = logging.getLogger(__name__)

# Backtests run on at most this many series (evenly spaced through the channel, the same ones every run):
# the classical members fit once per series and window, so their cost must not grow with the data set.
MAX_BACKTEST_SERIES = 200


@dataclass(frozen=True)
class Window:
    series: int  # index of the series in its channel
    cut: int
    history: dict[str, Any]  # a GluonTS entry: the series up to the cut (feat_dynamic_real through the horizon)
    truth: np.ndarray  # float64 (prediction_length,), NaN where missing

    @property
    def scored_entry(self) -> dict[str, Any]:
        """History + truth as one series, the form GluonTS's Evaluator reads actuals from."""
        return {"start": self.history["start"], "target": np.concatenate([self.history["target"], self.truth])}


def _window(entry: dict[str, Any], index: int, cut: int, prediction_length: int) -> Window:
    record = {"target": entry["target"], "dynamic_feat": entry.get("feat_dynamic_real")}
    history, truth = backtest_window(record, cut, prediction_length)
    gluonts_history = {**entry, "target": np.asarray(history["target"], dtype=entry["target"].dtype)}
    if history.get("dynamic_feat") is not None:
        gluonts_history["feat_dynamic_real"] = np.asarray(history["dynamic_feat"], dtype=np.float32)
    return Window(index, cut, gluonts_history, np.asarray(truth, dtype=np.float64))


def backtest_series(num_series: int, limit: int = MAX_BACKTEST_SERIES) -> list[int]:
    """Which series the backtests use: all of them, or ``limit`` evenly spaced ones."""
    if num_series <= limit:
        return list(range(num_series))
    return sorted({int(i) for i in np.linspace(0, num_series - 1, limit)})


def validation_windows(
    entries: Sequence[dict[str, Any]], prediction_length: int, windows: int, min_history: int, required: bool
) -> list[Window]:
    """The validation windows of the chosen series, oldest first per series.

    A series too short for ``windows`` windows keeps fewer (the oldest dropped: each history keeps at least
    ``min_history`` points), said in one log line. ``required`` (forecaster=ensemble): no window at all is a
    ClientError before any epoch runs; otherwise the leaderboard goes without validation scores.
    """
    chosen = backtest_series(len(entries))
    out: list[Window] = []
    reduced = 0
    for index in chosen:
        entry = entries[index]
        cuts = backtest_cuts(len(entry["target"]), prediction_length, windows, min_history)
        reduced += len(cuts) < windows
        out.extend(_window(entry, index, cut, prediction_length) for cut in cuts)
    if len(chosen) < len(entries):
        log.info("backtests use %d of the %d training series (evenly spaced)", len(chosen), len(entries))
    if reduced:
        log.warning(
            "backtest: %d of %d series are too short for backtest_windows=%d windows of prediction_length=%d after "
            "%d points of history (context_length + prediction_length): they get fewer windows (%d windows in all)",
            reduced, len(chosen), windows, prediction_length, min_history, len(out),
        )  # fmt: skip
    if not out:
        message = (
            f"backtest: no training series is long enough for one validation window (hyperparameter backtest_windows="
            f"{windows}): a window needs {min_history} points of history (context_length + prediction_length) plus "
            f"prediction_length = {prediction_length} points to score"
        )
        if required:
            raise UserError(
                f"{message}; forecaster=ensemble chooses its weights on these windows: use longer series, lower "
                "context_length / prediction_length, or forecaster=deepar"
            )
        log.warning("%s: the leaderboard has no validation scores", message)
    return out


def test_windows(entries: Sequence[dict[str, Any]], prediction_length: int) -> list[Window]:
    """The test channel as windows: each series' last ``prediction_length`` points are its truth."""
    return [
        _window(entry, index, len(entry["target"]) - prediction_length, prediction_length)
        for index, entry in enumerate(entries)
    ]


def training_view(entries: Sequence[dict[str, Any]], windows: Sequence[Window]) -> list[dict[str, Any]]:
    """The training series without their validation region: each series that has windows ends at its oldest
    window's cut (the network never trains on what it is scored on); others are kept whole."""
    first_cut: dict[int, int] = {}
    for window in windows:
        first_cut[window.series] = min(window.cut, first_cut.get(window.series, window.cut))
    view = []
    for index, entry in enumerate(entries):
        cut = first_cut.get(index)
        if cut is None:
            view.append(entry)
            continue
        short = {**entry, "target": entry["target"][:cut]}
        if entry.get("feat_dynamic_real") is not None:
            short["feat_dynamic_real"] = entry["feat_dynamic_real"][:, :cut]
        view.append(short)
    return view


@dataclass
class MemberRun:
    """A member's forecasts on a list of windows: quantiles at combine.GRID per window (NaN where it failed)."""

    quantiles: np.ndarray  # (windows, levels, prediction_length)
    seconds: float
    failure: Optional[str] = None  # why it failed, on the first window it failed on; None: no failure
    failed_windows: list[int] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return self.failure is None


def run_local(
    member: LocalMember, windows: Sequence[Window], prediction_length: int, rng: np.random.Generator
) -> MemberRun:
    """A local member fitted on each window's history; a window it fails on is NaN, the first reason kept."""
    started = time.perf_counter()
    out = np.full((len(windows), len(combine.GRID), prediction_length), np.nan)
    failures = []
    for position, window in enumerate(windows):
        history = History(window.history["start"], np.asarray(window.history["target"], dtype=np.float64))
        try:
            out[position] = member.quantiles(history, prediction_length, rng)
        except MemberFailure as failure:
            failures.append((position, str(failure)))
    seconds = time.perf_counter() - started
    if not failures:
        return MemberRun(out, seconds)
    position, reason = failures[0]
    where = f"series {windows[position].series} (cut at {windows[position].cut})"
    text = f"failed on {len(failures)} of {len(windows)} window(s), first on {where}: {reason}"
    return MemberRun(out, seconds, text, [p for p, _ in failures])


def run_deepar(predictor: Any, windows: Sequence[Window], num_samples: int) -> MemberRun:
    """DeepAR's samples on each window's history, as quantile functions."""
    from ..backends import set_num_samples

    started = time.perf_counter()
    set_num_samples(predictor, num_samples)
    try:
        forecasts = list(predictor.predict([w.history for w in windows], num_samples=num_samples))
    except Exception as error:  # the network is the served model: a failure here is ours, but never fatal
        text = f"{type(error).__name__}: {error}".splitlines()[0][:300]
        empty = np.full((len(windows), len(combine.GRID), 1), np.nan)
        return MemberRun(empty, time.perf_counter() - started, text, list(range(len(windows))))
    samples = np.stack([f.samples[:num_samples] for f in forecasts]).astype(np.float64)
    return MemberRun(combine.monotone(combine.quantiles_from_samples(samples)), time.perf_counter() - started)


def evaluate(windows: Sequence[Window], quantiles: np.ndarray, levels: Sequence[float]) -> dict[str, float]:
    """GluonTS's Evaluator on quantile functions (windows, GRID levels, steps) at ``levels``; the point
    forecast for RMSE is the distribution's mean (what a served ensemble's ``mean`` is)."""
    from ..metrics import evaluate_forecasts

    return evaluate_forecasts([w.scored_entry for w in windows], as_forecasts(windows, quantiles, levels), list(levels))


def as_forecasts(windows: Sequence[Window], quantiles: np.ndarray, levels: Sequence[float]) -> list[Any]:
    """GluonTS QuantileForecasts (mean and ``levels``), e.g. for ``metrics.write_forecasts``."""
    from gluonts.model.forecast import QuantileForecast

    at = combine.at_levels(quantiles, levels)
    means = combine.mean(quantiles)
    keys = [str(q) for q in levels] + ["mean"]
    return [
        QuantileForecast(np.vstack([at[i], means[i][None]]), start_date=w.history["start"] + w.cut, forecast_keys=keys)
        for i, w in enumerate(windows)
    ]
