"""Long data frames <-> DeepAR requests: what the mlflow pyfunc (and any frame-speaking client) sends and gets.

A long frame has one row per (series, time step): ``item_id``, ``timestamp``, ``target`` (NaN where a value
is missing), optionally ``feat_static_cat_<k>`` (constant per item) and ``feat_dynamic_real_<k>``. When the
model has dynamic features, each item's last ``prediction_length`` rows are the forecast horizon: their
features are given and their ``target`` must be NaN. The answer is long too: ``item_id``, ``timestamp``,
``mean`` and one column per quantile, named as the server spells the quantile (``"0.1"``).

No mlflow here: the server may answer frames without importing it. Mistakes raise ``FrameError`` naming the
column, item and row (row = position in the frame as given, from 0); nothing lets a pandas error through.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from ..contract import DEFAULT_QUANTILES, FeatureSpec, parse_time_freq
from ..errors import UserError

ITEM, TIME, TARGET, MEAN = "item_id", "timestamp", "target", "mean"
REQUIRED_COLUMNS = (ITEM, TIME, TARGET)
STATIC_PREFIX, DYNAMIC_PREFIX = "feat_static_cat_", "feat_dynamic_real_"
_START_FORMAT = "%Y-%m-%d %H:%M:%S"


class FrameError(UserError, ValueError):
    """A frame or parameter the forecast cannot use; the message names the column, item or row."""


@dataclass(frozen=True)
class FrameModel:
    """What the conversion needs to know about the model (from ``deepar-metadata.json``)."""

    freq: str  # pandas frequency, as the artifact stores it ("h", "5min", "D", "W", "M"...)
    prediction_length: int
    features: FeatureSpec


@dataclass(frozen=True)
class FrameRequest:
    """A frame as a DeepAR ``{"instances", "configuration"}`` request, and how to read its answer back."""

    payload: dict[str, Any]
    item_ids: list[Any]
    horizons: list[pd.DatetimeIndex]  # the forecast's timestamps, per item
    quantile_keys: tuple[str, ...]


# ---------------------------------------------------------------- params


def configuration_from_params(params: Optional[Mapping[str, Any]]) -> dict[str, Any]:
    """pyfunc params (``num_samples``, ``quantiles``, ``seed``) as a DeepAR ``configuration``.

    A negative or missing seed means fresh random draws. Values are checked again by the contract's
    ``parse_configuration`` (its messages name ``configuration.<field>``).
    """
    params = dict(params or {})
    unknown = sorted(set(params) - {"num_samples", "quantiles", "seed"})
    if unknown:
        raise FrameError(f"params: unknown name(s) {', '.join(unknown)}; allowed: num_samples, quantiles, seed")
    config: dict[str, Any] = {"output_types": ["mean", "quantiles"]}
    if params.get("num_samples") is not None:
        config["num_samples"] = _integer(params["num_samples"], "params.num_samples")
    quantiles = params.get("quantiles")
    if quantiles is not None:
        if isinstance(quantiles, (str, bytes)) or not isinstance(quantiles, (Sequence, np.ndarray)):
            raise FrameError(f"params.quantiles: {quantiles!r}; expected a list of numbers between 0 and 1")
        config["quantiles"] = [_quantile_key(q, f"params.quantiles[{i}]") for i, q in enumerate(quantiles)]
    seed = params.get("seed")
    if seed is not None:
        seed = _integer(seed, "params.seed")
        if seed >= 0:
            config["seed"] = seed
    return config


def _integer(value: Any, where: str) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer, float, np.floating)):
        raise FrameError(f"{where}: {value!r} is not an integer")
    if isinstance(value, (float, np.floating)) and not float(value).is_integer():
        raise FrameError(f"{where}: {value!r} is not an integer")
    return int(value)


def _quantile_key(value: Any, where: str) -> str:
    """The quantile as the server spells it: "0.1" for 0.1 (the shortest repr), strings kept as given."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise FrameError(f"{where}: {value!r} is not a number between 0 and 1")
    return repr(float(value))


# ---------------------------------------------------------------- frame -> request


def frame_request(frame: Any, model: FrameModel, params: Optional[Mapping[str, Any]] = None) -> FrameRequest:
    """The DeepAR request for a long frame, one instance per item in order of first appearance."""
    if not isinstance(frame, pd.DataFrame):
        raise FrameError(f"input: expected a pandas DataFrame with columns {', '.join(REQUIRED_COLUMNS)}")
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise FrameError(
            f"column(s) {', '.join(missing)} missing; the frame has {', '.join(map(str, frame.columns)) or 'none'}"
        )
    if frame.empty:
        raise FrameError("input: the frame has no rows")
    statics = _feature_columns(frame, STATIC_PREFIX, len(model.features.cardinality))
    dynamics = _feature_columns(frame, DYNAMIC_PREFIX, model.features.num_dynamic_feat)
    frame = frame.reset_index(drop=True)
    items = frame[ITEM]
    null_items = np.flatnonzero(items.isna().to_numpy())
    if null_items.size:
        raise FrameError(f"column {ITEM}, row {int(null_items[0])}: missing item id")
    timestamps = _timestamps(frame[TIME])
    targets = _numbers(frame[TARGET], TARGET)
    configuration = configuration_from_params(params)
    calendar = _Calendar.of(timestamps, model.freq)
    columns = _NumberColumns(frame)
    instances, item_ids, starts = [], [], []
    for item_id, rows in frame.groupby(ITEM, sort=False).indices.items():
        instance, start = _instance(
            item_id, rows, frame, columns, timestamps, targets, statics, dynamics, model, calendar
        )
        instances.append(instance)
        item_ids.append(item_id)
        starts.append(start)
    keys = tuple(configuration.get("quantiles", DEFAULT_QUANTILES))
    horizons = calendar.horizons(starts, model.prediction_length)
    return FrameRequest({"instances": instances, "configuration": configuration}, item_ids, horizons, keys)


@dataclass(frozen=True)
class _Calendar:
    """Every row's period at the model's frequency, computed once per frame: pandas' period calls cost
    about a millisecond each, which per item made a 100-item frame cost more than its forecast."""

    freq: str
    ordinals: np.ndarray  # each row's period ordinal; one period further is +multiple ("5min": 5)
    multiple: int
    clock: np.ndarray  # timedelta64[ns]: each row's time after its period's start (10:30 in an hourly period)

    @classmethod
    def of(cls, timestamps: np.ndarray, freq: str) -> "_Calendar":
        periods = pd.PeriodIndex(pd.DatetimeIndex(timestamps), freq=freq)
        starts = periods.to_timestamp(how="start").to_numpy(dtype="datetime64[ns]")
        return cls(freq, periods.asi8, max(1, periods.freq.n), timestamps - starts)

    def horizon_start(self, rows: np.ndarray, history: int) -> tuple[int, np.timedelta64]:
        """(first forecast period's ordinal, clock offset) of an item whose first ``history`` rows are its past."""
        start = int(self.ordinals[rows[0]]) + history * self.multiple
        # Keep the clock time of the input (e.g. 10:30 with freq H) instead of the period's start.
        keep_clock = history and parse_time_freq_unit(self.freq) != "W"
        return start, self.clock[rows[history - 1]] if keep_clock else np.timedelta64(0, "ns")

    def horizons(self, starts: list[tuple[int, np.timedelta64]], length: int) -> list[pd.DatetimeIndex]:
        """The forecasts' timestamps, every item's at once: the ``length`` periods from each start."""
        if not starts:
            return []
        first = np.array([start for start, _ in starts], dtype=np.int64)
        ordinals = (first[:, None] + self.multiple * np.arange(length)[None, :]).ravel()
        stamps = pd.PeriodIndex.from_ordinals(ordinals, freq=self.freq).to_timestamp(how="start").to_numpy()
        stamps = stamps.reshape(len(starts), length) + np.array([offset for _, offset in starts])[:, None]
        return [pd.DatetimeIndex(row) for row in stamps]


class _NumberColumns:
    """A feature column as numbers, converted (and checked) once for the whole frame on first use."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame
        self.cache: dict[str, np.ndarray] = {}

    def __getitem__(self, column: str) -> np.ndarray:
        if column not in self.cache:
            self.cache[column] = _numbers(self.frame[column], column)
        return self.cache[column]


def _feature_columns(frame: pd.DataFrame, prefix: str, expected: int) -> list[str]:
    """``prefix0..prefix{expected-1}`` in order: exactly the ones the model was trained with."""
    found = {}
    for column in frame.columns:
        name = str(column)
        if name.startswith(prefix):
            suffix = name[len(prefix) :]
            if not re.fullmatch(r"\d+", suffix):
                raise FrameError(f"column {name}: expected {prefix}<index> (0, 1, ...)")
            found[int(suffix)] = name
    wanted = list(range(expected))
    if sorted(found) != wanted:
        names = ", ".join(f"{prefix}{k}" for k in wanted) or "none"
        have = ", ".join(found[k] for k in sorted(found)) or "none"
        raise FrameError(f"columns {prefix}*: the model was trained with {names}; the frame has {have}")
    return [found[k] for k in wanted]


def _timestamps(column: pd.Series) -> np.ndarray:
    try:
        parsed = pd.to_datetime(column, errors="coerce")
    except (TypeError, ValueError, OverflowError):
        parsed = pd.Series(pd.NaT, index=column.index)
    if getattr(parsed.dt, "tz", None) is not None:
        raise FrameError(f"column {TIME}: time zones are not supported (DeepAR's timestamps are naive)")
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if bad.size:
        row = int(bad[0])
        raise FrameError(f"column {TIME}, row {row}: {column.iloc[row]!r} is not a timestamp")
    return parsed.to_numpy(dtype="datetime64[ns]")


def _numbers(column: pd.Series, name: str) -> np.ndarray:
    values = pd.to_numeric(column, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.flatnonzero(np.isnan(values) & column.notna().to_numpy())
    if bad.size:
        row = int(bad[0])
        raise FrameError(f"column {name}, row {row}: {column.iloc[row]!r} is not a number")
    return values


def _instance(
    item_id: Any,
    rows: np.ndarray,
    frame: pd.DataFrame,
    columns: _NumberColumns,
    timestamps: np.ndarray,
    targets: np.ndarray,
    statics: list[str],
    dynamics: list[str],
    model: FrameModel,
    calendar: _Calendar,
) -> tuple[dict[str, Any], tuple[int, np.timedelta64]]:
    where = f"item {item_id!r}"
    stamps = timestamps[rows]
    _check_regular(stamps, rows, calendar, where)
    target = targets[rows]
    history = len(rows) - (model.prediction_length if dynamics else 0)
    if dynamics:
        if history < 0:
            raise FrameError(
                f"{where}: {len(rows)} rows; with dynamic features the last {model.prediction_length} rows "
                "(prediction_length) are the forecast horizon, so at least that many are needed"
            )
        future = np.flatnonzero(~np.isnan(target[history:]))
        if future.size:
            raise FrameError(
                f"{where}, row {int(rows[history + future[0]])}: target is set inside the forecast horizon (the "
                f"item's last {model.prediction_length} rows hold the future dynamic features; target must be NaN)"
            )
    instance: dict[str, Any] = {
        "start": pd.Timestamp(stamps[0]).strftime(_START_FORMAT),
        "target": [None if math.isnan(v) else float(v) for v in target[:history]],
    }
    if statics:
        cats = []
        for column in statics:
            values = frame[column].to_numpy()[rows]
            if pd.isna(values).any():
                raise FrameError(
                    f"{where}, column {column}, row {int(rows[np.flatnonzero(pd.isna(values))[0]])}: missing"
                )
            if not (values == values[0]).all():
                row = int(rows[np.flatnonzero(values != values[0])[0]])
                raise FrameError(
                    f"{where}, column {column}, row {row}: differs from the item's first row (a static category)"
                )
            cats.append(_category(values[0], f"{where}, column {column}"))
        instance["cat"] = cats
    if dynamics:
        series = []
        for column in dynamics:
            values = columns[column][rows]
            gaps = np.flatnonzero(np.isnan(values))
            if gaps.size:
                raise FrameError(
                    f"{where}, column {column}, row {int(rows[gaps[0]])}: missing (dynamic features have no gaps)"
                )
            series.append(values.tolist())
        instance["dynamic_feat"] = series
    return instance, calendar.horizon_start(rows, history)


def _category(value: Any, where: str) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise FrameError(f"{where}: {value!r} is not an integer category") from None
    if not number.is_integer():
        raise FrameError(f"{where}: {value!r} is not an integer category")
    return int(number)


def _check_regular(stamps: np.ndarray, rows: np.ndarray, calendar: _Calendar, where: str) -> None:
    """Strictly increasing, one period apart: a missing value is a row with target NaN, never a skipped step."""
    if stamps.size < 2:
        return
    freq = calendar.freq
    gaps = np.diff(calendar.ordinals[rows])  # ordinals advance by the frequency's multiple per period ("5min": 5)
    multiple = calendar.multiple
    # Order first (a swapped pair is "unsorted", not "a gap"), then regularity.
    out_of_order = np.flatnonzero(gaps <= 0)
    irregular = np.flatnonzero(gaps != multiple)
    for k in out_of_order[:1] if out_of_order.size else irregular[:1]:
        row, previous = int(rows[k + 1]), pd.Timestamp(stamps[k])
        current = pd.Timestamp(stamps[k + 1])
        if gaps[k] == 0:
            what = f"duplicate timestamp {current} (same {freq} period as row {int(rows[k])})"
        elif gaps[k] < 0:
            what = f"timestamp {current} comes before {previous} (row {int(rows[k])}); sort by timestamp"
        else:
            what = (
                f"timestamp {current} is not the {freq} period after {previous}; give missing values as rows "
                "with target NaN"
            )
        raise FrameError(f"{where}, row {row}: {what}")


def parse_time_freq_unit(freq: str) -> str:
    """The unit letter(s) of a pandas frequency string such as ``5min``, ``2h``, ``W``."""
    try:
        return parse_time_freq(freq).unit
    except Exception:  # noqa: BLE001 - pandas spellings beyond time_freq's (e.g. "W-SUN"): compare by prefix
        return re.sub(r"^\d+", "", freq).split("-")[0]


# ---------------------------------------------------------------- answer -> frame


def predictions_frame(request: FrameRequest, predictions: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The long answer: item_id, timestamp, mean, one column per quantile (in the request's order)."""
    if len(predictions) != len(request.item_ids):
        raise RuntimeError(f"{len(predictions)} predictions for {len(request.item_ids)} items")
    blocks = []
    for item_id, horizon, prediction in zip(request.item_ids, request.horizons, predictions):
        block = {ITEM: [item_id] * len(horizon), TIME: horizon, MEAN: prediction["mean"]}
        for key in request.quantile_keys:
            block[key] = prediction["quantiles"][key]
        blocks.append(pd.DataFrame(block))
    return pd.concat(blocks, ignore_index=True)


_INSTANCE = re.compile(r"^instances\[(\d+)\]\.")


def located(message: str, request: FrameRequest) -> str:
    """A request error's ``instances[i].`` prefix replaced by the item it came from."""
    match = _INSTANCE.match(message)
    if match is None:
        return message.replace("configuration.", "params.", 1) if message.startswith("configuration.") else message
    index = int(match.group(1))
    item = request.item_ids[index] if index < len(request.item_ids) else index
    return f"item {item!r}: {message[match.end() :]}"
