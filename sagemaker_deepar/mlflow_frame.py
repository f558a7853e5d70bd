"""The mlflow side of the DeepAR contract: a long frame of series in, a long frame of forecasts out.

Shared by the server (mlflow's scoring formats on ``/invocations``) and the mlflow pyfunc, so both turn
the same rows into the same DeepAR instances. Standard library + numpy + ``contract`` only: no pandas
(the server's ONNX path does not import it) and no mlflow.

The frame has one row per (item, time step): ``item_id``, ``timestamp``, ``target`` (NaN/null for a
missing value), plus ``feat_static_cat_<i>`` (constant per item) and ``feat_dynamic_real_<j>`` when the
model was trained with them. Rows of one item follow each other in time at the model's frequency (items
may be interleaved). With dynamic features the last ``prediction_length`` rows of each item are the
forecast horizon: they carry the features and an empty target. The answer has ``prediction_length`` rows
per item, in the order the items first appear: ``item_id``, ``timestamp``, ``mean`` and one column per
quantile, named as the quantile was given (``"0.1"``).
"""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from typing import Any, Hashable, Mapping, Optional, Sequence

import numpy as np

from .contract import (
    ContractError,
    FeatureSpec,
    InferenceConfig,
    ModelArtifact,
    TimeFreq,
    parse_configuration,
    parse_time_freq,
)

ITEM_ID, TIMESTAMP, TARGET = "item_id", "timestamp", "target"
CAT_PREFIX, DYNAMIC_PREFIX = "feat_static_cat_", "feat_dynamic_real_"
# mlflow's scoring formats (mlflow.pyfunc.scoring_server), and the key of its inference parameters.
MLFLOW_INPUT_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
PARAMS_KEY = "params"
PARAM_NAMES = ("num_samples", "quantiles", "seed")
MAX_SEED = 2**63 - 1
# numpy datetime64 unit of a period, per time_freq unit (weeks count in days, 7 each).
_STEP_UNIT = {"min": "m", "h": "h", "H": "h", "D": "D", "W": "D", "M": "M"}

Columns = dict[str, list[Any]]


@dataclass(frozen=True)
class FrameSeries:
    """One item of the frame as a DeepAR series, with where its rows came from (for messages)."""

    item_id: Any
    start: np.datetime64  # the first row's period (at the model's frequency)
    target: np.ndarray  # float32, NaN where missing
    cat: Optional[list[int]]
    dynamic_feat: Optional[np.ndarray]  # (features, len(target) + prediction_length), float32
    rows: tuple[int, ...]  # frame row numbers of this item, in time order

    def instance(self) -> dict[str, Any]:
        """The DeepAR request instance (``/invocations``' JSON schema) for this series."""
        instance: dict[str, Any] = {
            "start": _format_timestamp(self.start, " "),
            "target": [None if math.isnan(v) else float(v) for v in self.target.tolist()],
        }
        if self.cat is not None:
            instance["cat"] = list(self.cat)
        if self.dynamic_feat is not None:
            instance["dynamic_feat"] = self.dynamic_feat.tolist()
        return instance


@dataclass(frozen=True)
class FrameParams:
    """The pyfunc's inference parameters: ``num_samples``, ``quantiles``, ``seed``."""

    config: InferenceConfig
    seed: Optional[int] = None


# ---------------------------------------------------------------- mlflow's request formats


def is_mlflow_request(payload: Any) -> bool:
    """Whether a decoded JSON body is one of mlflow's scoring formats rather than DeepAR's request.

    Both use ``instances``: DeepAR's instances have ``start``; mlflow's are the frame's rows (with
    ``timestamp``/``item_id``) or its columns (an object). ``configuration`` only exists in DeepAR's,
    ``params`` and the ``dataframe_*``/``inputs`` keys only in mlflow's.
    """
    if not isinstance(payload, dict) or "configuration" in payload:
        return False
    if PARAMS_KEY in payload or any(key in payload for key in MLFLOW_INPUT_KEYS if key != "instances"):
        return True
    instances = payload.get("instances")
    if isinstance(instances, dict):
        return True
    if isinstance(instances, list) and instances and isinstance(instances[0], dict):
        first = instances[0]
        return "start" not in first and (TIMESTAMP in first or ITEM_ID in first)
    return False


def parse_mlflow_request(payload: dict[str, Any]) -> tuple[Columns, dict[str, Any]]:
    """(columns, params) of an mlflow scoring request; ContractError names the key and the row."""
    keys = [key for key in MLFLOW_INPUT_KEYS if key in payload]
    unknown = sorted(set(payload) - {*MLFLOW_INPUT_KEYS, PARAMS_KEY})
    if unknown:
        raise ContractError(
            f"body: unknown field(s) {', '.join(unknown)}; an mlflow request has one of "
            f"{', '.join(MLFLOW_INPUT_KEYS)} and optionally {PARAMS_KEY}"
        )
    if len(keys) != 1:
        raise ContractError(f"body: expected exactly one of {', '.join(MLFLOW_INPUT_KEYS)}, got {len(keys)}")
    key = keys[0]
    params = payload.get(PARAMS_KEY) or {}
    if not isinstance(params, dict):
        raise ContractError(f"{PARAMS_KEY}: expected an object with {', '.join(PARAM_NAMES)}")
    data = payload[key]
    if key == "dataframe_split":
        return _split_columns(data), params
    if key == "dataframe_records" or isinstance(data, list):
        return _records_columns(data, key), params
    if isinstance(data, dict):
        return _dict_columns(data, key), params
    raise ContractError(f"{key}: expected a list of rows or an object of columns")


def _split_columns(data: Any) -> Columns:
    where = "dataframe_split"
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("columns"), list)
        or not isinstance(data.get("data"), list)
    ):
        raise ContractError(f'{where}: expected {{"columns": [...], "data": [[...], ...]}}')
    names = data["columns"]
    if not all(isinstance(name, str) for name in names) or len(set(names)) != len(names):
        raise ContractError(f"{where}.columns: expected distinct column names")
    columns: Columns = {name: [] for name in names}
    for row, values in enumerate(data["data"]):
        if not isinstance(values, list) or len(values) != len(names):
            raise ContractError(f"{where}.data[{row}]: expected a list of {len(names)} values (one per column)")
        for name, value in zip(names, values):
            columns[name].append(value)
    return columns


def _records_columns(data: Any, where: str) -> Columns:
    if not isinstance(data, list):
        raise ContractError(f"{where}: expected a list of rows (objects)")
    names: dict[str, None] = {}
    for row, record in enumerate(data):
        if not isinstance(record, dict):
            raise ContractError(f"{where}[{row}]: expected an object (one row of the frame)")
        names.update(dict.fromkeys(record))
    # A key absent from a row is a missing value, as pandas reads records.
    return {name: [record.get(name) for record in data] for name in names}


def _dict_columns(data: dict[str, Any], where: str) -> Columns:
    lengths = {name: len(values) if isinstance(values, list) else -1 for name, values in data.items()}
    bad = [name for name, length in lengths.items() if length < 0]
    if bad:
        raise ContractError(f"{where}.{bad[0]}: expected a list of values (one per row)")
    if len(set(lengths.values())) > 1:
        raise ContractError(
            f"{where}: columns of different lengths ({', '.join(f'{k}: {v}' for k, v in lengths.items())})"
        )
    return {name: list(values) for name, values in data.items()}


def parse_params(params: Mapping[str, Any], defaults: Optional[InferenceConfig] = None) -> FrameParams:
    """``num_samples``, ``quantiles`` (numbers or strings) and ``seed``; unknown names are an error."""
    unknown = sorted(set(params) - set(PARAM_NAMES))
    if unknown:
        raise ContractError(
            f"{PARAMS_KEY}: unknown parameter(s) {', '.join(unknown)}; allowed: {', '.join(PARAM_NAMES)}"
        )
    raw = {name: params[name] for name in ("num_samples", "quantiles") if params.get(name) is not None}
    config = parse_configuration(raw, PARAMS_KEY, defaults or InferenceConfig(), number_key=_quantile_name)
    config = InferenceConfig(config.num_samples, ("mean", "quantiles"), config.quantile_keys, config.quantile_levels)
    seed = params.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        raise ContractError(f"{PARAMS_KEY}.seed: {seed!r} is not an integer between 0 and {MAX_SEED}")
    return FrameParams(config, seed)


def _quantile_name(level: float) -> str:
    return json.dumps(level)  # 0.1 -> "0.1"


# ---------------------------------------------------------------- frame -> series


def frame_series(columns: Mapping[str, Sequence[Any]], artifact: ModelArtifact) -> list[FrameSeries]:
    """The frame's items as DeepAR series, in the order they first appear; ContractError names row and item."""
    features = artifact.features
    _check_columns(columns, features)
    n_rows = len(columns[ITEM_ID])
    if n_rows == 0:
        raise ContractError("frame: no rows")
    freq = parse_time_freq(artifact.freq, "deepar-metadata.json: freq")
    by_item: dict[Hashable, list[int]] = {}
    for row, item in enumerate(columns[ITEM_ID]):
        by_item.setdefault(_item_key(item, row), []).append(row)
    return [_series(item, rows, columns, features, freq, artifact.prediction_length) for item, rows in by_item.items()]


def _check_columns(columns: Mapping[str, Sequence[Any]], features: FeatureSpec) -> None:
    cats = [f"{CAT_PREFIX}{i}" for i in range(len(features.cardinality))]
    dynamic = [f"{DYNAMIC_PREFIX}{j}" for j in range(features.num_dynamic_feat)]
    expected = [ITEM_ID, TIMESTAMP, TARGET, *cats, *dynamic]
    missing = [name for name in expected if name not in columns]
    if missing:
        raise ContractError(f"column {missing[0]!r} is missing; this model takes the columns {', '.join(expected)}")
    extra = [name for name in columns if name not in expected]
    if extra:
        raise ContractError(f"column {extra[0]!r} is not used by this model; it takes {', '.join(expected)}")
    lengths = {len(columns[name]) for name in expected}
    if len(lengths) > 1:
        raise ContractError(f"frame: columns of different lengths ({', '.join(str(n) for n in sorted(lengths))})")


def _item_key(item: Any, row: int) -> Hashable:
    if item is None or (isinstance(item, float) and math.isnan(item)):
        raise ContractError(f"row {row}: item_id: missing")
    if isinstance(item, np.generic):
        item = item.item()
    if not isinstance(item, (str, int)) or isinstance(item, bool):
        raise ContractError(f"row {row}: item_id: {item!r} is not a string or an integer")
    return item


def _series(
    item: Any,
    rows: list[int],
    columns: Mapping[str, Sequence[Any]],
    features: FeatureSpec,
    freq: TimeFreq,
    horizon: int,
) -> FrameSeries:
    where = f"item {item!r}"
    periods = np.array([_period(columns[TIMESTAMP][row], freq, f"row {row} ({where}): timestamp") for row in rows])
    steps = _steps(periods, freq)
    for k in range(1, len(rows)):
        if steps[k] != 1:
            raise ContractError(_order_problem(where, rows, k, steps[k], columns[TIMESTAMP], freq))
    values = np.array([_number(columns[TARGET][row], f"row {row} ({where}): target") for row in rows], dtype=np.float32)
    dynamic = None
    history = len(rows)
    if features.num_dynamic_feat:
        if len(rows) < horizon:
            raise ContractError(
                f"{where}: {len(rows)} rows; with dynamic features the last {horizon} rows (prediction_length) "
                "are the forecast horizon, so at least that many are needed"
            )
        history = len(rows) - horizon
        future = [row for row, value in zip(rows[history:], values[history:]) if not math.isnan(float(value))]
        if future:
            raise ContractError(
                f"row {future[0]} ({where}): target: the last {horizon} rows of an item are the forecast horizon "
                "(the model has dynamic features); their target must be empty"
            )
        dynamic = np.array(
            [
                [
                    _number(columns[f"{DYNAMIC_PREFIX}{j}"][row], f"row {row} ({where}): {DYNAMIC_PREFIX}{j}", False)
                    for row in rows
                ]
                for j in range(features.num_dynamic_feat)
            ],
            dtype=np.float32,
        )
    cat = None
    if features.cardinality:
        cat = [
            _static_cat(columns[f"{CAT_PREFIX}{i}"], rows, where, f"{CAT_PREFIX}{i}")
            for i in range(len(features.cardinality))
        ]
    return FrameSeries(item, periods[0], values[:history], cat, dynamic, tuple(rows))


def _period(value: Any, freq: TimeFreq, where: str) -> np.datetime64:
    """A timestamp (string, datetime, numpy datetime64) as the start of its period at the model's frequency."""
    if isinstance(value, np.datetime64):
        stamp = value
    elif isinstance(value, dt.datetime):  # pandas' Timestamp is one
        if value.tzinfo is not None:
            raise ContractError(f"{where}: {value!s} has a time zone; DeepAR needs times without zone")
        stamp = np.datetime64(value.replace(tzinfo=None).isoformat())
    elif isinstance(value, dt.date):
        stamp = np.datetime64(value.isoformat())
    elif isinstance(value, str):
        text = value.strip().replace(" ", "T")
        if text.endswith("Z") or "+" in text[10:] or "-" in text[10:]:
            raise ContractError(f"{where}: {value!r} has a time zone; DeepAR needs times without zone")
        try:
            stamp = np.datetime64(text)
        except ValueError:
            raise ContractError(f"{where}: {value!r} is not a timestamp (expected YYYY-MM-DD HH:MM:SS)") from None
    else:
        raise ContractError(f"{where}: {value!r} is not a timestamp (expected YYYY-MM-DD HH:MM:SS)")
    if np.isnat(stamp):
        raise ContractError(f"{where}: missing")
    unit = _STEP_UNIT[freq.unit]
    if freq.unit == "W":  # a W-SUN week is labelled by the period's first day, the Monday
        day = stamp.astype("datetime64[D]")
        return day - (day.astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    # A period starts at its timestamp floored to the unit (pandas' Period: 5min periods may start at 00:03).
    return stamp.astype(f"datetime64[{unit}]")


def _steps(periods: np.ndarray, freq: TimeFreq) -> np.ndarray:
    """Each period's distance from the previous one, in steps of the frequency (0 for the first)."""
    ticks = periods.astype(np.int64)
    size = freq.multiple * (7 if freq.unit == "W" else 1)
    return np.concatenate(([0], np.diff(ticks))) / size


def _order_problem(where: str, rows: list[int], k: int, step: float, stamps: Sequence[Any], freq: TimeFreq) -> str:
    row, previous = rows[k], rows[k - 1]
    this, before = stamps[row], stamps[previous]
    if step == 0:
        return f"row {row} ({where}): timestamp {this!s} repeats the period of row {previous} ({before!s})"
    if step < 0:
        return f"row {row} ({where}): timestamp {this!s} comes before row {previous}'s ({before!s}); sort each item's rows by time"
    return (
        f"row {row} ({where}): timestamp {this!s} is {step:g} steps after row {previous}'s ({before!s}) at frequency "
        f"{freq.pandas}; add the missing rows with an empty target"
    )


def _number(value: Any, where: str, missing_ok: bool = True) -> float:
    if value is None or (isinstance(value, str) and value == "NaN"):
        number = math.nan
    elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
        number = float(value)
    else:
        raise ContractError(f"{where}: {value!r} is not a number (null or NaN for a missing value)")
    if math.isnan(number) and not missing_ok:
        raise ContractError(f"{where}: missing; dynamic features need a value on every row")
    if math.isinf(number) or abs(number) > 1e30:
        raise ContractError(f"{where}: {value!r} is too large in magnitude to forecast (at most 1e+30); rescale")
    return number


def _static_cat(values: Sequence[Any], rows: list[int], where: str, name: str) -> int:
    first = values[rows[0]]
    for row in rows:
        value = values[row]
        if isinstance(value, np.generic):
            value = value.item()
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ContractError(f"row {row} ({where}): {name}: {values[row]!r} is not a non-negative integer")
        if value != first:
            raise ContractError(
                f"row {row} ({where}): {name}: {values[row]!r} differs from the item's first row ({first!r}); "
                "a static category is one value per item"
            )
    return int(first)


# ---------------------------------------------------------------- forecasts -> frame


def horizon_timestamps(series: FrameSeries, artifact: ModelArtifact) -> np.ndarray:
    """The periods the forecast covers: the ``prediction_length`` steps after the series' target."""
    freq = parse_time_freq(artifact.freq, "deepar-metadata.json: freq")
    size = freq.multiple * (7 if freq.unit == "W" else 1)
    offsets = (series.target.size + np.arange(artifact.prediction_length)) * size
    return series.start + offsets.astype(np.int64).astype(f"timedelta64[{_STEP_UNIT[freq.unit]}]")


def forecast_rows(
    series: Sequence[FrameSeries], predictions: Sequence[Mapping[str, Any]], artifact: ModelArtifact
) -> list[dict[str, Any]]:
    """The long answer: one row per item and horizon step with ``item_id``, ``timestamp``, ``mean`` and quantiles.

    ``predictions`` are ``contract.predictions`` objects (``mean`` and ``quantiles``), one per series.
    """
    rows: list[dict[str, Any]] = []
    for item, prediction in zip(series, predictions):
        stamps = [_format_timestamp(stamp, "T") for stamp in horizon_timestamps(item, artifact)]
        # float32 scalars: written as the DeepAR answer writes its arrays (0.1, not 0.10000000149011612).
        means = np.asarray(prediction["mean"], dtype=np.float32)
        quantiles = {key: np.asarray(values, dtype=np.float32) for key, values in prediction["quantiles"].items()}
        for k, stamp in enumerate(stamps):
            row = {ITEM_ID: item.item_id, TIMESTAMP: stamp, "mean": means[k]}
            row.update({key: values[k] for key, values in quantiles.items()})
            rows.append(row)
    return rows


def _format_timestamp(stamp: np.datetime64, separator: str) -> str:
    """``2024-01-01T00:00:00`` (mlflow's JSON of a timestamp) or ``2024-01-01 00:00:00`` (DeepAR's start)."""
    return str(np.datetime_as_string(stamp.astype("datetime64[s]"), unit="s")).replace("T", separator)
