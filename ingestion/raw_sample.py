"""Raw data-lake sample made by code (the simulator's signal model), laid out as Firehose writes it.

    python -m ingestion.raw_sample --out /tmp/raw --devices 3 --start 2024-01-01 --days 14 --step 1h
    python -m ingestion.raw_sample --out /tmp/raw --payload reference      # the reference kit's lake: comma-joined

One object per buffer interval (all devices, as Firehose batches them; --object-hours) under
<out>/raw/year=YYYY/month=MM/day=DD/hour=HH/: every record followed by the IoT rule's --separator
(newline, tab, crlf, comma or none: `{...}{...}`; `mixed` rotates through them, object by object),
GZIP-compressed (Firehose's CompressionFormat) per --compression (`mixed`: every third object).
--payload picks the message format: this project's devices or the reference device kit's (its
spellings, integers, JavaScript Date timestamps, no device id). Records carry device_id and
received_at as the IoT rule adds them; a few are deliberately broken and a few valid ones are
re-sent duplicates, as in a real lake.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
from collections import defaultdict
from datetime import timedelta
from pathlib import Path
from typing import Optional

from .glue_job import check
from .relay import SEPARATORS
from .signals import PAYLOAD_STYLES, history, parse_time, reference_payload

COMPRESSIONS = ("none", "gzip", "mixed")


def encode(records: list[dict], separator: str = "\n", compress: bool = False) -> bytes:
    """Records as one Firehose object: each followed by ``separator`` (the rule's action appends it)."""
    body = "".join(json.dumps(r) + separator for r in records).encode()
    return gzip.compress(body) if compress else body


def write_lake(
    out: Path,
    devices: list[str],
    start: str,
    days: float,
    step: str = "1h",
    separator: str = "mixed",
    compression: str = "mixed",
    seed: int = 7,
    invalid_rate: float = 0.002,
    duplicate_rate: float = 0.002,
    object_hours: int = 1,
    payload: str = "project",
) -> dict[str, int]:
    """Write the sample; returns counts (records, objects, duplicates) for tests and logs.

    ``separator`` is a name of relay.SEPARATORS or "mixed"; ``compression`` one of COMPRESSIONS."""
    from .simulator import parse_step

    begin = parse_time(start)
    readings = list(
        history(devices, begin, begin + timedelta(days=days), parse_step(step), seed=seed, invalid_rate=invalid_rate)
    )
    rng = random.Random(seed)
    batches: dict[tuple, list[dict]] = defaultdict(list)
    duplicates = 0
    for reading in readings:
        when = parse_time(reading.get("timestamp", start))
        received = when + timedelta(seconds=rng.randint(1, 90))
        message = reference_payload(reading, when) if payload == "reference" else reading
        # What the rule adds: topic(2) AS device_id (the reference kit sends none), timestamp() AS received_at.
        record = {**message, "device_id": reading["device_id"], "received_at": int(received.timestamp() * 1000)}
        bucket = when.replace(minute=0, second=0, microsecond=0, hour=when.hour - when.hour % object_hours)
        batches[bucket].append(record)
        valid = check(record)[0] is not None
        if valid and rng.random() < duplicate_rate:  # a device re-sent it after a lost ack (QoS 1: at least once)
            batches[bucket].append({**record, "received_at": record["received_at"] + 5000})
            duplicates += 1
    names = list(SEPARATORS) if separator == "mixed" else [separator]
    for n, (bucket, records) in enumerate(sorted(batches.items())):
        compress = compression == "gzip" or (compression == "mixed" and n % 3 == 2)
        folder = out / "raw" / f"year={bucket:%Y}" / f"month={bucket:%m}" / f"day={bucket:%d}" / f"hour={bucket:%H}"
        folder.mkdir(parents=True, exist_ok=True)
        suffix = ".gz" if compress else ""
        (folder / f"deepar-iot-stream-1-{bucket:%Y-%m-%d-%H-%M-%S}-{n:06d}{suffix}").write_bytes(
            encode(records, SEPARATORS[names[n % len(names)]], compress)
        )
    return {
        "readings": len(readings),
        "records": len(readings) + duplicates,
        "duplicates": duplicates,
        "objects": len(batches),
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ingestion.raw_sample", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--devices", type=int, default=3)
    parser.add_argument("--prefix", default="deepar-iot")
    parser.add_argument("--start", default="2024-01-01")
    parser.add_argument("--days", type=float, default=14)
    parser.add_argument("--step", default="1h")
    parser.add_argument("--payload", choices=PAYLOAD_STYLES, default="project")
    parser.add_argument(
        "--separator",
        choices=[*SEPARATORS, "mixed"],
        help="after each record (default: comma for --payload reference, as its setup; else mixed)",
    )
    parser.add_argument("--compression", choices=COMPRESSIONS, default="mixed")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--object-hours", type=int, default=1, help="hours of readings per object")
    args = parser.parse_args(argv)
    separator = args.separator or ("comma" if args.payload == "reference" else "mixed")
    devices = [f"{args.prefix}-sensor-{n}" for n in range(1, args.devices + 1)]
    counts = write_lake(
        args.out,
        devices,
        args.start,
        args.days,
        args.step,
        separator,
        args.compression,
        args.seed,
        object_hours=args.object_hours,
        payload=args.payload,
    )
    print(
        f"raw sample: {counts['records']} records ({counts['duplicates']} duplicates) in {counts['objects']} "
        f"objects under {args.out / 'raw'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
