"""Uploaded objects -> numbered DeepAR records: JSON Lines (.json/.jsonl, optionally .gz), Parquet
(the training schema's columns) or a long CSV ``item_id,timestamp,value``.

Objects are read as a stream (gzip decompressed as it is read, JSON Lines and CSV line by line) and
refused beyond ``BATCH_MAX_INPUT_MB`` after decompression (issue #23 item 13): reading stops at the limit,
so a gzip bomb costs no more than the limit. A bad line is an ``(line, message)`` entry and its
neighbours are still read; an object that cannot be read at all raises ``UnreadableObject`` (the
message is retried, then dead-lettered)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import IO, Any, Mapping, Optional, Union

import numpy as np

from sagemaker_deepar import contract

from .settings import DEFAULT_MAX_INPUT_MB, MAX_INPUT_SETTING, FunctionSettings, current  # noqa: F401 - re-exported

CSV_COLUMNS = ("item_id", "timestamp", "value")
# A DeepAR record nests 3 levels (dynamic_feat); forwarded ids may be objects. Deeper lines are refused
# by name: the forecaster's JSON (orjson: 255 levels when writing) and Python's parser (recursion) fail
# on deep nesting as a whole, not per line (issue #23 item 10).
MAX_JSON_DEPTH = 32
# The integers the serving container's JSON parser (orjson) reads; a longer one fails its whole request.
INT_RANGE = (-(2**63), 2**64 - 1)


class UnreadableObject(Exception):
    """The object as a whole cannot be read (corrupt compression, not Parquet, no header, too large...)."""


class InputTooLarge(UnreadableObject):
    """More than ``BATCH_MAX_INPUT_MB`` after decompression."""

    def __init__(self, limit: int):
        super().__init__(
            f"larger than {limit} bytes after decompression ({MAX_INPUT_SETTING}={limit // 2**20}): "
            "split the upload or raise the function's limit"
        )
        self.limit = limit


@dataclass(frozen=True)
class Line:
    number: int  # 1-based line (JSON Lines, CSV: first line of the series) or row (Parquet)
    record: Optional[dict]  # None when ``problem`` says why
    problem: str = ""


def input_format(key: str) -> str:
    name = key.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(".parquet"):
        return "parquet"
    if name.endswith(".csv"):
        return "csv"
    return "jsonl"


def max_input_bytes(environ: Mapping[str, str]) -> int:
    """``BATCH_MAX_INPUT_MB`` (decompressed bytes of one upload) in bytes; a ``SettingsError`` (a ValueError) when unusable."""
    return FunctionSettings.from_env(environ).max_input_bytes


class _Source(io.RawIOBase):
    """Any ``read(n)`` stream (botocore's StreamingBody, a file, a GzipFile) as a raw stream that counts
    what it delivers and refuses to deliver more than ``limit`` bytes (None: no limit)."""

    def __init__(self, stream: Any, limit: Optional[int] = None):
        self.stream, self.limit, self.count = stream, limit, 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self.stream.read(len(buffer))
        self.count += len(data)
        if self.limit is not None and self.count > self.limit:
            raise InputTooLarge(self.limit)
        buffer[: len(data)] = data
        return len(data)


def open_decompressed(key: str, body: Union[bytes, IO[bytes], Any], limit: Optional[int] = None) -> io.BufferedReader:
    """The object's content as a buffered stream: gunzipped as it is read (by name or magic number),
    raising ``InputTooLarge`` once more than ``limit`` decompressed bytes were read."""
    raw = io.BufferedReader(_Source(io.BytesIO(body) if isinstance(body, (bytes, bytearray)) else body))
    if key.lower().endswith(".gz") or raw.peek(2)[:2] == b"\x1f\x8b":
        return io.BufferedReader(_Source(gzip.GzipFile(fileobj=raw, mode="rb"), limit))
    return io.BufferedReader(_Source(raw, limit))


def read_object(
    key: str,
    body: Union[bytes, IO[bytes], Any],
    limit: Optional[int] = None,
    settings: Optional[FunctionSettings] = None,
) -> list[Line]:
    """The numbered records of one object (``body``: bytes or a stream such as S3's ``Body``); ``limit``
    (decompressed bytes) and ``TIME_FREQ`` (long CSV) from ``settings``, the function's own when not given."""
    settings = settings or current()
    stream = open_decompressed(key, body, settings.max_input_bytes if limit is None else limit)
    kind = input_format(key)
    try:
        if kind == "parquet":
            return _parquet(stream.read())
        if kind == "csv":
            return _long_csv(stream, settings.time_freq)
        return _json_lines(stream)
    except (OSError, EOFError, zlib.error) as error:  # gzip's errors surface while reading
        raise UnreadableObject(f"not a readable gzip file: {error}") from None


def _reject_constant(name: str) -> Any:
    raise ValueError(f'{name} is not JSON (missing values are null or "NaN")')


def loads_line(raw: Union[bytes, str]) -> Any:
    """One JSON value as the forecaster will read it: ``NaN``/``Infinity`` literals refused, and too deep a
    nesting a ``ValueError`` (Python's parser raises ``RecursionError`` at ~1,000 levels)."""
    try:
        return json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None


def _number_problem(value: Any) -> Optional[str]:
    if type(value) is int and not INT_RANGE[0] <= value <= INT_RANGE[1]:
        return f"an integer of {len(str(abs(value)))} digits is out of range (64-bit integers)"
    if type(value) is float and not math.isfinite(value):
        return f"{value} is not a finite number"
    return None


def _numbers_fine(items: list) -> bool:
    """A quick yes for a list of plain floats or plain ints, nulls allowed (a target), checked in C: floats
    whose exact sum is finite are all finite; ints whose min and max fit fit. Else: element by element."""
    kinds = set(map(type, items)) - {type(None)}  # missing values (null) are fine
    numbers = filter(None, items)  # without nulls (and zeros, which change neither check)
    try:
        if kinds == {float}:
            return math.isfinite(math.fsum(numbers))
        if kinds == {int}:
            present = list(numbers)
            return not present or (INT_RANGE[0] <= min(present) and max(present) <= INT_RANGE[1])
    except OverflowError:  # fsum's intermediate overflow: some values are near the float limit
        return False
    return not kinds


def json_problem(value: Any, where: str = "") -> Optional[str]:
    """Why a decoded JSON value cannot be sent to the forecaster, naming the place (``target[3]``):
    nested deeper than ``MAX_JSON_DEPTH``, an integer outside the 64-bit range, a non-finite number."""
    problem = _number_problem(value)
    if problem:
        return f"{where or 'value'}: {problem}"
    stack: list[tuple[Any, str, int]] = [(value, where, 1)] if isinstance(value, (dict, list)) else []
    while stack:
        item, path, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return f"{path or 'value'}: nested deeper than {MAX_JSON_DEPTH} levels"
        if isinstance(item, list) and _numbers_fine(item):
            continue
        listed = isinstance(item, list)
        for name, child in enumerate(item) if listed else item.items():
            if isinstance(child, (dict, list)):
                problem = None
            else:
                problem = _number_problem(child)
                if problem is None:
                    continue
            at = f"{path}[{name}]" if listed else (f"{path}.{name}" if path else str(name))
            if problem:
                return f"{at}: {problem}"
            stack.append((child, at, depth + 1))
    return None


def _json_lines(stream: IO[bytes]) -> list[Line]:
    lines = []
    for number, raw in enumerate(stream, 1):
        if not raw.strip():
            continue
        try:
            record = loads_line(raw)
        except ValueError as error:
            lines.append(Line(number, None, f"not JSON: {error}"))
            continue
        lines.append(_checked(number, record))
    return lines


def _checked(number: int, record: Any) -> Line:
    """What the function can tell without the model: what the forecaster's JSON parser refuses, then the
    contract's record check (start, target); the forecaster checks the rest (cat, dynamic_feat)."""
    found = json_problem(record) if isinstance(record, dict) else None
    if found is None and (problem := contract.record_problem(record)) is not None:
        found = str(problem)
    return Line(number, None, found) if found else Line(number, record)


def _parquet(body: bytes) -> list[Line]:
    try:
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(body))
    except Exception as error:  # noqa: BLE001 - pyarrow raises several types for a corrupt file
        raise UnreadableObject(f"not a readable Parquet file: {error}") from None
    lines = []
    for row, record in enumerate(table.to_pylist(), 1):
        if isinstance(record.get("start"), datetime):
            record["start"] = record["start"].strftime("%Y-%m-%d %H:%M:%S")
        if isinstance(record.get("target"), list):  # a NaN float is a missing value, sent as JSON's null
            record["target"] = [None if isinstance(v, float) and v != v else v for v in record["target"]]
        lines.append(
            _checked(row, {k: v for k, v in record.items() if v is not None or k in contract.REQUIRED_RECORD_FIELDS})
        )
    return lines


def _parse_time(text: str) -> datetime:
    """A naive UTC time (an offset, if any, applied)."""
    moment = datetime.fromisoformat(text.strip().replace("T", " ").rstrip("Z"))
    return moment.astimezone(timezone.utc).replace(tzinfo=None) if moment.tzinfo else moment


def _long_csv(body: Union[bytes, IO[bytes]], time_freq: str) -> list[Line]:
    """One record per item_id (in order of first appearance): its values averaged per period of
    ``TIME_FREQ`` (the contract's grid, any supported frequency), empty periods NaN, ``start`` the
    first period's start. A bad row makes its whole series an error naming that row."""
    freq = contract.parse_time_freq(time_freq, "TIME_FREQ")
    stream = io.BytesIO(body) if isinstance(body, (bytes, bytearray)) else body
    try:
        reader = csv.reader(io.TextIOWrapper(stream, encoding="utf-8", newline=""))  # type: ignore[arg-type]
        header = [h.strip() for h in next(reader)]
    except (UnicodeDecodeError, StopIteration, csv.Error) as error:
        raise UnreadableObject(f"not a readable CSV file: {error or 'empty'}") from None
    if tuple(header[:3]) != CSV_COLUMNS:
        raise UnreadableObject(f"line 1: expected the header {','.join(CSV_COLUMNS)}, got {','.join(header)}")
    series: dict[str, tuple[int, list[tuple[datetime, float]]]] = {}
    broken: dict[str, Line] = {}
    try:
        for number, row in enumerate(reader, 2):
            if not row or not "".join(row).strip():
                continue
            item = row[0].strip()
            first, points = series.setdefault(item, (number, []))
            if item in broken:
                continue
            try:
                if len(row) != 3:
                    raise ValueError(f"expected 3 columns, got {len(row)}")
                value = float(row[2]) if row[2].strip() not in ("", "NaN", "nan") else float("nan")
                if math.isinf(value):
                    raise ValueError(f"value {row[2].strip()!r} is not a finite number")
                points.append((_parse_time(row[1]), value))
            except ValueError as error:
                broken[item] = Line(number, None, f"item_id {item!r}: {error}")
    except (UnicodeDecodeError, csv.Error) as error:
        raise UnreadableObject(f"not a readable CSV file: {error}") from None
    lines = []
    for item, (first, points) in series.items():
        if item in broken:
            lines.append(broken[item])
            continue
        grid = contract.period_means(
            np.array([moment for moment, _ in points], dtype="datetime64[us]"), [value for _, value in points], freq
        )
        lines.append(
            Line(first, {"item_id": item, "start": grid.start, "target": contract.target_list(grid.means[:, 0])})
        )
    return lines
