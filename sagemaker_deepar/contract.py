"""The DeepAR contract, stated once: what a trained model is, what features it takes, how a series is
cut into train and test, how ``time_freq`` is spelled for pandas, and how JSON Lines are read and written.

Standard library and numpy only (orjson when it is installed), so the SageMaker SDK environments,
a Lambda bundle and the container all import the same definitions without torch, GluonTS or pandas.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import re
import shutil
import tarfile
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

import numpy as np

try:  # fast and numpy-aware; absent from the SDK environments and Lambda bundles, where json does
    import orjson
except ImportError:  # pragma: no cover - exercised by the import test with orjson blocked
    orjson = None  # type: ignore[assignment]

METADATA_FILE = "deepar-metadata.json"
SCHEMA_VERSION = 1  # deepar-metadata.json's "format_version"; bump on any change a reader must know about
# Batch transform sizing shared by the server (default MaxPayloadInMB for its timeout) and
# evaluation.batch (timeout for a chosen MaxPayloadInMB): bench/batch_memory.py --throughput measured
# series of 200 points (~1.4 kB of JSON each, 100 samples) on one worker of a 2-core machine; halved
# for headroom.
BATCH_BODY_BYTES_PER_SECOND = 80_000


def batch_payload_timeout(max_payload_mb: int) -> int:
    """Seconds one worker needs for a body of ``max_payload_mb`` at the measured rate (at least SageMaker's 60)."""
    return max(60, -(-max_payload_mb * 2**20 // BATCH_BODY_BYTES_PER_SECOND))


BACKENDS = ("torch", "mxnet")
# The trained network as ONNX (torch backend), beside predictor/; ModelArtifact.onnx describes it.
ONNX_FILE = "network.onnx"
ONNX_LIKELIHOODS = ("student-T", "gaussian", "deterministic-L1")  # what onnx_forecast draws in numpy


class ContractError(ValueError):
    """Something does not follow the contract; the message says what, where and what is allowed."""


# ---------------------------------------------------------------- time_freq


_TIME_FREQ = re.compile(r"(?P<multiple>[1-9][0-9]*)?(?P<unit>M|W|D|H|h|min)")
_PERIOD_UNIT = {"M": "M", "W": "W", "D": "D", "H": "h", "h": "h", "min": "min"}  # pandas >= 2.2: lower-case hours
# numpy's datetime64 unit a period of each time_freq unit is counted in (weeks in days: see _WEEK_ORIGIN)
_NUMPY_UNIT = {"M": "M", "W": "D", "D": "D", "H": "h", "h": "h", "min": "m"}
# A period's length as SQL intervals spell it (weeks in days), for queries that step by time_freq.
_INTERVAL_UNIT = {"M": "months", "W": "days", "D": "days", "H": "hours", "h": "hours", "min": "minutes"}
# pandas' "W" is W-SUN: weeks run Monday to Sunday. Day 4 after the epoch, 1970-01-05, is the first Monday.
_WEEK_ORIGIN = 4


@dataclass(frozen=True)
class TimeFreq:
    """DeepAR's ``time_freq``: an optional integer multiple of ``M``, ``W``, ``D``, ``H`` or ``min``.

    Also the period grid every component resamples a lake to (the converter, the monitor, the forecast
    API, the long-CSV reader), so a period means the same thing everywhere: see ``ordinals``.
    """

    multiple: int
    unit: str

    @property
    def _prefix(self) -> str:
        return str(self.multiple) if self.multiple != 1 else ""

    @property
    def pandas(self) -> str:
        """The pandas period/offset alias (``2H`` -> ``2h``, ``M`` -> ``M``); equal for equal frequencies."""
        return self._prefix + _PERIOD_UNIT[self.unit]

    @property
    def numpy_unit(self) -> str:
        """The datetime64 unit one period is counted in (``D`` for weeks: seven of them)."""
        return _NUMPY_UNIT[self.unit]

    @property
    def interval(self) -> str:
        """One period's length as a SQL interval: ``2H`` -> ``2 hours``, ``W`` -> ``7 days``, ``3M`` -> ``3 months``."""
        return f"{self.multiple * (7 if self.unit == 'W' else 1)} {_INTERVAL_UNIT[self.unit]}"

    def ordinals(self, stamps: Any) -> np.ndarray[Any, np.dtype[np.int64]]:
        """The period each timestamp (datetime64 values, or anything numpy reads as such) falls in, as an
        integer: consecutive periods differ by one.

        One unit is the pandas period ``Timestamp.to_period(freq)`` gives: a calendar minute, hour, day,
        Monday-to-Sunday week or calendar month. A multiple ``k`` groups ``k`` of them counted from
        1970-01-01 (weeks from Monday 1970-01-05), so ``2H`` periods start at even hours, ``5min`` ones
        at :00, :05 ..., ``3M`` ones in January, April, July and October, whatever the data's first point.
        """
        stamps = np.asarray(stamps)
        if stamps.dtype.kind != "M":  # strings, datetime objects: no nanoseconds, so years up to 9999 fit
            stamps = stamps.astype("datetime64[s]")
        units = stamps.astype(f"datetime64[{self.numpy_unit}]")
        counted = units.astype(np.int64)
        if self.unit == "W":
            counted = (counted - _WEEK_ORIGIN) // 7
        return counted // self.multiple

    def starts(self, ordinals: Any) -> np.ndarray[Any, np.dtype[np.datetime64]]:
        """When each period begins (datetime64[s]): the label a series' ``start`` carries."""
        counted = np.asarray(ordinals, dtype=np.int64) * self.multiple
        if self.unit == "W":
            counted = counted * 7 + _WEEK_ORIGIN
        return counted.astype(f"datetime64[{self.numpy_unit}]").astype("datetime64[s]")

    def label(self, ordinal: int) -> str:
        """A period's start as DeepAR's ``start`` spells it: ``YYYY-MM-DD HH:MM:SS``."""
        return str(self.starts([ordinal])[0]).replace("T", " ")

    def ordinal_of(self, start: str, where: str = "start") -> int:
        """The period a ``start`` string (ISO date, or date and time; UTC when it names a zone) falls in."""
        return int(self.ordinals([_datetime64(start, where)])[0])


def _datetime64(text: Any, where: str) -> np.datetime64:
    try:
        moment = datetime.fromisoformat(str(text).strip())
    except ValueError:
        raise ContractError(f"{where}: {text!r} is not a timestamp (expected YYYY-MM-DD HH:MM:SS)") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(timezone.utc).replace(tzinfo=None)
    return np.datetime64(moment, "s")


def parse_time_freq(value: str, where: str = "time_freq") -> TimeFreq:
    match = _TIME_FREQ.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ContractError(
            f"{where}: {value!r}: expected an optional integer multiple followed by one of "
            "M, W, D, H, min (for example 5min, 2H, D)"
        )
    return TimeFreq(multiple=int(match["multiple"] or 1), unit=match["unit"])


def pandas_freq(time_freq: str) -> str:
    """``time_freq`` as pandas 2.2 wants it (``2H`` -> ``2h``)."""
    return parse_time_freq(time_freq).pandas


def same_time_freq(first: str, second: str) -> bool:
    """One frequency spelled two ways (``H``, ``1H``, ``1h``); values that are no time_freq compare as text."""
    try:
        return parse_time_freq(first).pandas == parse_time_freq(second).pandas
    except ContractError:
        return first == second


# More periods than one series of readings can sensibly span (19 years of minutes): beyond it a timestamp
# is wrong (a device clock at 9999-12-31), and resampling would fill memory with empty periods.
MAX_PERIODS = 10_000_000


@dataclass(frozen=True)
class PeriodMeans:
    """Readings averaged per period of ``freq``: row ``i`` of ``means`` is period ``first + i``, one
    column per value column; NaN where a period holds no (non-missing) reading."""

    freq: TimeFreq
    first: int
    means: np.ndarray[Any, np.dtype[np.float64]]

    @property
    def start(self) -> str:
        return self.freq.label(self.first)

    def window(self, first: int, periods: int, column: int = 0) -> np.ndarray[Any, np.dtype[np.float64]]:
        """Column ``column`` over periods ``first`` .. ``first + periods - 1``; NaN outside what was read."""
        out = np.full(periods, np.nan)
        low, high = max(first, self.first), min(first + periods, self.first + len(self.means))
        if low < high:
            out[low - first : high - first] = self.means[low - self.first : high - self.first, column]
        return out


def period_means(stamps: Any, values: Any, time_freq: str | TimeFreq, where: str = "time_freq") -> PeriodMeans:
    """The mean of ``values`` (one column, or rows x columns; NaN = missing) per period of ``time_freq``,
    from the period of the earliest timestamp to that of the latest, empty periods NaN: the lake
    resampling the converter, the monitor, the forecast API and the long-CSV reader share."""
    freq = time_freq if isinstance(time_freq, TimeFreq) else parse_time_freq(time_freq, where)
    ordinals = freq.ordinals(stamps)
    columns = np.asarray(values, dtype=float)
    columns = columns[:, None] if columns.ndim == 1 else columns
    if not len(ordinals):
        return PeriodMeans(freq, 0, np.empty((0, columns.shape[1])))
    first = int(ordinals.min())
    index = ordinals - first
    periods = int(index.max()) + 1
    if periods > MAX_PERIODS:
        raise ContractError(
            f"readings from {freq.label(first)} to {freq.label(first + periods - 1)} span {periods:,} periods of "
            f"{freq.pandas}, more than {MAX_PERIODS:,}: is a timestamp wrong?"
        )
    means = np.full((periods, columns.shape[1]), np.nan)
    for column in range(columns.shape[1]):
        present = ~np.isnan(columns[:, column])
        counts = np.bincount(index[present], minlength=periods)
        sums = np.bincount(index[present], weights=columns[present, column], minlength=periods)
        np.divide(sums, counts, out=means[:, column], where=counts > 0)
    return PeriodMeans(freq, first, means)


# ---------------------------------------------------------------- records

# A DeepAR record's fields, in a training channel and in a request's instances: ``start`` and ``target``
# required, ``cat`` and ``dynamic_feat`` when the model uses them. Any other field (an id) is no input of
# the model: batch functions forward it to the forecast line unchanged.
RECORD_FIELDS = ("start", "target", "cat", "dynamic_feat")
REQUIRED_RECORD_FIELDS = ("start", "target")


def record_inputs(record: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``record`` that are the model's input (RECORD_FIELDS)."""
    return {name: value for name, value in record.items() if name in RECORD_FIELDS}


def record_extras(record: Mapping[str, Any]) -> dict[str, Any]:
    """The fields of ``record`` that are not (ids and the like, forwarded to the answer)."""
    return {name: value for name, value in record.items() if name not in RECORD_FIELDS}


# ---------------------------------------------------------------- features


@dataclass(frozen=True)
class FeatureSpec:
    """What a model consumes besides the target: category cardinalities and the number of dynamic features."""

    cardinality: tuple[int, ...] = ()
    num_dynamic_feat: int = 0

    @property
    def num_cat(self) -> int:
        return len(self.cardinality)

    def check(self, record: Mapping[str, Any], prediction_length: int = 0, where: str = "") -> list[str]:
        """Every way ``record``'s ``cat`` / ``dynamic_feat`` break this spec, one message each, located by
        ``where`` (``instances[3].``, ``line 5: ``). ``prediction_length`` > 0 (inference): dynamic
        features must also cover the forecast horizon. Fields the spec does not use are ignored."""
        problems: list[str] = []
        if self.num_cat:
            problems += self._check_cat(record.get("cat"), where)
        if self.num_dynamic_feat:
            problems += self._check_dynamic_feat(
                record.get("dynamic_feat"), _length(record.get("target")), prediction_length, where
            )
        return problems

    def _check_cat(self, cats: Any, where: str) -> list[str]:
        if cats is None:
            return [f"{where}cat: required: the model was trained with {self.num_cat} categorical feature(s)"]
        if not isinstance(cats, (Sequence, np.ndarray)) or isinstance(cats, str):
            return [f"{where}cat: expected a list of non-negative integers, got {type(cats).__name__}"]
        if len(cats) != self.num_cat:
            return [f"{where}cat: has {len(cats)} value(s), the model expects {self.num_cat}"]
        problems = []
        for index, (value, limit) in enumerate(zip(cats, self.cardinality)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                problems.append(f"{where}cat[{index}]: {value!r} is not a non-negative integer")
            elif value >= limit:
                problems.append(f"{where}cat[{index}]: {value} is out of range; the model knows 0..{limit - 1}")
        return problems

    def _check_dynamic_feat(
        self, feats: Any, target_length: Optional[int], prediction_length: int, where: str
    ) -> list[str]:
        rule = "len(target) + prediction_length" if prediction_length else "len(target)"
        if feats is None:
            return [
                f"{where}dynamic_feat: required: the model was trained with {self.num_dynamic_feat} "
                f"dynamic feature(s) of length {rule.replace('prediction_length', str(prediction_length))}"
            ]
        if not isinstance(feats, (Sequence, np.ndarray)) or isinstance(feats, str):
            return [f"{where}dynamic_feat: expected a list of lists of numbers"]
        if len(feats) != self.num_dynamic_feat:
            return [f"{where}dynamic_feat: has {len(feats)} feature(s), the model expects {self.num_dynamic_feat}"]
        if target_length is None:
            return []
        expected = target_length + prediction_length
        return [
            f"{where}dynamic_feat[{index}]: length {_length(row)}, expected {expected} ({rule})"
            for index, row in enumerate(feats)
            if _length(row) != expected
        ]


def _length(value: Any) -> Optional[int]:
    try:
        return None if isinstance(value, (str, Mapping)) else len(value)
    except TypeError:
        return None


# ---------------------------------------------------------------- network shape

# The hyperparameters that shape the network's weights or the meaning of their inputs: a checkpoint is
# resumed, a warm start initialised and a registered model offered for a warm start only when these (and
# the features, FeatureSpec) match. Everything else (epochs, learning_rate, ...) may change between runs.
NETWORK_HYPERPARAMETERS = (
    "backend",
    "time_freq",
    "prediction_length",
    "context_length",
    "likelihood",
    "num_cells",
    "num_layers",
    "embedding_dimension",
)


def network_shape(hyperparameters: Mapping[str, Any]) -> dict[str, Any]:
    """The network-shaping entries among ``hyperparameters`` (the ones it sets, values as given), in
    NETWORK_HYPERPARAMETERS' order."""
    return {name: hyperparameters[name] for name in NETWORK_HYPERPARAMETERS if name in hyperparameters}


# ---------------------------------------------------------------- model artifact


@dataclass(frozen=True)
class ModelArtifact:
    """``deepar-metadata.json``: what a trained model is, written by the train job beside ``predictor/``.

    Read by the server and batch transform (features, horizon, frequency), the evaluation commands
    (metrics) and the event-driven functions. Files of an older schema still read; a newer one is refused.
    """

    backend: str
    freq: str  # pandas spelling (``h``, ``5min``)
    prediction_length: int
    context_length: int
    likelihood: str
    cardinality: tuple[int, ...] = ()
    num_dynamic_feat: int = 0
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    library_versions: dict[str, str] = field(default_factory=dict)
    training_statistics: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)  # final_loss, best_epoch, epochs_run, interrupted, ...
    test_metrics: Optional[dict[str, float]] = None
    # Set when the network started from a previous model (the `model` channel): source, its digest, its training.
    warm_start: Optional[dict[str, Any]] = None
    # {"file": "network.onnx", ...what the numpy sampler needs} or {"file": None, "reason": ...};
    # None in artifacts written before the export existed.
    onnx: Optional[dict[str, Any]] = None
    schema_version: int = SCHEMA_VERSION

    @property
    def features(self) -> FeatureSpec:
        return FeatureSpec(cardinality=tuple(self.cardinality), num_dynamic_feat=self.num_dynamic_feat)

    @property
    def time_freq(self) -> str:
        """The ``time_freq`` hyperparameter as the user wrote it (``H``), else the pandas spelling."""
        return str(self.hyperparameters.get("time_freq", self.freq))

    def metrics(self) -> dict[str, float]:
        """The job's final metrics under their metric-definition names (``train:final_loss``, ``test:RMSE`` ...)."""
        out = {f"test:{name}": value for name, value in (self.test_metrics or {}).items()}
        if self.train.get("final_loss") is not None:
            out["train:final_loss"] = self.train["final_loss"]
        return out

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"format_version": self.schema_version}
        for item in fields(self):
            value = getattr(self, item.name)
            # Optional additions are left out when absent, so older artifacts round-trip byte for byte.
            if item.name == "schema_version" or (item.name in ("onnx", "warm_start") and value is None):
                continue
            data[item.name] = list(value) if isinstance(value, tuple) else value
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str = METADATA_FILE) -> "ModelArtifact":
        if not isinstance(data, dict):
            raise ContractError(f"{where}: expected a JSON object, got {type(data).__name__}")
        version = data.get("format_version", SCHEMA_VERSION)
        if not _is_int(version) or version < 1:
            raise ContractError(f"{where}: format_version: {version!r} is not a positive integer")
        if version > SCHEMA_VERSION:
            raise ContractError(
                f"{where}: format_version {version} is newer than this code reads ({SCHEMA_VERSION}); "
                "serve the model with the image version that trained it, or upgrade"
            )
        known = {item.name for item in fields(cls)} - {"schema_version"}
        missing = sorted(
            name
            for name in ("backend", "freq", "prediction_length", "context_length", "likelihood")
            if name not in data
        )
        if missing:
            raise ContractError(
                f"{where}: missing field(s) {', '.join(missing)}: was this model trained by this container?"
            )
        values = {
            name: data[name]
            for name in known
            if name in data and (data[name] is not None or name in ("test_metrics", "onnx"))
        }
        artifact = cls(**{**values, "cardinality": tuple(data.get("cardinality") or ()), "schema_version": version})
        artifact.validate(where)
        return artifact

    def validate(self, where: str = METADATA_FILE) -> None:
        if self.backend not in BACKENDS:
            raise ContractError(f"{where}: backend: {self.backend!r}; expected one of {', '.join(BACKENDS)}")
        parse_time_freq(self.freq, f"{where}: freq")
        for name in ("prediction_length", "context_length"):
            if not _is_int(getattr(self, name)) or getattr(self, name) < 1:
                raise ContractError(f"{where}: {name}: {getattr(self, name)!r} is not a positive integer")
        if not _is_int(self.num_dynamic_feat) or self.num_dynamic_feat < 0:
            raise ContractError(f"{where}: num_dynamic_feat: {self.num_dynamic_feat!r} is not a non-negative integer")
        if not all(_is_int(c) and c > 0 for c in self.cardinality):
            raise ContractError(f"{where}: cardinality: {list(self.cardinality)!r} is not a list of positive integers")

    @classmethod
    def read(cls, path: Path) -> "ModelArtifact":
        """From a model folder (or the metadata file itself)."""
        path = Path(path)
        if path.is_dir():
            path = path / METADATA_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: is {path.parent} a model trained by this container?")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as error:
            raise ContractError(f"{path}: not JSON: {error}") from None
        return cls.from_dict(data, str(path))

    @classmethod
    def from_bytes(cls, content: bytes, where: str = METADATA_FILE) -> "ModelArtifact":
        try:
            data = json.loads(content)
        except ValueError as error:
            raise ContractError(f"{where}: not JSON: {error}") from None
        return cls.from_dict(data, where)

    def write(self, model_dir: Path) -> Path:
        self.validate()
        path = Path(model_dir) / METADATA_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2, default=_json_default))
        return path


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---------------------------------------------------------------- train/test cut


def holdout(record: Mapping[str, Any], prediction_length: int) -> dict[str, Any]:
    """The request for a series whose last ``prediction_length`` points are held out as ground truth.

    ``dynamic_feat`` keeps its full length: the model needs it to cover the forecast horizon.
    """
    _check_long_enough(record, prediction_length)
    return {**record, "target": list(record["target"][:-prediction_length])}


def train_cut(record: Mapping[str, Any], prediction_length: int) -> dict[str, Any]:
    """The training form of a full series: its last ``prediction_length`` points (and those of every
    ``dynamic_feat``) dropped, so the test channel's full series scores exactly the forecast horizon."""
    _check_long_enough(record, prediction_length)
    cut = {**record, "target": list(record["target"][:-prediction_length])}
    if record.get("dynamic_feat") is not None:
        cut["dynamic_feat"] = [list(row[:-prediction_length]) for row in record["dynamic_feat"]]
    return cut


def split_train_test(
    records: Iterable[Mapping[str, Any]], prediction_length: int, locations: Optional[Sequence[str]] = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, test): test = the full series, train = each without its last ``prediction_length`` points.

    A series too short for the test channel is an error naming ``locations[i]`` (``file:line``) or its index.
    """
    if isinstance(prediction_length, bool) or not isinstance(prediction_length, int) or prediction_length < 1:
        raise ContractError(f"prediction_length: {prediction_length!r} is not a positive integer")
    train, test = [], []
    for index, record in enumerate(records):
        try:
            train.append(train_cut(record, prediction_length))
        except ContractError as error:
            where = locations[index] if locations is not None else f"series {index}"
            raise ContractError(f"{where}: {error}") from None
        test.append(dict(record))
    return train, test


# ---------------------------------------------------------------- backtest cut (validation windows)


def backtest_cuts(length: int, prediction_length: int, windows: int, min_history: int = 1) -> list[int]:
    """Where each validation window starts in a training series of ``length`` points, oldest first.

    Window ``k`` scores ``target[cut : cut + prediction_length]`` with a forecaster fitted (or conditioned)
    on ``target[:cut]``; the windows are back to back and the last one ends where the training series
    ends (the test channel's horizon, after it, is never seen). A series too short for all of them gets
    fewer cuts, the oldest dropped first: each history keeps at least ``min_history`` points.
    """
    if windows < 0 or prediction_length < 1:
        raise ContractError(f"backtest: windows={windows}, prediction_length={prediction_length} out of range")
    cuts = [length - k * prediction_length for k in range(windows, 0, -1)]
    return [cut for cut in cuts if cut >= max(min_history, 1)]


def backtest_window(record: Mapping[str, Any], cut: int, prediction_length: int) -> tuple[dict[str, Any], list[Any]]:
    """(history, truth) of one validation window: the series up to ``cut`` as a request (``dynamic_feat``
    kept through the window's horizon, as a forecast needs it) and the window's actual values."""
    target = list(record["target"])
    if not 1 <= cut <= len(target) - prediction_length:
        raise ContractError(f"backtest: cut {cut} leaves no full window in {len(target)} points")
    history = {**record, "target": target[:cut]}
    if record.get("dynamic_feat") is not None:
        history["dynamic_feat"] = [list(row[: cut + prediction_length]) for row in record["dynamic_feat"]]
    return history, target[cut : cut + prediction_length]


def _check_long_enough(record: Mapping[str, Any], prediction_length: int) -> None:
    target = record.get("target") if isinstance(record, Mapping) else None
    if not isinstance(target, (list, tuple)):
        raise ContractError('a series needs "start" and a "target" list')
    if len(target) <= prediction_length:
        raise ContractError(
            f"{len(target)} points, the test channel needs more than prediction_length={prediction_length}"
        )


def target_array(values: Iterable[Any]) -> np.ndarray[Any, np.dtype[np.float64]]:
    """A DeepAR target (numbers; ``null`` or ``"NaN"`` for missing) as float64 with NaN gaps."""
    return np.array([np.nan if v is None or v == "NaN" else v for v in values], dtype=float)


def target_list(values: Any, decimals: Optional[int] = None) -> list[Any]:
    """Float values as a DeepAR target (``target_array``'s inverse): numbers, ``"NaN"`` where missing,
    rounded to ``decimals`` when given. Built vectorized: converters call it per series."""
    array = np.asarray(values, dtype=float)
    if decimals is not None:
        array = np.round(array, decimals)
    out: list[Any] = array.tolist()
    for index in np.flatnonzero(np.isnan(array)).tolist():
        out[index] = "NaN"
    return out


# ---------------------------------------------------------------- instance checks

# One function per rule, one message per failure, for every reader of series: the training channels
# (data.py), the server (inference.py), the ONNX forecaster and the serverless functions. Each answers a
# Problem: the field (``target[3]``, ``dynamic_feat[0][5]``) and what is wrong; the caller puts the place
# in front (``instances[3].``, ``line 5: ``, ``train/a.json:5: ``).

# Largest |value| accepted in target and dynamic_feat, in training and in requests: DeepAR scales by the
# series' mean magnitude and draws float32 samples (max 3.4e38), so values near 1e37 overflow; 1e30 leaves
# room for any tail.
MAX_ABS_VALUE = 1e30
_CHECK_BLOCK = 1 << 20  # values compared at once: bounds the temporaries for very long series
# A 400 lists at most this many bad instances (each on its own line), bounding the error body (~100 bytes each).
MAX_LISTED_PROBLEMS = 100


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one field of a record."""

    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"

    def at(self, where: str = "") -> str:
        """The message located: ``where`` is the place's prefix (``instances[3].``, ``line 5: ``)."""
        return f"{where}{self}"


def record_problem(record: Any) -> Optional[Problem]:
    """What can be told of a decoded record without the model: a JSON object whose ``start`` is a
    string and whose ``target`` is a list of numbers (see ``target_problem``); None when it is."""
    if not isinstance(record, Mapping):
        return Problem("record", f"expected a JSON object with start and target, got {type(record).__name__}")
    for name in REQUIRED_RECORD_FIELDS:
        if name not in record:
            return Problem(name, "missing")
    if not isinstance(record["start"], str):
        return start_type_problem(record["start"])
    return target_problem(record["target"])


def start_type_problem(value: Any) -> Problem:
    return Problem("start", f"expected a timestamp string such as 'YYYY-MM-DD HH:MM:SS', got {type(value).__name__}")


def target_problem(target: Any) -> Optional[Problem]:
    """A target is a flat list of numbers, ``null`` or ``"NaN"`` for missing, none beyond MAX_ABS_VALUE."""
    if not isinstance(target, (list, np.ndarray)):
        return target_type_problem(target)
    try:
        values = target_array(target)
    except (TypeError, ValueError, OverflowError):
        return number_problem(target, "target")
    if values.ndim != 1:
        return Problem("target", "expected a flat list of numbers, got nested lists")
    return magnitude_problem(values, "target")


def target_type_problem(target: Any) -> Problem:
    return Problem("target", f'expected a list of numbers (null or "NaN" for missing), got {type(target).__name__}')


def number_problem(values: Iterable[Any], field: str) -> Problem:
    """The first element of ``values`` that is no number (or an integer beyond MAX_ABS_VALUE, which no
    float holds); called once a conversion has failed, to say where and why."""
    for index, value in enumerate(values):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_ABS_VALUE:
            return _too_large(f"{field}[{index}]", _describe_int(value))
        if value is None or value == "NaN" or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            continue
        return Problem(f"{field}[{index}]", f'{value!r} is not a number (missing values are null or "NaN")')
    return Problem(field, "contains values that are not numbers")


def magnitude_problem(values: Any, field: str) -> Optional[Problem]:
    """The first value beyond ±MAX_ABS_VALUE (infinities included; NaN is a missing value), named by its
    index (``dynamic_feat[1][7]`` for a 2-d block passed as ``dynamic_feat``)."""
    array = np.asarray(values)
    flat = array.reshape(-1)
    for offset in range(0, flat.size, _CHECK_BLOCK):
        with np.errstate(invalid="ignore"):
            too_large = np.abs(flat[offset : offset + _CHECK_BLOCK]) > MAX_ABS_VALUE
        if too_large.any():
            position = np.unravel_index(offset + int(np.argmax(too_large)), array.shape)
            return _too_large(field + "".join(f"[{int(i)}]" for i in position), f"{float(array[position]):g}")
    return None


def _too_large(field: str, shown: str) -> Problem:
    return Problem(
        field,
        f"{shown} is beyond ±{MAX_ABS_VALUE:g}, the largest magnitude DeepAR handles in float32; "
        "rescale the series (for example to other units)",
    )


def _describe_int(value: int) -> str:
    try:
        return f"an integer of {len(str(abs(value)))} digits"
    except ValueError:  # str() of an int over 4300 digits raises in Python 3.11: estimate from the bit length
        return f"an integer of about {math.floor((abs(value).bit_length() - 1) * math.log10(2)) + 1} digits"


def describe_number(value: Any) -> str:
    """A value for a message: huge integers by their number of digits, anything else as repr."""
    return _describe_int(value) if isinstance(value, int) and abs(value) > MAX_ABS_VALUE else repr(value)


def dynamic_feat_gap_problem(features: np.ndarray[Any, Any]) -> Optional[Problem]:
    """dynamic_feat has no missing values (the network reads every step of it, the horizon included)."""
    with np.errstate(invalid="ignore"):
        finite = np.isfinite(features)
    if finite.all():
        return None
    row, col = (int(i[0]) for i in np.nonzero(~finite))
    return Problem(f"dynamic_feat[{row}][{col}]", "missing or infinite value; dynamic_feat may not have missing values")


def non_finite_rows(samples: np.ndarray[Any, Any]) -> list[int]:
    """Series whose forecast overflowed (e.g. targets near the float32 limit): answered as errors, never as nulls."""
    bad = ~np.isfinite(samples.reshape(samples.shape[0], -1)).all(axis=1)
    return [int(i) for i in np.flatnonzero(bad)]


OVERFLOW = Problem(
    "target",
    "the forecast overflowed float32 (values of target or dynamic_feat too large in magnitude, "
    "e.g. near 1e37); rescale the series",
)


# ---------------------------------------------------------------- forecast requests

OUTPUT_TYPES = ("mean", "quantiles", "samples")
DEFAULT_QUANTILES = ("0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9")
MAX_NUM_SAMPLES = 10_000
MAX_QUANTILES = 100  # bounds the response (issue #12): 9,999 quantiles x 200 series was a 536 MB answer
MAX_SEED = 2**32 - 1  # numpy's default_rng takes any non-negative int; this bound fits every client's integer
CONFIGURATION_FIELDS = ("num_samples", "output_types", "quantiles", "seed")


@dataclass(frozen=True)
class InferenceConfig:
    """A request's ``configuration`` (or ``DEEPAR_INFERENCE_CONFIG``), checked."""

    num_samples: int = 100
    output_types: tuple[str, ...] = ("mean", "quantiles")
    quantile_keys: tuple[str, ...] = DEFAULT_QUANTILES  # as the client spelled them
    quantile_levels: tuple[float, ...] = tuple(float(q) for q in DEFAULT_QUANTILES)
    # This container's extension: the request's draws come from their own generator seeded with it, so the
    # same request answers the same forecast (the mlflow pyfunc's ``seed`` param); None draws fresh numbers.
    seed: Optional[int] = None


def parse_configuration(
    raw: Any,
    where: str = "configuration",
    defaults: InferenceConfig = InferenceConfig(),
    number_key: Callable[[float], str] = json.dumps,
) -> InferenceConfig:
    """The built-in DeepAR's ``configuration`` object; ``number_key`` spells a quantile given as a number."""
    if raw is None:
        return defaults
    if not isinstance(raw, dict):
        raise ContractError(f"{where}: expected an object with num_samples, output_types, quantiles")
    unknown = sorted(set(raw) - set(CONFIGURATION_FIELDS))
    if unknown:
        raise ContractError(
            f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(CONFIGURATION_FIELDS)}"
        )
    num_samples = raw.get("num_samples", defaults.num_samples)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or not 1 <= num_samples <= MAX_NUM_SAMPLES:
        raise ContractError(f"{where}.num_samples: {num_samples!r} is not an integer between 1 and {MAX_NUM_SAMPLES}")
    output_types = raw.get("output_types", list(defaults.output_types))
    if not isinstance(output_types, list) or not output_types or not all(t in OUTPUT_TYPES for t in output_types):
        raise ContractError(
            f"{where}.output_types: {output_types!r}; expected a non-empty list of {', '.join(OUTPUT_TYPES)}"
        )
    keys, levels = defaults.quantile_keys, defaults.quantile_levels
    if "quantiles" in raw:
        keys, levels = _parse_quantiles(raw["quantiles"], f"{where}.quantiles", number_key)
    seed = raw.get("seed", defaults.seed)
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED):
        raise ContractError(f"{where}.seed: {seed!r} is not an integer between 0 and {MAX_SEED}")
    return InferenceConfig(num_samples, tuple(dict.fromkeys(output_types)), keys, levels, seed)


def _parse_quantiles(
    quantiles: Any, where: str, number_key: Callable[[float], str]
) -> tuple[tuple[str, ...], tuple[float, ...]]:
    if not isinstance(quantiles, list) or not quantiles:
        raise ContractError(f"{where}: expected a non-empty list of numbers between 0 and 1")
    if len(quantiles) > MAX_QUANTILES:
        raise ContractError(f"{where}: {len(quantiles)} quantiles; at most {MAX_QUANTILES} are allowed")
    keys, levels = [], []
    for index, q in enumerate(quantiles):
        try:
            level = float(q) if isinstance(q, (str, int, float)) and not isinstance(q, bool) else math.nan
        except ValueError:
            level = math.nan
        if not 0.0 < level < 1.0:
            raise ContractError(f"{where}[{index}]: {q!r} is not a number strictly between 0 and 1")
        keys.append(q if isinstance(q, str) else number_key(q))
        levels.append(level)
    return tuple(keys), tuple(levels)


def predictions(
    samples: np.ndarray[Any, np.dtype[Any]], config: InferenceConfig, forwarded: Sequence[Mapping[str, Any]] = ()
) -> list[dict[str, Any]]:
    """Response objects for a block of series ``(series, paths, horizon)``: only the requested keys, with the
    request's forwarded fields first; values stay numpy arrays for the encoder."""
    means = samples.mean(axis=1) if "mean" in config.output_types else None
    quantiles = (
        np.quantile(samples, config.quantile_levels, axis=1).astype(np.float32)
        if "quantiles" in config.output_types
        else None
    )
    out = []
    for i in range(samples.shape[0]):
        item: dict[str, Any] = dict(forwarded[i]) if forwarded else {}
        if means is not None:
            item["mean"] = means[i]
        if quantiles is not None:
            item["quantiles"] = {key: quantiles[j, i] for j, key in enumerate(config.quantile_keys)}
        if "samples" in config.output_types:
            item["samples"] = samples[i]
        out.append(item)
    return out


# ---------------------------------------------------------------- paths from outside input


class UnsafePathError(ContractError):
    """A name from outside (an S3 key, a tar member) would not stay inside its folder (#23 items 1 and 3)."""


def confined_path(folder: Path, relative: str, where: str) -> Path:
    """``folder`` joined with ``relative`` when every ``/``-separated part of it is a plain name.

    Refused, naming ``where``: an absolute name, ``..`` parts, empty parts (``a//b``), a NUL byte. ``.``
    parts name the folder they are in and are dropped (``tar -C model .`` writes ``./x``). Checked on the
    text alone, before anything touches the disk, so no symlink already there and no earlier member of
    the same input can change the answer.
    """
    if not relative:
        raise UnsafePathError(f"{where}: empty name")
    if "\0" in relative:
        raise UnsafePathError(f"{where}: {relative!r} contains a NUL byte")
    if relative.startswith("/"):
        raise UnsafePathError(f"{where}: {relative!r} is absolute; only names relative to the folder are allowed")
    parts = relative.removesuffix("/").split("/")  # a folder's trailing slash (tar, S3 "folder" objects)
    for part in parts:
        if part in ("", ".."):
            shown = "an empty part" if not part else repr(part)
            raise UnsafePathError(f"{where}: {relative!r} has {shown}; only plain names separated by single '/'")
    return Path(folder).joinpath(*(part for part in parts if part != "."))


def key_path(folder: Path, key: str, prefix: str) -> Path:
    """Where the S3 object ``key``, listed under ``prefix``, is copied inside ``folder``: the rest of the key
    after the prefix (and the ``/`` that ends it), checked by ``confined_path``; ``.`` parts are refused
    too (``a/./b`` and ``a/b`` are two objects, one path: one would overwrite the other). The one mapping
    of S3 keys to local paths (#23 item 3). Raises UnsafePathError."""
    where = f"s3 key {key!r}"
    if not key.startswith(prefix):
        raise UnsafePathError(f"{where}: not under the prefix {prefix!r}")
    rest = key[len(prefix) :]
    if prefix and not prefix.endswith("/") and rest.startswith("/"):
        rest = rest[1:]  # prefix "forecasts" lists "forecasts/a.out": the slash separates, it is not a root
    if "." in rest.split("/"):
        raise UnsafePathError(f"{where}: {rest!r} has '.'; only plain names separated by single '/'")
    path = confined_path(folder, rest, where)
    if path == Path(folder):
        raise UnsafePathError(f"s3 key {key!r}: names the folder itself, not an object below {prefix!r}")
    return path


# ---------------------------------------------------------------- model.tar.gz

# Bounds of what extract_model_tarball writes (a gzip bomb is an ArchiveTooLargeError, not a full disk).
# Bytes: the largest network the hyperparameter ranges allow (16 layers x 1024 cells: ~134M float32
# weights, 0.54 GB) is stored twice (predictor state and network.onnx): ~1.1 GB, plus embeddings; 4 GiB
# keeps room for those and still fits a Lambda's /tmp (10 GB) and a serving instance's volume.
MODEL_TARBALL_MAX_BYTES = 4 * 2**30
# Members: a model is about ten files (deepar-metadata.json, predictor/*, network.onnx); 1,000 leaves room
# for what users pack beside it while bounding the headers read (each a TarInfo in memory).
MODEL_TARBALL_MAX_MEMBERS = 1_000
_TAR_HEADER_SLACK = 2**20  # headers, padding and end blocks beside the members' data, in the size bound


class UnsafeArchiveError(tarfile.TarError):
    """A model.tar.gz member that is not a plain file or folder inside the target (#23 item 1)."""


class ArchiveTooLargeError(UnsafeArchiveError):
    """A model.tar.gz over MODEL_TARBALL_MAX_BYTES or MODEL_TARBALL_MAX_MEMBERS (a gzip bomb)."""


class _BoundedReader(io.RawIOBase):
    """The decompressed archive, refused once more than ``limit`` bytes come out (before tarfile buffers them)."""

    def __init__(self, stream: IO[bytes], limit: int, where: str):
        self.stream, self.limit, self.where, self.count = stream, limit, where, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.stream.read(min(len(view), self.limit + 1 - self.count))
        self.count += len(data)
        if self.count > self.limit:
            raise ArchiveTooLargeError(f"{self.where}: more than {self.limit} bytes once decompressed (a gzip bomb?)")
        view[: len(data)] = data
        return len(data)


def _open_decompressed(tarball: Path) -> IO[bytes]:
    with open(tarball, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    if gzipped:
        return gzip.open(tarball, "rb")  # type: ignore[return-value]  # GzipFile is a binary file object
    return open(tarball, "rb")


def _check_member(member: tarfile.TarInfo, root: Path, where: str) -> Path:
    """The member's destination; only regular files and folders with plain relative names are allowed.

    Every symlink and hardlink is refused, not only those pointing out: a model artifact needs none, and
    a chain (``a -> .``, ``a/b -> ..``, then ``b/evil``) passes any check made before the links exist.
    """
    name = f"{where}: member {member.name!r}"
    if member.issym() or member.islnk():
        raise UnsafeArchiveError(
            f"{name} is a link to {member.linkname!r}; a model archive holds only files and folders"
        )
    if not (member.isreg() or member.isdir()) or member.issparse():
        raise UnsafeArchiveError(f"{name} is not a regular file or folder (type {member.type!r})")
    try:
        path = confined_path(root, member.name, name)
    except UnsafePathError as error:
        raise UnsafeArchiveError(str(error)) from None
    if member.isreg() and path == root:
        raise UnsafeArchiveError(f"{name} is a file named like the target folder itself")
    return path


def _scan_model_tarball(tarball: Path, max_bytes: int, max_members: int) -> None:
    """One streamed pass over the archive: every member checked, the counts bounded, nothing written."""
    where = str(tarball)
    total = members = 0
    with _open_decompressed(tarball) as raw:
        bounded = io.BufferedReader(_BoundedReader(raw, max_bytes + _TAR_HEADER_SLACK, where))
        with tarfile.open(fileobj=bounded, mode="r|") as archive:
            for member in archive:
                members += 1
                if members > max_members:
                    raise ArchiveTooLargeError(f"{where}: more than {max_members} members (MODEL_TARBALL_MAX_MEMBERS)")
                _check_member(member, Path("."), where)
                total += member.size
                if total > max_bytes:
                    raise ArchiveTooLargeError(
                        f"{where}: members hold more than {max_bytes} bytes (MODEL_TARBALL_MAX_BYTES; at {member.name!r})"
                    )


def _extract_member(archive: tarfile.TarFile, member: tarfile.TarInfo, root: Path, where: str) -> None:
    """One checked member written by hand: folders made, files created without following any link."""
    destination = _check_member(member, root, where)
    if member.isdir():
        destination.mkdir(parents=True, exist_ok=True)
        return
    destination.parent.mkdir(parents=True, exist_ok=True)
    if not destination.parent.resolve().is_relative_to(root.resolve()):  # a link already in the target folder
        raise UnsafeArchiveError(f"{where}: member {member.name!r} would be written through a link out of {root}")
    source = archive.extractfile(member)
    if source is None:  # pragma: no cover - regular members always have a file object
        raise UnsafeArchiveError(f"{where}: member {member.name!r} has no data")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    with source, os.fdopen(os.open(destination, flags, 0o644), "wb") as out:
        shutil.copyfileobj(source, out)


def extract_model_tarball(
    tarball: Path,
    target: Path,
    max_bytes: int = MODEL_TARBALL_MAX_BYTES,
    max_members: int = MODEL_TARBALL_MAX_MEMBERS,
) -> None:
    """Unpack a ``model.tar.gz`` (or plain tar) into ``target``: regular files and folders only.

    First a streamed pass checks every member and bounds the archive (``max_bytes`` decompressed and in
    members' data, ``max_members``) without writing; a refusal writes nothing. Then the extraction: tarfile's
    ``filter="data"`` where it exists (Python >= 3.11.4), else member by member here (the image's Debian
    Python 3.11.2). Raises UnsafeArchiveError / ArchiveTooLargeError (both tarfile.TarError) naming the member.
    """
    tarball, root = Path(tarball), Path(target)
    _scan_model_tarball(tarball, max_bytes, max_members)
    root.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as archive:
        if hasattr(tarfile, "data_filter"):
            for member in archive:  # the same checks again: what is extracted is what was scanned
                _check_member(member, root, str(tarball))
            archive.extractall(root, filter="data")
            return
        for member in archive:
            _extract_member(archive, member, root, str(tarball))


# ---------------------------------------------------------------- JSON Lines


def _json_default(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps_line(record: Any) -> bytes:
    """One JSON Lines line (with its newline); numpy arrays and scalars are written as JSON numbers."""
    if orjson is not None:
        return orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY, default=_json_default) + b"\n"
    return json.dumps(record, default=_json_default, separators=(",", ":")).encode() + b"\n"


def write_jsonl(records: Iterable[Any], path: Path, compress: Optional[bool] = None) -> Path:
    """Write one JSON value per line; gzip when ``compress`` (default: when the name ends in ``.gz``)."""
    path = Path(path)
    compress = path.suffix == ".gz" if compress is None else compress
    if compress and path.suffix != ".gz":
        path = path.with_suffix(path.suffix + ".gz")
    path.parent.mkdir(parents=True, exist_ok=True)
    stream: IO[bytes] = gzip.open(path, "wb") if compress else open(path, "wb")  # type: ignore[assignment]
    with stream:
        write_lines(records, stream)
    return path


def write_lines(records: Iterable[Any], stream: IO[bytes]) -> None:
    for record in records:
        stream.write(dumps_line(record))


def iter_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, value) for every non-blank line of a JSON Lines file (``.gz`` decompressed);
    a line that is not JSON is an error located as ``file:line``."""
    path = Path(path)
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except ValueError as error:
                    raise ContractError(f"{path}:{number}: not JSON: {error}") from None


def read_jsonl(path: Path, limit: Optional[int] = None) -> list[Any]:
    """The values of a JSON Lines file (the first ``limit`` when given)."""
    values: list[Any] = []
    for _, value in iter_jsonl(path):
        if limit is not None and len(values) >= limit:
            break
        values.append(value)
    return values
