"""Reading DeepAR channels: file discovery, record validation, feature resolution, statistics.

Records are decoded one line at a time and kept as float32 arrays, so memory stays near the
decoded size of the targets even for gigabytes of JSON Lines.
"""

from __future__ import annotations

import datetime as dt
import gzip
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterator, Optional, cast

import numpy as np
import orjson
import pandas as pd

from ..contract import MAX_ABS_VALUE, FeatureSpec
from ..errors import DataError, UserError
from .hyperparameters import DeepARHyperparameters

log = logging.getLogger(__name__)

MAX_REPORTED_PROBLEMS = 20
# Category ids index embedding tables (int64 in torch, float32 in mxnet): beyond this they cannot be exact.
MAX_CAT_VALUE = 2**24
KNOWN_SUFFIXES = {".json": "json", ".jsonl": "json", ".gz": "json.gz", ".parquet": "parquet"}
GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"


class RecordError(Exception):
    """One bad field of one record; the reader adds the ``file:line`` location."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name}: {message}")


# ---------------------------------------------------------------- file discovery


def _format_from_content_type(content_type: Optional[str]) -> Optional[str]:
    if not content_type:
        return None
    ct = content_type.lower()
    if "parquet" in ct:
        return "parquet"
    if "gzip" in ct or ct.endswith("gz"):
        return "json.gz"
    if "json" in ct:
        return "json"
    return None


def _sniff_format(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(GZIP_MAGIC):
        return "json.gz"
    if head == PARQUET_MAGIC:
        return "parquet"
    return "json"


def file_format(path: Path, content_type: Optional[str] = None) -> str:
    """``json``, ``json.gz`` or ``parquet``: by extension, else ContentType, else magic bytes."""
    name = path.name.lower()
    if name.endswith((".json.gz", ".jsonl.gz")):
        return "json.gz"
    suffix = path.suffix.lower()
    if suffix in (".json", ".jsonl", ".parquet"):
        return KNOWN_SUFFIXES[suffix]
    return _format_from_content_type(content_type) or _sniff_format(path)


def discover_files(channel_dir: Path) -> list[Path]:
    """All data files under a channel, recursively, skipping hidden files and ``_SUCCESS`` markers."""
    files = []
    for path in sorted(channel_dir.rglob("*")):
        relative_parts = path.relative_to(channel_dir).parts
        if any(part.startswith(".") for part in relative_parts):
            continue
        if path.is_file() and not path.name.startswith("_SUCCESS") and path.stat().st_size > 0:
            files.append(path)
    return files


# ---------------------------------------------------------------- raw records


def _decode_json_line(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as error:
        # orjson is strict; Python's json also takes bare NaN/Infinity, which some writers emit.
        # It also takes what orjson refuses on purpose: integers beyond 64 bits (checked by the
        # field parsers) and nesting beyond 1024 levels (RecursionError: reported as orjson's error).
        import json

        try:
            return json.loads(line)
        except (ValueError, RecursionError):
            raise RecordError("record", f"not valid JSON ({error})") from None


def _iter_json_lines(path: Path, compressed: bool) -> Iterator[tuple[int, Any]]:
    try:
        with cast(IO[bytes], gzip.open(path, "rb") if compressed else open(path, "rb")) as f:
            line_no = 0
            while True:
                start = f.tell()
                piece = f.readline(LONG_LINE_BYTES)
                if not piece:
                    break
                line_no += 1
                try:
                    if len(piece) == LONG_LINE_BYTES and not piece.endswith(b"\n"):
                        yield line_no, _decode_long_line(f, start, piece)
                    elif piece.strip():
                        yield line_no, _decode_json_line(piece)
                except RecordError as error:
                    yield line_no, error
    except (OSError, EOFError) as error:
        raise UserError(
            f"{path}: cannot be read as {'gzip-compressed ' if compressed else ''}JSON Lines: {error}"
        ) from None


# ---------------------------------------------------------------- one very long line (a long series)

BLOCK = 1 << 20  # checks and statistics run block by block: no temporary as large as a long series


def _blocks(values: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    flat = values.reshape(-1)
    for offset in range(0, len(flat), BLOCK):
        yield offset, flat[offset : offset + BLOCK]


LONG_LINE_BYTES = 1 << 18  # lines longer than this stream their numeric arrays, decoded in chunks of this size
_ARRAY_KEY = re.compile(rb'"(target|dynamic_feat)"\s*:\s*\[')
_KEY_SPAN = 64  # bytes kept from one chunk to the next: a key split across the boundary is still found


class _NotStreamable(Exception):
    """The long line is not plain numeric arrays; decode it whole for the exact error or value."""


def _decode_long_line(f: IO[bytes], start: int, head: bytes) -> Any:
    """Decode a record whose line is longer than ``LONG_LINE_BYTES`` with its target and dynamic_feat streamed.

    Decoding a 50 MB line at once makes ~7 million Python floats (~32 bytes each) before the float32
    arrays exist: 16x the decoded size. Here the numbers are decoded a chunk at a time straight into
    float32 arrays, so memory stays near the arrays. Anything unusual inside them (strings, nesting,
    huge numbers) falls back to decoding the whole line, which names the exact place.
    """
    try:
        return _stream_arrays(_LineReader(f, head))
    except _NotStreamable:
        f.seek(start)
        return _decode_json_line(f.readline())


class _LineReader:
    """The rest of one long line, read a chunk at a time into ``buffer``."""

    def __init__(self, f: IO[bytes], head: bytes) -> None:
        self.f, self.buffer, self.ended = f, head, head.endswith(b"\n")

    def more(self) -> bool:
        """Append the next chunk of the line; False at its end (newline or end of file)."""
        if self.ended:
            return False
        chunk = self.f.readline(LONG_LINE_BYTES)
        self.ended = len(chunk) < LONG_LINE_BYTES or chunk.endswith(b"\n")
        self.buffer += chunk
        return bool(chunk)

    def next_byte(self) -> bytes:
        """The next non-blank byte, consumed (b"" at the end of the line)."""
        while True:
            self.buffer = self.buffer.lstrip()
            if self.buffer or not self.more():
                byte, self.buffer = self.buffer[:1], self.buffer[1:]
                return byte


def _stream_arrays(reader: _LineReader) -> Any:
    kept: list[bytes] = []  # the line with each streamed array replaced by []
    arrays: dict[str, Any] = {}
    while True:
        match = _ARRAY_KEY.search(reader.buffer)
        if match is None:
            cut = max(0, len(reader.buffer) - _KEY_SPAN)
            kept.append(reader.buffer[:cut])
            reader.buffer = reader.buffer[cut:]
            if not reader.more():
                kept.append(reader.buffer)
                break
            continue
        name = match.group(1).decode()
        if name in arrays:
            raise _NotStreamable()
        kept.append(reader.buffer[: match.start()] + b'"' + match.group(1) + b'": []')
        reader.buffer = reader.buffer[match.end() :]
        arrays[name] = _stream_numbers(reader).finish() if name == "target" else _stream_rows(reader)
    if not arrays:
        raise _NotStreamable()
    record = _decode_json_line(b"".join(kept))
    if not isinstance(record, dict) or any(record.get(name) != [] for name in arrays):
        raise _NotStreamable()  # a key inside a string, or a line that is not one object
    record.update(arrays)
    return record


def _stream_numbers(reader: _LineReader, into: Optional["_GrowingFloat32"] = None) -> "_GrowingFloat32":
    """The numbers up to the closing bracket (the opening one is consumed), appended to ``into``."""
    values = into if into is not None else _GrowingFloat32()
    while True:
        end = reader.buffer.find(b"]")
        if end >= 0:
            values.extend(_decode_numbers(reader.buffer[:end]))
            reader.buffer = reader.buffer[end + 1 :]
            return values
        cut = reader.buffer.rfind(b",")
        if cut >= 0:
            values.extend(_decode_numbers(reader.buffer[:cut]))
            reader.buffer = reader.buffer[cut + 1 :]
        if not reader.more():
            raise _NotStreamable()  # the line ends inside the array: invalid JSON, reported as such


def _stream_rows(reader: _LineReader) -> Any:
    """dynamic_feat's rows (its opening bracket consumed): one (rows, length) float32 array, or a list of
    row arrays when the lengths differ (parse_dynamic_feat names the row)."""
    values, lengths = _GrowingFloat32(), list[int]()
    while True:
        opening = reader.next_byte()
        if opening == b"]" and not lengths:
            return []
        if opening != b"[":
            raise _NotStreamable()
        before = values.size
        _stream_numbers(reader, values)
        lengths.append(values.size - before)
        separator = reader.next_byte()
        if separator == b"]":
            break
        if separator != b",":
            raise _NotStreamable()
    flat = values.finish()
    if len(set(lengths)) == 1:
        return flat.reshape(len(lengths), lengths[0])
    return np.split(flat, np.cumsum(lengths)[:-1])


def _decode_numbers(text: bytes) -> np.ndarray:
    if not text.strip():
        return np.empty(0, dtype=np.float32)
    try:
        values = orjson.loads(b"[" + text.replace(b'"NaN"', b"null") + b"]")
        # Python floats -> float64 is a plain copy (-> float32 converts each one, ~1.4x slower); cast once after.
        array = np.asarray(values, dtype=np.float64).astype(np.float32)
    except (orjson.JSONDecodeError, ValueError, TypeError, OverflowError):
        raise _NotStreamable() from None
    if array.ndim != 1:
        raise _NotStreamable()
    return array


class _GrowingFloat32:
    """A float32 array grown in place: ndarray.resize reallocates (mremap for large blocks), never copies twice."""

    def __init__(self) -> None:
        self.array = np.empty(1 << 16, dtype=np.float32)
        self.size = 0

    def extend(self, values: np.ndarray) -> None:
        needed = self.size + len(values)
        if needed > len(self.array):
            self.array.resize(max(needed, 2 * len(self.array)), refcheck=False)
        self.array[self.size : needed] = values
        self.size = needed

    def finish(self) -> np.ndarray:
        self.array.resize(self.size, refcheck=False)
        return self.array


def _iter_parquet_rows(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.lib
    import pyarrow.parquet as pq

    try:
        parquet_file = pq.ParquetFile(path)
        row_no = 0
        for batch in parquet_file.iter_batches(batch_size=2048):
            for row in batch.to_pylist():
                row_no += 1
                yield row_no, row
    except pyarrow.lib.ArrowException as error:
        raise UserError(f"{path}: cannot be read as Parquet: {error}") from None


def iter_records(path: Path, fmt: str) -> Iterator[tuple[int, Any]]:
    """(line or row number, decoded record or ``RecordError``) for every record of a file."""
    if fmt == "parquet":
        return _iter_parquet_rows(path)
    return _iter_json_lines(path, compressed=(fmt == "json.gz"))


# ---------------------------------------------------------------- record validation


def parse_start(value: Any, freq: str) -> pd.Period:
    if isinstance(value, (dt.datetime, dt.date, pd.Timestamp)):
        timestamp = pd.Timestamp(value)
    elif isinstance(value, str):
        try:
            timestamp = pd.Timestamp(value)
        except (ValueError, TypeError, OverflowError):
            raise RecordError(
                "start", f"{value!r} is not a timestamp; use 'YYYY-MM-DD HH:MM:SS' or 'YYYY-MM-DD'"
            ) from None
    else:
        raise RecordError("start", f"expected a timestamp string, got {type(value).__name__}")
    if timestamp is pd.NaT:
        raise RecordError("start", f"{value!r} is not a timestamp")
    if timestamp.tzinfo is not None:
        raise RecordError(
            "start",
            f"{value!r} has a time zone; DeepAR needs a time without zone such as '2021-01-01 00:00:00'",
        )
    return pd.Period(timestamp, freq=freq)


def _describe_huge_int(value: int) -> str:
    try:
        return f"an integer of {len(str(abs(value)))} digits"
    except ValueError:  # str() of an int over 4300 digits raises in Python 3.11: estimate from the bit length
        return f"an integer of about {math.floor((abs(value).bit_length() - 1) * math.log10(2)) + 1} digits"


def _find_bad_number(values: list, field_name: str) -> RecordError:
    for index, value in enumerate(values):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_ABS_VALUE:
            return RecordError(
                f"{field_name}[{index}]",
                f"{_describe_huge_int(value)} is too large (values must be within ±{MAX_ABS_VALUE:g})",
            )
        if value is None or value == "NaN" or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            continue
        return RecordError(f"{field_name}[{index}]", f'{value!r} is not a number (missing values are null or "NaN")')
    return RecordError(field_name, "contains values that are not numbers")


def parse_target(value: Any) -> np.ndarray:
    if not isinstance(value, (list, np.ndarray)):
        raise RecordError("target", f"expected a list of numbers, got {type(value).__name__}")
    try:
        target = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError, OverflowError):
        raise _find_bad_number(list(value), "target") from None
    if target.ndim != 1:
        raise RecordError("target", "expected a flat list of numbers, got nested lists")
    for offset, block in _blocks(target):
        infinite = np.isinf(block)
        if infinite.any():
            raise RecordError(f"target[{offset + int(np.argmax(infinite))}]", "is infinite (or too large for float32)")
    return target


def parse_cat(value: Any) -> list[int]:
    if not isinstance(value, list):
        raise RecordError("cat", f"expected a list of non-negative integers, got {type(value).__name__}")
    for index, item in enumerate(value):
        if (
            isinstance(item, bool)
            or not isinstance(item, (int, float))
            or item < 0
            or (isinstance(item, float) and not item.is_integer())
        ):
            raise RecordError(f"cat[{index}]", f"{item!r} is not a non-negative integer")
        if item >= MAX_CAT_VALUE:
            shown = _describe_huge_int(item) if isinstance(item, int) and item > MAX_ABS_VALUE else repr(item)
            raise RecordError(
                f"cat[{index}]",
                f"{shown} is too large: category ids are embedding rows and must be "
                f"below {MAX_CAT_VALUE:,}; renumber the categories from 0",
            )
    return [int(item) for item in value]


def parse_dynamic_feat(value: Any, expected_length: int, length_rule: str) -> np.ndarray:
    """``value``: lists of numbers as decoded, or float32 rows from a streamed long line."""
    streamed = value if isinstance(value, np.ndarray) and value.ndim == 2 else None
    if streamed is not None:
        value = list(streamed)  # rows as views: the length check below names a wrong row
    if not isinstance(value, list) or not all(isinstance(row, (list, np.ndarray)) for row in value):
        raise RecordError("dynamic_feat", "expected a list of lists of numbers")
    for index, row in enumerate(value):
        if len(row) != expected_length:
            raise RecordError(
                f"dynamic_feat[{index}]", f"length {len(row)}, expected {expected_length} ({length_rule})"
            )
    try:
        features = (
            streamed
            if streamed is not None
            else np.asarray(value, dtype=np.float32).reshape(len(value), expected_length)
        )
    except (ValueError, TypeError, OverflowError):
        for index, row in enumerate(value):
            try:
                np.asarray(row, dtype=np.float32)
            except (ValueError, TypeError, OverflowError):
                raise _find_bad_number(row, f"dynamic_feat[{index}]") from None
        raise RecordError("dynamic_feat", "contains values that are not numbers") from None
    if not np.isfinite(features).all():
        row, col = (int(i[0]) for i in np.nonzero(~np.isfinite(features)))
        raise RecordError(
            f"dynamic_feat[{row}][{col}]", "missing or infinite value; dynamic_feat may not have missing values"
        )
    return features


def parse_record(record: Any, freq: str, *, dynamic_extra_length: int = 0) -> dict:
    """One DeepAR record to a GluonTS entry. ``dynamic_extra_length`` is ``prediction_length`` at inference."""
    if not isinstance(record, dict):
        raise RecordError("record", f"expected a JSON object, got {type(record).__name__}")
    if "start" not in record:
        raise RecordError("start", "missing")
    if "target" not in record:
        raise RecordError("target", "missing")
    entry: dict[str, Any] = {"start": parse_start(record["start"], freq), "target": parse_target(record["target"])}
    if record.get("cat") is not None:
        entry["feat_static_cat"] = parse_cat(record["cat"])
    if record.get("dynamic_feat") is not None:
        expected = len(entry["target"]) + dynamic_extra_length
        rule = "len(target) + prediction_length" if dynamic_extra_length else "len(target)"
        entry["feat_dynamic_real"] = parse_dynamic_feat(record["dynamic_feat"], expected, rule)
    return entry


def check_magnitude(entry: dict) -> None:
    """Values beyond ``MAX_ABS_VALUE`` make DeepAR's float32 scaling overflow: the loss becomes nan."""
    for field_name, values in (("target", entry["target"]), ("dynamic_feat", entry.get("feat_dynamic_real"))):
        if values is None or not values.size:
            continue
        for offset, block in _blocks(values):
            with np.errstate(invalid="ignore"):
                too_large = (block > MAX_ABS_VALUE) | (block < -MAX_ABS_VALUE)
            if too_large.any():
                position = np.unravel_index(offset + int(np.argmax(too_large)), values.shape)
                name = field_name + "".join(f"[{int(i)}]" for i in position)
                raise RecordError(
                    name,
                    f"{float(values[position]):g} is beyond ±{MAX_ABS_VALUE:g}, the largest "
                    "magnitude DeepAR trains on in float32; rescale the data (for example to other units)",
                )


# ---------------------------------------------------------------- channels


@dataclass
class ChannelStats:
    num_series: int = 0
    num_observations: int = 0
    num_missing: int = 0
    num_series_unobserved: int = 0  # series whose every target value is missing
    target_min: float = math.inf
    target_max: float = -math.inf
    target_sum: float = 0.0

    def add(self, target: np.ndarray) -> None:
        self.num_series += 1
        self.num_observations += len(target)
        observed = 0
        for _, block in _blocks(target):
            present = block[~np.isnan(block)]
            observed += len(present)
            if len(present):
                self.target_min = min(self.target_min, float(present.min()))
                self.target_max = max(self.target_max, float(present.max()))
                self.target_sum += float(present.sum(dtype=np.float64))
        self.num_missing += len(target) - observed
        if not observed:
            self.num_series_unobserved += 1

    @property
    def target_mean(self) -> float:
        present = self.num_observations - self.num_missing
        return self.target_sum / present if present else math.nan

    def as_dict(self) -> dict[str, Any]:
        any_present = self.num_observations > self.num_missing
        return {
            "num_series": self.num_series,
            "num_observations": self.num_observations,
            "num_missing": self.num_missing,
            "num_series_unobserved": self.num_series_unobserved,
            **{
                name: (value if any_present else None)
                for name, value in (
                    ("target_min", self.target_min),
                    ("target_mean", self.target_mean),
                    ("target_max", self.target_max),
                )
            },
        }


@dataclass
class Channel:
    name: str
    entries: list[dict] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)
    stats: ChannelStats = field(default_factory=ChannelStats)
    num_cat: Optional[int] = None  # None: no record had "cat"
    num_dynamic_feat: Optional[int] = None
    cat_max: list[int] = field(default_factory=list)


class _ProblemLog:
    def __init__(self) -> None:
        self.problems: list[str] = []
        self.total = 0

    def add(self, message: str) -> None:
        self.total += 1
        if len(self.problems) < MAX_REPORTED_PROBLEMS:
            self.problems.append(message)

    def raise_if_any(self) -> None:
        if self.total:
            raise DataError(self.problems, self.total)


def _check_feature_counts(channel: Channel, entry: dict, has_cat: bool, has_dyn: bool) -> None:
    cat_count = len(entry["feat_static_cat"]) if has_cat else 0
    dyn_count = len(entry["feat_dynamic_real"]) if has_dyn else 0
    if not channel.entries:  # the first valid record sets the counts every later one must match
        channel.num_cat, channel.num_dynamic_feat = cat_count, dyn_count
        channel.cat_max = list(entry.get("feat_static_cat", []))
        return
    if cat_count != channel.num_cat:
        raise RecordError(
            "cat",
            f"has {cat_count} value(s) but earlier records have {channel.num_cat}; every record needs the same number",
        )
    if dyn_count != channel.num_dynamic_feat:
        raise RecordError(
            "dynamic_feat",
            f"has {dyn_count} feature(s) but earlier records have {channel.num_dynamic_feat}; every record needs the same number",
        )
    if has_cat:
        channel.cat_max = [max(a, b) for a, b in zip(channel.cat_max, entry["feat_static_cat"])]


def read_channel(
    name: str, channel_dir: Path, freq: str, content_type: Optional[str] = None, *, min_length: int = 1
) -> Channel:
    """Read and validate every record of a channel; raise ``DataError`` listing bad records."""
    if not channel_dir.is_dir():
        raise UserError(f"channel '{name}' has no data folder at {channel_dir}")
    files = discover_files(channel_dir)
    if not files:
        raise UserError(
            f"channel '{name}' has no data files under {channel_dir} (hidden files and _SUCCESS are skipped)"
        )
    channel = Channel(name=name)
    problems = _ProblemLog()
    base = channel_dir.parent
    for path in files:
        fmt = file_format(path, content_type)
        shown_path = path.relative_to(base)
        for line_no, record in iter_records(path, fmt):
            location = f"{shown_path}:{line_no}"
            try:
                if isinstance(record, RecordError):
                    raise record
                entry = parse_record(record, freq)
                check_magnitude(entry)
                if len(entry["target"]) < min_length:
                    raise RecordError(
                        "target", f"has {len(entry['target'])} value(s); this channel needs at least {min_length}"
                    )
                _check_feature_counts(channel, entry, "feat_static_cat" in entry, "feat_dynamic_real" in entry)
            except RecordError as error:
                problems.add(f"{location}: {error}")
                continue
            entry["item_id"] = location
            channel.entries.append(entry)
            channel.locations.append(location)
            channel.stats.add(entry["target"])
    problems.raise_if_any()
    if not channel.entries:
        raise UserError(f"channel '{name}' has no records under {channel_dir}")
    return channel


# ---------------------------------------------------------------- features


def resolve_features(params: DeepARHyperparameters, train: Channel) -> FeatureSpec:
    """Apply ``cardinality``/``num_dynamic_feat`` (auto, ignore or explicit) to what the data has."""
    data_cat = train.num_cat or 0
    if params.cardinality == "ignore":
        cardinality: tuple[int, ...] = ()
    elif params.cardinality == "auto":
        # max+1 per position: GluonTS's distinct-value count breaks when category ids have gaps.
        cardinality = tuple(m + 1 for m in train.cat_max)
    else:
        cardinality = tuple(params.cardinality)
        if len(cardinality) != data_cat:
            raise UserError(
                f"hyperparameter 'cardinality' = {list(cardinality)} has {len(cardinality)} entries but the "
                f"training records have {data_cat} 'cat' value(s); use 'auto' or one cardinality per 'cat' position"
            )
        for index, (limit, seen) in enumerate(zip(cardinality, train.cat_max)):
            if seen >= limit:
                location = next(
                    loc for e, loc in zip(train.entries, train.locations) if e["feat_static_cat"][index] >= limit
                )
                raise UserError(
                    f"{location}: cat[{index}] = {seen} is out of range for cardinality[{index}] = {limit} "
                    f"(values must be 0..{limit - 1})"
                )
    data_dyn = train.num_dynamic_feat or 0
    if params.num_dynamic_feat == "ignore":
        num_dynamic_feat = 0
    elif params.num_dynamic_feat == "auto":
        num_dynamic_feat = data_dyn
    else:
        num_dynamic_feat = params.num_dynamic_feat
        if num_dynamic_feat != data_dyn:
            raise UserError(
                f"hyperparameter 'num_dynamic_feat' = {num_dynamic_feat} but the training records have "
                f"{data_dyn} dynamic_feat series; use 'auto' or the number present in the data"
            )
    return FeatureSpec(cardinality=cardinality, num_dynamic_feat=num_dynamic_feat)


def apply_features(channel: Channel, spec: FeatureSpec) -> None:
    """Drop ignored fields and check a (test) channel against what the model was trained with."""
    problems = _ProblemLog()
    for entry, location in zip(channel.entries, channel.locations):
        if spec.num_cat == 0:
            entry.pop("feat_static_cat", None)
        if spec.num_dynamic_feat == 0:
            entry.pop("feat_dynamic_real", None)
        record = {
            "target": entry["target"],
            "cat": entry.get("feat_static_cat"),
            "dynamic_feat": entry.get("feat_dynamic_real"),
        }
        for problem in spec.check(record, where=f"{location}: "):
            problems.add(problem)
    problems.raise_if_any()


def check_target_domain(channel: Channel, likelihood: str) -> None:
    """Likelihoods with a restricted support need targets inside it."""
    if likelihood == "beta":
        low, high, rule = 0.0, 1.0, "between 0 and 1"
    elif likelihood == "negative-binomial":
        low, high, rule = 0.0, math.inf, "non-negative (counts)"
    else:
        return
    if channel.stats.target_min >= low and channel.stats.target_max <= high:
        return
    for entry, location in zip(channel.entries, channel.locations):
        target = entry["target"]
        bad = np.flatnonzero((target < low) | (target > high))
        if len(bad):
            index = int(bad[0])
            raise UserError(
                f"{location}: target[{index}] = {float(target[index])} but likelihood '{likelihood}' needs targets {rule}"
            )


def check_observed(channel: Channel) -> None:
    """Series whose targets are all missing teach nothing: say how many; fail if no series has a value."""
    unobserved = channel.stats.num_series_unobserved
    if not unobserved:
        return
    examples = [loc for entry, loc in zip(channel.entries, channel.locations) if np.isnan(entry["target"]).all()][:3]
    if unobserved == channel.stats.num_series:
        raise UserError(
            f"channel '{channel.name}': none of its {unobserved} series has an observed target value "
            f'(every value is null or "NaN"), e.g. {", ".join(examples)}'
        )
    log.warning(
        '[%s] %d of %d series have no observed target value (all null or "NaN") and teach the model nothing, e.g. %s',
        channel.name,
        unobserved,
        channel.stats.num_series,
        ", ".join(examples),
    )


def check_train_lengths(channel: Channel, context_length: int, prediction_length: int) -> None:
    """A training window is context_length + prediction_length points; fail when no series has one.

    GluonTS would pad shorter series with zeros, and with fewer than ``prediction_length`` points it
    finds no window at all and gives up mid-training ("maximum number of idle transformation calls").
    """
    needed = context_length + prediction_length
    lengths = np.fromiter((len(e["target"]) for e in channel.entries), dtype=np.int64, count=len(channel.entries))
    short = int((lengths < needed).sum())
    if not short:
        return
    longest = int(np.argmax(lengths))
    if short == len(lengths):
        raise UserError(
            f"channel '{channel.name}': every series is shorter than the {needed} points one training window needs "
            f"(hyperparameters context_length = {context_length} + prediction_length = {prediction_length}); the longest "
            f"is {channel.locations[longest]} with {int(lengths[longest])} points. Use longer series or lower "
            "context_length / prediction_length"
        )
    first_short = channel.locations[int(np.argmax(lengths < needed))]
    log.warning(
        "[%s] %d of %d series are shorter than context_length + prediction_length = %d points (e.g. %s); "
        "their training windows are padded",
        channel.name,
        short,
        len(lengths),
        needed,
        first_short,
    )


def log_channel_stats(channel: Channel, spec: Optional[FeatureSpec] = None) -> None:
    s = channel.stats
    log.info("[%s] number of time series: %d", channel.name, s.num_series)
    log.info(
        "[%s] number of observations: %d, missing values: %d (%.2f%%)",
        channel.name,
        s.num_observations,
        s.num_missing,
        100.0 * s.num_missing / max(1, s.num_observations),
    )
    log.info("[%s] target min/mean/max: %.6g / %.6g / %.6g", channel.name, s.target_min, s.target_mean, s.target_max)
    if spec is not None:
        log.info(
            "[%s] categorical features: %d (cardinality %s), dynamic features: %d",
            channel.name,
            spec.num_cat,
            list(spec.cardinality),
            spec.num_dynamic_feat,
        )
