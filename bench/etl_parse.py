"""Records/s of the Glue job's per-object Python work (ingestion.glue_job.classify: decompress, split,
type, validate) for each separator and payload style, beside a baseline run on the same readings.

    .venv/bin/python -m bench.etl_parse --readings 50000

Baseline: classify on this project's format as `infra up`'s rule writes it (newline separator,
plain). Every other row is the same readings in another layout: the reference device kit's payload
(its spellings, integers, no device id: the rule's `topic` field instead) under every separator
Firehose allows, and GZIP. Configurations run alternately, three rounds, best round kept; one
process, no Spark (the Spark side is bench/etl_throughput.py).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import timedelta

from ingestion.glue_job import classify
from ingestion.raw_sample import encode
from ingestion.relay import SEPARATORS
from ingestion.signals import history, parse_time, reference_payload

RECORDS_PER_OBJECT = 2000


def layouts(readings: list[dict]) -> dict[str, list[bytes]]:
    project = [{**r, "received_at": 1_704_067_200_000} for r in readings]
    reference = [
        {
            **reference_payload(r, parse_time(r["timestamp"])),
            "topic": f"deepar-iot/{r['device_id']}/telemetry",
            "received_at": 1_704_067_200_000,
        }
        for r in readings
    ]
    chunks = {
        name: [records[i : i + RECORDS_PER_OBJECT] for i in range(0, len(records), RECORDS_PER_OBJECT)]
        for name, records in (("project", project), ("reference", reference))
    }
    built = {"project newline (baseline)": [encode(c, "\n") for c in chunks["project"]]}
    for separator, text in SEPARATORS.items():
        built[f"reference {separator}"] = [encode(c, text) for c in chunks["reference"]]
    built["reference comma gzip"] = [encode(c, ",", compress=True) for c in chunks["reference"]]
    built["project none gzip"] = [encode(c, "", compress=True) for c in chunks["project"]]
    return built


def classify_all(objects: list[bytes]) -> tuple[float, int, int]:
    started, valid, total = time.perf_counter(), 0, 0
    for content in objects:
        for row in classify("s3://raw/object", content):
            total += 1
            valid += row[0] == "ok"
    return time.perf_counter() - started, valid, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    start = parse_time("2024-01-01")
    devices = [f"bench-sensor-{n}" for n in range(1, 41)]
    hours = -(-args.readings // len(devices))
    readings = [
        r
        for r in history(devices, start, start + timedelta(hours=hours), timedelta(hours=1), invalid_rate=0)
        if "timestamp" in r
    ][: args.readings]
    built = layouts(readings)
    best: dict[str, float] = {}
    counts: dict[str, tuple[int, int]] = {}
    for _ in range(args.rounds):
        for name, objects in built.items():
            seconds, valid, total = classify_all(objects)
            best[name] = min(seconds, best.get(name, seconds))
            counts[name] = (valid, total)
    baseline = best["project newline (baseline)"]
    print(
        f"{len(readings):,} readings in objects of {RECORDS_PER_OBJECT} records; "
        f"best of {args.rounds} alternating rounds"
    )
    for name, seconds in best.items():
        valid, total = counts[name]
        print(
            f"{name:28s}: {seconds:5.2f} s = {total / seconds:8,.0f} records/s ({valid:,} valid of {total:,}); "
            f"ratio to baseline time {seconds / baseline:.2f}x"
        )
    print(json.dumps({"readings": len(readings), "baseline_seconds": round(baseline, 3)}))


if __name__ == "__main__":
    main()
