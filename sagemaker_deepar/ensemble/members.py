"""The ensemble's members and the settings that rebuild them at inference.

Local members (seasonal naive, AutoETS and AutoTheta from statsforecast, GluonTS's NPTS) are fitted on each
series' own history when it is forecast, in training (on each window's history) and at inference (on the
request's target): what the model artifact keeps of them is their settings. They read the target only:
``cat`` and ``dynamic_feat`` are DeepAR's alone. They see the last ``max_history`` points of a series, with
missing values filled by linear interpolation (leading ones dropped), which bounds a request's cost.
DeepAR is the job's network (its samples become a quantile function at ``combine.GRID``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from ..contract import parse_time_freq
from . import combine

log = logging.getLogger(__name__)

DEEPAR = "deepar"
SEASONAL_NAIVE = "seasonal_naive"
AUTO_ETS = "auto_ets"
AUTO_THETA = "auto_theta"
NPTS = "npts"
LOCAL_MEMBERS = (SEASONAL_NAIVE, AUTO_ETS, AUTO_THETA, NPTS)
MEMBERS = (*LOCAL_MEMBERS, DEEPAR)

# The most recent points a local member is fitted on: AutoETS costs ~0.1 s per series at 200 points and
# grows with the length (0.25-0.5 s at 1,000 on a loaded 2-core machine); a one-series ensemble request must
# answer in 150 ms.
MAX_HISTORY = 200
# statsforecast's ETS takes seasons up to 24; longer ones (weekly data's 52) fall back to no season.
MAX_SEASON = 24
# Cycles per time unit: minutes repeat hourly, hours daily, days weekly, months yearly.
_CYCLE = {"min": 60, "h": 24, "H": 24, "D": 7, "W": 1, "M": 12}
NPTS_SAMPLES = 200


class MemberFailure(Exception):
    """A member could not forecast one series (the reason is logged and, in training, on the leaderboard)."""


def season_length(time_freq: str) -> int:
    """The season a local member models for a frequency: 7 for daily data, 24 for hourly, 12 for 5min, 1 for weekly."""
    freq = parse_time_freq(time_freq)
    cycle = _CYCLE.get(freq.unit, 1)
    season = cycle // freq.multiple if cycle % freq.multiple == 0 else 1
    return season if 1 < season <= MAX_SEASON else 1


@dataclass(frozen=True)
class History:
    """One series as a local member sees it: its start (a pandas Period, for NPTS's calendar) and target."""

    start: Any
    target: np.ndarray  # float, NaN where missing


@dataclass(frozen=True)
class LocalMember:
    name: str
    season_length: int
    max_history: int = MAX_HISTORY

    @property
    def settings(self) -> dict[str, Any]:
        return {"season_length": self.season_length, "max_history": self.max_history}

    def quantiles(
        self, history: History, prediction_length: int, rng: Optional[np.random.Generator] = None
    ) -> np.ndarray:
        """(levels at combine.GRID, prediction_length) float64; raises MemberFailure."""
        start, y = prepared(history, self.max_history)
        season = self.season_length if len(y) >= 2 * self.season_length + 1 else 1
        try:
            if self.name == NPTS:
                values = _npts(start, y, prediction_length, rng)
            else:
                values = _statsforecast(self.name, y, prediction_length, season)
        except MemberFailure:
            raise
        except Exception as error:  # statsforecast / GluonTS failures on one series: the member sits this one out
            raise MemberFailure(f"{self.name}: {type(error).__name__}: {error}".splitlines()[0][:300]) from None
        if not np.isfinite(values).all():
            raise MemberFailure(f"{self.name}: non-finite forecast")
        if (y >= 0).all():  # a series that never went below zero is not forecast below zero
            values = np.maximum(values, 0.0)
        return combine.monotone(values)


def prepared(history: History, max_history: int) -> tuple[Any, np.ndarray]:
    """The last ``max_history`` points, leading gaps dropped, inner gaps interpolated; raises MemberFailure."""
    y = np.asarray(history.target, dtype=np.float64)[-max_history:]
    offset = len(history.target) - len(y)
    observed = np.flatnonzero(~np.isnan(y))
    if len(observed) < 2:
        raise MemberFailure("fewer than 2 observed values")
    first = int(observed[0])
    y = y[first:]
    gaps = np.isnan(y)
    if gaps.any():
        positions = np.arange(len(y))
        y = y.copy()
        y[gaps] = np.interp(positions[gaps], positions[~gaps], y[~gaps])
    start = history.start + offset + first if history.start is not None else None
    return start, y


_STATSFORECAST_LEVELS = list(range(1, 100))  # level L: the (1 - L/100)/2 and (1 + L/100)/2 quantiles


def _statsforecast(name: str, y: np.ndarray, prediction_length: int, season: int) -> np.ndarray:
    from statsforecast.models import AutoETS, AutoTheta, SeasonalNaive

    factories: dict[str, Callable[[], Any]] = {
        SEASONAL_NAIVE: lambda: SeasonalNaive(season_length=season),
        AUTO_ETS: lambda: AutoETS(season_length=season),
        AUTO_THETA: lambda: AutoTheta(season_length=season),
    }
    result = factories[name]().forecast(y=y, h=prediction_length, level=_STATSFORECAST_LEVELS)
    rows = []
    for k in range(1, combine.GRID_STEPS):  # GRID[k - 1] = k / GRID_STEPS
        if k * 2 < combine.GRID_STEPS:
            rows.append(result[f"lo-{combine.GRID_STEPS // 2 - k}"])
        elif k * 2 == combine.GRID_STEPS:
            rows.append(result["mean"])  # the intervals are symmetric around the point forecast
        else:
            rows.append(result[f"hi-{k - combine.GRID_STEPS // 2}"])
    return np.asarray(rows, dtype=np.float64)


def _npts(start: Any, y: np.ndarray, prediction_length: int, rng: Optional[np.random.Generator]) -> np.ndarray:
    from gluonts.model.npts import NPTSPredictor

    if start is None:
        raise MemberFailure("npts: the series has no start timestamp")
    if rng is not None:  # GluonTS's NPTS draws from numpy's global generator
        np.random.seed(int(rng.integers(2**32 - 1)))
    predictor = NPTSPredictor(prediction_length=prediction_length, use_seasonal_model=True)
    (forecast,) = predictor.predict([{"start": start, "target": y}], num_samples=NPTS_SAMPLES)
    return combine.quantiles_from_samples(forecast.samples[None].astype(np.float64))[0]


def local_members(time_freq: str) -> list[LocalMember]:
    season = season_length(time_freq)
    return [LocalMember(name, season) for name in LOCAL_MEMBERS]


def member_from_settings(name: str, settings: dict[str, Any]) -> LocalMember:
    """A local member as the artifact recorded it (``ModelArtifact.ensemble["members"]``)."""
    if name not in LOCAL_MEMBERS:
        raise ValueError(f"unknown local member {name!r}; known: {', '.join(LOCAL_MEMBERS)}")
    return LocalMember(name, int(settings.get("season_length", 1)), int(settings.get("max_history", MAX_HISTORY)))
