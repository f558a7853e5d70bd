"""Raw data-lake sample made by code (the simulator's signal model), laid out as Firehose writes it.

    python -m ingestion.raw_sample --out /tmp/raw --devices 3 --start 2024-01-01 --days 14 --step 1h --encoding mixed

One object per buffer interval (all devices, as Firehose batches them; --object-hours) under
<out>/raw/year=YYYY/month=MM/day=DD/hour=HH/, each either
newline-separated JSON (the IoT rule's "\\n" separator), concatenated `{...}{...}` (no separator),
GZIP-compressed (Firehose's CompressionFormat), or all three in rotation (--encoding mixed). Records
carry device_id and received_at as the IoT rule adds them; a few are deliberately broken and a few
valid ones are re-sent duplicates, as in a real lake.
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
from .signals import history, parse_time

ENCODINGS = ("newline", "concatenated", "gzip")


def encode(records: list[dict], encoding: str) -> bytes:
    if encoding == "concatenated":
        return "".join(json.dumps(r) for r in records).encode()
    body = "".join(json.dumps(r) + "\n" for r in records).encode()
    return gzip.compress(body) if encoding == "gzip" else body


def write_lake(
    out: Path,
    devices: list[str],
    start: str,
    days: float,
    step: str = "1h",
    encoding: str = "mixed",
    seed: int = 7,
    invalid_rate: float = 0.002,
    duplicate_rate: float = 0.002,
    object_hours: int = 1,
) -> dict[str, int]:
    """Write the sample; returns counts (records, objects, duplicates) for tests and logs."""
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
        record = {**reading, "received_at": int(received.timestamp() * 1000)}
        bucket = when.replace(minute=0, second=0, microsecond=0, hour=when.hour - when.hour % object_hours)
        batches[bucket].append(record)
        valid = check(record)[0] is not None
        if valid and rng.random() < duplicate_rate:  # a device re-sent it after a lost ack (QoS 1: at least once)
            batches[bucket].append({**record, "received_at": record["received_at"] + 5000})
            duplicates += 1
    for n, (bucket, records) in enumerate(sorted(batches.items())):
        chosen = ENCODINGS[n % 3] if encoding == "mixed" else encoding
        folder = out / "raw" / f"year={bucket:%Y}" / f"month={bucket:%m}" / f"day={bucket:%d}" / f"hour={bucket:%H}"
        folder.mkdir(parents=True, exist_ok=True)
        suffix = ".gz" if chosen == "gzip" else ""
        (folder / f"deepar-iot-stream-1-{bucket:%Y-%m-%d-%H-%M-%S}-{n:06d}{suffix}").write_bytes(
            encode(records, chosen)
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
    parser.add_argument("--encoding", choices=[*ENCODINGS, "mixed"], default="mixed")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--object-hours", type=int, default=1, help="hours of readings per object")
    args = parser.parse_args(argv)
    devices = [f"{args.prefix}-sensor-{n}" for n in range(1, args.devices + 1)]
    counts = write_lake(
        args.out, devices, args.start, args.days, args.step, args.encoding, args.seed, object_hours=args.object_hours
    )
    print(
        f"raw sample: {counts['records']} records ({counts['duplicates']} duplicates) in {counts['objects']} "
        f"objects under {args.out / 'raw'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
