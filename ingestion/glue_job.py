"""Glue/Spark job: raw IoT data lake (Firehose objects) -> curated, typed Parquet partitioned by date.

Plain PySpark 3.5 (Glue 5.0), one self-contained file: Glue runs it as uploaded by `ingestion.infra up`.
Arguments come as Glue passes them (`--key value`; unknown ones such as --JOB_NAME are ignored):

    spark-submit ingestion/glue_job.py --raw-path s3://raw/raw/ --curated-path s3://cur/readings/ \\
        --quarantine-path s3://cur/quarantine/
    python -m ingestion.glue_job --raw-path /data/raw --curated-path /data/curated --quarantine-path /data/quarantine

Reads every object under --raw-path recursively, whatever Firehose wrote: records joined by any
separator the IoT rule's Firehose action allows (`\n`, `\t`, `\r\n`, `,` or none: `{...}{...}`, which
Spark's JSON reader cannot split), GZIP or not. Reads both payload styles: this project's devices
(`particulate_matter`, `sulfur_dioxide`, device_id) and the reference device kit's (`particullate_matter`,
`sulfure_dioxide`, integer values, JavaScript Date timestamps, no device id: it comes from the
`device_id` the rule adds, else a `clientid` field, else level --topic-device-level of a `topic` field).
Each record is typed against the schema; a record that is not JSON (truncated, corrupt: its
well-formed neighbours are kept), lacks a device id or timestamp, has a timestamp that does not parse
or lies outside the accepted window (before --earliest-timestamp, default 2000-01-01, or more than
--max-ahead-hours, default 24, after its object arrived in the raw lake), has a non-numeric value or
one outside its physical range goes to the quarantine output with the reason and the object key.
Duplicates of (device_id, timestamp) keep the latest received_at. The curated output is snappy
Parquet partitioned by date; only the dates this run touched are rewritten (merged with what they
held), so re-running over the same input leaves the same output. Logs the counts.

Cost (issue #27 item 6): the records are parsed once, in Python; valid and quarantined records land
in one cached frame, whose counts and touched dates come from one action (the objects are counted
from the file index, with no job). De-duplication shares the write's shuffle and
sort: rows are hash-partitioned by date once, the window runs over (date, device_id, timestamp) within
those partitions, and that order is already the write's (date, then device_id, timestamp), so every
date partition is one file sorted by device and time (what DuckDB and Athena read fastest). The
curated row count is read back from the written files' Parquet footers instead of a counting pass.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterator, Optional

POLLUTANTS = ("ozone", "particulate_matter", "carbon_monoxide", "sulfur_dioxide", "nitrogen_dioxide")
# Physical plausibility bounds (µg/m³; carbon monoxide in mg/m³); outside means a broken reading.
RANGES = {
    "ozone": (0.0, 1000.0),
    "particulate_matter": (0.0, 2000.0),
    "carbon_monoxide": (0.0, 100.0),
    "sulfur_dioxide": (0.0, 2000.0),
    "nitrogen_dioxide": (0.0, 2000.0),
    "latitude": (-90.0, 90.0),
    "longitude": (-180.0, 180.0),
}
NUMERIC = (*POLLUTANTS, "latitude", "longitude")
NUMERIC_RANGES = tuple((name, RANGES[name]) for name in NUMERIC)  # check()'s per-record loop
# Other spellings of the same fields, as the reference device kit publishes them.
FIELD_ALIASES = {"particullate_matter": "particulate_matter", "sulfure_dioxide": "sulfur_dioxide"}
ALIASES_OF = {
    name: tuple(alias for alias, canonical in FIELD_ALIASES.items() if canonical == name)
    for name in set(FIELD_ALIASES.values())
}
# What may sit between two records: every separator Firehose's IoT rule action allows, plus blanks.
SEPARATOR_CHARACTERS = frozenset(" \t\r\n,")
GZIP_CHUNK = 1 << 16
CURATED_COLUMNS = ("device_id", "timestamp", *NUMERIC, "received_at", "source", "date")
# A numeric timestamp above this is epoch milliseconds (1e11 s is the year 5138), below it seconds.
EPOCH_MILLISECONDS_ABOVE = 1e11


@dataclass(frozen=True)
class TimestampWindow:
    """The reading times the lake accepts (issue #23 item 2): one device with a broken clock must not
    create date partitions years ahead (the newest-partitions readers would see only those) nor years
    behind. Arrival is when the record's raw object landed in the lake (its S3 LastModified), which a
    device cannot set."""

    earliest: datetime = datetime(2000, 1, 1)
    max_ahead: timedelta = timedelta(days=1)

    def problem(self, when: datetime, arrived: Optional[datetime]) -> Optional[str]:
        """Why ``when`` is refused, or None; ``arrived`` None means now."""
        if when < self.earliest:
            return f"timestamp {when.isoformat()} is before {self.earliest.isoformat()} (--earliest-timestamp)"
        arrived = arrived or datetime.now(timezone.utc).replace(tzinfo=None)
        if when > arrived + self.max_ahead:
            ahead = self.max_ahead.total_seconds() / 3600
            return (
                f"timestamp {when.isoformat()} is more than {ahead:g} h after the record arrived "
                f"({arrived.isoformat(timespec='seconds')}; --max-ahead-hours)"
            )
        return None


def topic_level(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a level >= 1")
    return int(text)


def earliest_timestamp(text: str) -> datetime:
    when = parse_time(text)
    if when is None:
        raise argparse.ArgumentTypeError(f"{text!r}: expected an ISO date or date and time (2000-01-01)")
    return when


def max_ahead_hours(text: str) -> timedelta:
    try:
        hours = float(text)
    except ValueError:
        hours = math.nan
    if not 0 <= hours <= 24 * 366:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of hours from 0 to {24 * 366}")
    return timedelta(hours=hours)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Glue's `--key value` pairs; the ones Glue adds (--JOB_NAME, --TempDir, ...) are ignored."""
    parser = argparse.ArgumentParser(
        prog="python -m ingestion.glue_job",
        allow_abbrev=False,
        description="raw IoT data lake -> curated Parquet (see the module docstring)",
    )
    parser.add_argument("--raw-path", required=True)
    parser.add_argument("--curated-path", required=True)
    parser.add_argument("--quarantine-path", required=True)
    parser.add_argument("--partitions", type=int, default=0, help="output partitions (0: Spark's default)")
    parser.add_argument(
        "--earliest-timestamp",
        type=earliest_timestamp,
        default=TimestampWindow.earliest,
        help="quarantine readings timestamped before this ISO date/time (default 2000-01-01)",
    )
    parser.add_argument(
        "--max-ahead-hours",
        type=max_ahead_hours,
        default=TimestampWindow.max_ahead,
        help="quarantine readings timestamped more than this many hours after their object arrived (default 24)",
    )
    parser.add_argument(
        "--topic-device-level",
        type=topic_level,
        default=2,
        help="level of a record's topic field that names the device (counted from 1, as topic(n))",
    )
    args, _glue_arguments = parser.parse_known_args(argv)
    return args


def split_records(text: str) -> Iterator[tuple[Optional[object], Optional[str], str]]:
    """(parsed value, error, raw text) for each JSON value in ``text``, whatever separates them.

    A value that does not decode is reported once, from where it starts up to the next record
    (see ``next_record``), so a truncated record never takes its neighbours with it.
    """
    decoder = json.JSONDecoder()
    position, end = 0, len(text)
    while True:
        while position < end and text[position] in SEPARATOR_CHARACTERS:
            position += 1
        if position >= end:
            return
        try:
            value, stop = decoder.raw_decode(text, position)
            yield value, None, text[position:stop]
            position = stop
        except ValueError as error:
            stop = next_record(text, position + 1, decoder)
            yield None, f"not JSON: {error.msg}", text[position:stop].rstrip("".join(SEPARATOR_CHARACTERS))[:1000]
            position = stop


def next_record(text: str, start: int, decoder: json.JSONDecoder) -> int:
    """Where the next whole record begins after a broken one: the first ``{`` from ``start`` that decodes
    to an object ending at a record boundary (separators, then the end or another ``{``); else the end.
    The broken text before it is one quarantined record. (An object nested at the very end of a
    truncated record can pass for one: it is then quarantined on its own, and nothing is lost.)"""
    brace = text.find("{", start)
    while brace >= 0:
        try:
            value, stop = decoder.raw_decode(text, brace)
            if isinstance(value, dict) and at_boundary(text, stop):
                return brace
        except ValueError:
            pass
        brace = text.find("{", brace + 1)
    return len(text)


def at_boundary(text: str, position: int) -> bool:
    while position < len(text) and text[position] in SEPARATOR_CHARACTERS:
        position += 1
    return position == len(text) or text[position] == "{"


def read_object(content: bytes) -> tuple[str, Optional[str]]:
    """The object's text and, if its GZIP data is cut short or corrupt, why (the readable part is kept)."""
    error = None
    if content[:2] == b"\x1f\x8b":  # GZIP magic: Firehose's CompressionFormat GZIP (maybe several members)
        parts, data = [], content
        while data[:2] == b"\x1f\x8b" and error is None:
            member = zlib.decompressobj(wbits=31)
            for chunk in range(0, len(data), GZIP_CHUNK):  # in chunks: what precedes a corrupt block is kept
                try:
                    parts.append(member.decompress(data[chunk : chunk + GZIP_CHUNK]))
                except zlib.error as failure:
                    error = f"corrupt GZIP data: {failure}"
                    break
                if member.eof:
                    break
            if error is None and not member.eof:
                error = "GZIP data cut short"
            data = member.unused_data + data[chunk + GZIP_CHUNK :] if member.eof else b""
        if error is None and data.strip(b"\x00"):
            error = f"{len(data)} bytes after the GZIP data"
        content = b"".join(parts)
    return content.decode("utf-8", errors="replace"), error


def decode_object(content: bytes) -> str:
    text, error = read_object(content)
    if error:
        raise ValueError(error)
    return text


def parse_time(value: object) -> Optional[datetime]:
    """A naive UTC datetime, or None for anything that is not a time datetime can hold: never raises,
    since one record's value must not stop the job (1e20, NaN or -1e12 once did, on every run)."""
    try:
        if isinstance(value, (int, float)) and not isinstance(value, bool):  # epoch seconds or milliseconds
            if not math.isfinite(value):
                return None
            seconds = value / 1000 if abs(value) > EPOCH_MILLISECONDS_ABOVE else value
            return datetime.fromtimestamp(seconds, tz=timezone.utc).replace(tzinfo=None)
        if isinstance(value, str) and value:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return (parsed.astimezone(timezone.utc) if parsed.tzinfo else parsed).replace(tzinfo=None)
    except (ValueError, OverflowError, OSError):  # not ISO, or beyond datetime's years 1..9999
        return None
    return None


def number(value: object) -> Optional[float]:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return float(value)  # ValueError: non-numeric
    raise ValueError


def device_of(record: dict, topic_level: int = 2) -> Optional[str]:
    """The device: ``device_id`` (added by the rule, or sent by this project's devices), else the MQTT
    client id (``clientid``/``client_id``, rule ``clientid() AS clientid``), else level ``topic_level``
    (1-based, as the rule's topic(n)) of a ``topic`` field (rule ``topic() AS topic``)."""
    for name in ("device_id", "clientid", "client_id"):
        value = record.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    topic = record.get("topic")
    if isinstance(topic, str):
        levels = topic.split("/")
        if 0 < topic_level <= len(levels) and levels[topic_level - 1].strip():
            return levels[topic_level - 1].strip()
    return None


def field(record: dict, name: str) -> object:
    """The value of ``name`` under its own spelling or, failing that, any alias of it."""
    value = record.get(name)
    if value is None:
        for alias in ALIASES_OF.get(name, ()):
            value = record.get(alias)
            if value is not None:
                break
    return value


def check(
    record: object,
    topic_level: int = 2,
    window: TimestampWindow = TimestampWindow(),
    arrived: Optional[datetime] = None,
) -> tuple[Optional[tuple], Optional[str]]:
    """A curated row (without source/date) or the quarantine reason; ``arrived``: when the record's
    object landed in the lake (None: now)."""
    if not isinstance(record, dict):
        return None, "not a JSON object"
    device = record.get("device_id")  # the usual case first: this is the job's per-record hot path
    device = device.strip() if isinstance(device, str) else None
    device = device or device_of(record, topic_level)
    if device is None:
        return None, "missing device_id"
    if record.get("timestamp") in (None, ""):
        return None, "missing timestamp"
    when = parse_time(record["timestamp"])
    if when is None:
        return None, f"bad timestamp {str(record['timestamp'])[:40]!r}"
    outside = window.problem(when, arrived)
    if outside:
        return None, outside
    values = []
    for name, (low, high) in NUMERIC_RANGES:
        raw = record.get(name)
        if raw is None:
            raw = field(record, name)  # another spelling of it
        if type(raw) is float:  # JSON's usual number: no need for number()'s checks
            value: Optional[float] = raw
        else:
            try:
                value = number(raw)
            except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond float's range
                return None, f"{name}: not a number ({str(raw)[:40]!r})"
        if value is not None and (value != value or not low <= value <= high):
            return None, f"{name}: {value} outside [{low:g}, {high:g}]"
        values.append(value)
    received = parse_time(record.get("received_at")) if record.get("received_at") is not None else None
    return (device, when, *values, received), None


def classify(
    path: str,
    content: bytes,
    topic_level: int = 2,
    window: TimestampWindow = TimestampWindow(),
    arrived: Optional[datetime] = None,
) -> Iterator[tuple]:
    """Every record of one raw object, as ("ok", row...) or ("bad", reason, raw, when-or-None, source).

    ``when`` (it dates the quarantine partition) is None unless the timestamp is inside ``window``:
    a refused far-future reading must not create a far-future quarantine partition either."""
    text, unreadable = read_object(content)
    if unreadable:  # the readable part is still split below; the cut-off tail is quarantined there
        yield ("bad", f"unreadable object: {unreadable}", "", None, path)
    for value, error, raw in split_records(text):
        if error is None:
            row, error = check(value, topic_level, window, arrived)
            if row is not None:
                yield ("ok", *row, path)
                continue
        when = parse_time(value.get("timestamp")) if isinstance(value, dict) else None
        if when is not None and window.problem(when, arrived):
            when = None
        yield ("bad", error, raw[:2000], when, path)


def arrival(seconds: Optional[float]) -> Optional[datetime]:
    """An object's modification time (epoch seconds, as Spark casts it) as a naive UTC datetime."""
    return None if seconds is None else datetime.fromtimestamp(seconds, tz=timezone.utc).replace(tzinfo=None)


def classified_schema(types):
    """The one frame every record lands in (``types``: pyspark.sql.types): ``valid`` rows fill the curated
    columns, the others reason, raw and (when it is inside the window) timestamp."""
    return types.StructType(
        [
            types.StructField("valid", types.BooleanType(), False),
            types.StructField("device_id", types.StringType()),
            types.StructField("timestamp", types.TimestampNTZType()),
            *(types.StructField(name, types.DoubleType()) for name in NUMERIC),
            types.StructField("received_at", types.TimestampNTZType()),
            types.StructField("source", types.StringType(), False),
            types.StructField("reason", types.StringType()),
            types.StructField("raw", types.StringType()),
        ]
    )


NO_VALUES = (None,) * len(NUMERIC)


def classified_rows(
    path: str, content: bytes, topic_level: int, window: TimestampWindow, arrived: Optional[datetime]
) -> Iterator[tuple]:
    """classify() in classified_schema's layout: valid rows fill the curated columns, quarantined
    ones reason, raw and the in-window timestamp."""
    for item in classify(path, content, topic_level, window, arrived):
        if item[0] == "ok":
            yield (True, *item[1:], None, None)
        else:
            _, reason, raw, when, source = item
            yield (False, None, when, *NO_VALUES, None, source, reason, raw)


def run(
    spark,
    raw_path: str,
    curated_path: str,
    quarantine_path: str,
    partitions: int = 0,
    topic_level: int = 2,
    window: TimestampWindow = TimestampWindow(),
) -> dict[str, int]:
    from pyspark.sql import Window
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    raw = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .option("pathGlobFilter", "[!._]*")
        .load(raw_path)
        # epoch seconds: PySpark would turn a timestamp into the worker's local time
        .select("path", "content", F.col("modificationTime").cast("double").alias("arrived"))
    )
    # The file index already lists the objects: counting them needs no Spark job.
    objects = len(raw.inputFiles())
    # One pass of Python over the objects: every record lands in one cached frame, valid and
    # quarantined alike, split below (two frames built from the same input would parse everything twice).
    # Rows were typed by check(): skip createDataFrame's per-row Python verification. (mapInArrow was
    # tried: its parse stage took twice as long at 1 M readings, Arrow building from Python objects
    # costs more than pickling them.)
    classified = spark.createDataFrame(
        raw.rdd.flatMap(lambda r: classified_rows(r.path, bytes(r.content), topic_level, window, arrival(r.arrived))),
        classified_schema(T),
        verifySchema=False,
    ).cache()
    date_of = F.date_format("timestamp", "yyyy-MM-dd")
    # One action: how many of each kind, and which dates the valid rows touch.
    tally = classified.groupBy("valid", F.when(F.col("valid"), date_of).alias("date")).count().collect()
    valid = sum(row["count"] for row in tally if row["valid"])
    quarantined = sum(row["count"] for row in tally if not row["valid"])
    records_in = valid + quarantined
    touched = sorted(row["date"] for row in tally if row["valid"])
    good = classified.where(F.col("valid")).select(*CURATED_COLUMNS[:-1]).withColumn("date", date_of)
    bad = classified.where(~F.col("valid")).select("reason", "raw", "timestamp", "source")

    merged = good
    existing = None
    try:
        existing = spark.read.parquet(curated_path).where(F.col("date").isin(touched)) if touched else None
    except Exception:  # noqa: BLE001 - no curated output yet (AnalysisException: path does not exist)
        existing = None
    if existing is not None:
        merged = good.unionByName(existing.select(*CURATED_COLUMNS).withColumn("date", F.col("date").cast("string")))
    # One shuffle for the de-duplication and the write: rows hashed by date (a duplicate shares its
    # reading's date), the window sorts each partition by (date, device_id, timestamp, latest first),
    # which is also the order the partitioned write needs, so Spark adds no second sort, and each
    # date is written by one task: one file per date partition, sorted by device and time.
    by_date = merged.repartition(partitions, "date") if partitions else merged.repartition("date")
    latest = Window.partitionBy("date", "device_id", "timestamp").orderBy(
        F.col("received_at").desc_nulls_last(), F.col("source").desc()
    )
    deduplicated = (
        by_date.withColumn("_n", F.row_number().over(latest)).where("_n = 1").drop("_n").select(*CURATED_COLUMNS)
    )
    if existing is not None:
        # Materialize before overwriting: the merge reads the very partitions the write replaces.
        deduplicated = deduplicated.localCheckpoint(eager=True)
    (
        deduplicated.sortWithinPartitions("date", "device_id", "timestamp")  # a no-op after the window
        .write.mode("overwrite")
        .partitionBy("date")
        .option("compression", "snappy")
        .parquet(curated_path)
    )
    # The rows now in the touched dates, from the written files' Parquet footers (no pass over the data).
    curated_rows = spark.read.parquet(curated_path).where(F.col("date").isin(touched)).count() if touched else 0

    bad = bad.withColumn("date", F.coalesce(date_of, F.lit("unknown")))
    if quarantined:
        (
            bad.repartition("date")  # one file per quarantine date, not one per input partition and date
            .write.mode("overwrite")
            .partitionBy("date")
            .option("compression", "snappy")
            .parquet(quarantine_path)
        )
    counts = {
        "objects": objects,
        "records_in": records_in,
        "valid": valid,
        "quarantined": quarantined,
        "curated_rows_in_touched_dates": curated_rows,
        "dates_touched": len(touched),
    }
    classified.unpersist()
    return counts


def spark_session():
    import os

    from pyspark.sql import SparkSession

    # Local runs: Python workers use this interpreter (its packages), not whatever `python3` is on PATH.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # Glue and spark-submit choose the master; a plain `python -m` run gets PySpark's local[*].
    builder = (
        SparkSession.builder.appName("deepar-raw-to-curated")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.sources.partitionOverwriteMode", "dynamic")
        .config("spark.sql.parquet.compression.codec", "snappy")
        .config("spark.ui.showConsoleProgress", "false")
    )
    return builder.getOrCreate()


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    spark = spark_session()
    spark.sparkContext.setLogLevel("WARN")
    counts = run(
        spark,
        args.raw_path,
        args.curated_path,
        args.quarantine_path,
        args.partitions,
        args.topic_device_level,
        TimestampWindow(args.earliest_timestamp, args.max_ahead_hours),
    )
    print("ETL_COUNTS " + json.dumps(counts), flush=True)
    print(
        f"raw -> curated: {counts['objects']} objects, {counts['records_in']} records in, {counts['valid']} valid, "
        f"{counts['quarantined']} quarantined; {counts['curated_rows_in_touched_dates']} curated rows over "
        f"{counts['dates_touched']} date partition(s) (duplicates removed)",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
