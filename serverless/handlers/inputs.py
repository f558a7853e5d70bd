"""Uploaded objects -> numbered DeepAR records: JSON Lines (.json/.jsonl, optionally .gz), Parquet
(the training schema's columns) or a long CSV ``item_id,timestamp,value``.

A bad line is an ``(line, message)`` entry and its neighbours are still read; an object that cannot be
read at all raises ``UnreadableObject`` (the message is retried, then dead-lettered)."""

from __future__ import annotations

import csv
import gzip
import io
import json
import zlib
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional, Union

import numpy as np

from sagemaker_deepar import contract

# The DeepAR record fields; any other field (an id) is forwarded to the forecast line unchanged.
DEEPAR_FIELDS = ("start", "target", "cat", "dynamic_feat")
CSV_COLUMNS = ("item_id", "timestamp", "value")


class UnreadableObject(Exception):
    """The object as a whole cannot be read (corrupt compression, not Parquet, no header...)."""


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


def read_object(key: str, body: bytes) -> list[Line]:
    if key.lower().endswith(".gz") or body[:2] == b"\x1f\x8b":
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError, zlib.error) as error:
            raise UnreadableObject(f"not a readable gzip file: {error}") from None
    kind = input_format(key)
    if kind == "parquet":
        return _parquet(body)
    if kind == "csv":
        return _long_csv(body)
    return _json_lines(body)


def _json_lines(body: bytes) -> list[Line]:
    lines = []
    for number, raw in enumerate(body.split(b"\n"), 1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError as error:
            lines.append(Line(number, None, f"not JSON: {error}"))
            continue
        lines.append(_checked(number, record))
    return lines


def _checked(number: int, record: Any) -> Line:
    """What the function can tell without the model; the forecaster checks the rest (cat, dynamic_feat)."""
    if not isinstance(record, dict):
        return Line(number, None, f"expected a JSON object with start and target, got {type(record).__name__}")
    if not isinstance(record.get("start"), str):
        return Line(number, None, "start: required, a 'YYYY-MM-DD HH:MM:SS' string")
    target = record.get("target")
    if not isinstance(target, list):
        return Line(number, None, 'target: required, a list of numbers (null or "NaN" for missing)')
    try:
        contract.target_array(target)
    except (TypeError, ValueError):
        return Line(number, None, 'target: expected numbers (null or "NaN" for missing)')
    return Line(number, record)


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
        lines.append(_checked(row, {k: v for k, v in record.items() if v is not None or k in DEEPAR_FIELDS[:2]}))
    return lines


def _parse_time(text: str) -> datetime:
    """A naive UTC time (an offset, if any, applied)."""
    moment = datetime.fromisoformat(text.strip().replace("T", " ").rstrip("Z"))
    return moment.astimezone(timezone.utc).replace(tzinfo=None) if moment.tzinfo else moment


def _long_csv(body: bytes, time_freq: str = "") -> list[Line]:
    """One record per item_id (in order of first appearance): its values averaged per period of
    ``TIME_FREQ`` (the contract's grid, any supported frequency), empty periods NaN, ``start`` the
    first period's start. A bad row makes its whole series an error naming that row."""
    import os

    freq = contract.parse_time_freq(time_freq or os.environ.get("TIME_FREQ", "H"), "TIME_FREQ")
    try:
        reader = csv.reader(io.StringIO(body.decode()))
        header = [h.strip() for h in next(reader)]
    except (UnicodeDecodeError, StopIteration, csv.Error) as error:
        raise UnreadableObject(f"not a readable CSV file: {error or 'empty'}") from None
    if tuple(header[:3]) != CSV_COLUMNS:
        raise UnreadableObject(f"line 1: expected the header {','.join(CSV_COLUMNS)}, got {','.join(header)}")
    series: dict[str, tuple[int, list[tuple[datetime, float]]]] = {}
    broken: dict[str, Line] = {}
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
            points.append((_parse_time(row[1]), value))
        except ValueError as error:
            broken[item] = Line(number, None, f"item_id {item!r}: {error}")
    lines = []
    for item, (first, points) in series.items():
        if item in broken:
            lines.append(broken[item])
            continue
        grid = contract.period_means(
            np.array([moment for moment, _ in points], dtype="datetime64[us]"), [value for _, value in points], freq
        )
        target: list[Union[float, str]] = ["NaN" if value != value else float(value) for value in grid.means[:, 0]]
        lines.append(Line(first, {"item_id": item, "start": grid.start, "target": target}))
    return lines
