"""ingestion/glue_job.py on local Spark 3.5 (Glue 5 parity): the three raw encodings and a mix,
quarantine reasons, de-duplication, idempotent re-runs, touched-partitions-only overwrite, schema."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ingestion import glue_job
from ingestion.raw_sample import encode, write_lake

from .conftest import REPO


def reading(device: str, timestamp: str, ozone=30.0, received: int = 1, **extra) -> dict:
    return {
        "ozone": ozone,
        "particulate_matter": 20.0,
        "carbon_monoxide": 0.5,
        "sulfur_dioxide": 4.0,
        "nitrogen_dioxide": 25.0,
        "latitude": 40.4,
        "longitude": -3.7,
        "timestamp": timestamp,
        "device_id": device,
        "received_at": received,
        **extra,
    }


@pytest.fixture(scope="module")
def spark():
    if shutil.which("java") is None:
        if os.environ.get("CI"):
            pytest.fail("required in CI: a Java runtime (scripts/ensure_packages.sh)")
        pytest.skip("no Java runtime for Spark")
    session = glue_job.spark_session()
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def write(folder: Path, name: str, records: list, encoding: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(encode(records, encoding))


def curated(path: Path) -> pd.DataFrame:
    frame = pd.read_parquet(path)
    frame["date"] = frame["date"].astype(str)
    return frame.sort_values(["device_id", "timestamp"]).reset_index(drop=True)


@pytest.mark.parametrize("encoding", ["newline", "concatenated", "gzip"])
def test_each_raw_encoding_yields_every_record(spark, tmp_path, encoding):
    records = [reading("d1", f"2024-01-01T{h:02d}:00:00Z", ozone=float(h)) for h in range(24)]
    write(tmp_path / "raw" / "year=2024" / "hour=00", "obj-1", records[:10], encoding)
    write(tmp_path / "raw" / "year=2024" / "hour=10", "obj-2", records[10:], encoding)
    counts = glue_job.run(spark, str(tmp_path / "raw"), str(tmp_path / "curated"), str(tmp_path / "quarantine"))
    assert counts == {
        "objects": 2,
        "records_in": 24,
        "valid": 24,
        "quarantined": 0,
        "curated_rows_in_touched_dates": 24,
        "dates_touched": 1,
    }
    frame = curated(tmp_path / "curated")
    assert frame["ozone"].tolist() == [float(h) for h in range(24)]
    assert list((tmp_path / "curated").glob("date=2024-01-01/*.snappy.parquet"))


def test_mixed_lake_quarantine_dedup_rerun_and_schema(spark, tmp_path):
    raw = tmp_path / "raw"
    good = [reading("d1", f"2024-01-0{d}T0{h}:00:00Z", ozone=10.0 + h, received=100) for d in (1, 2) for h in range(5)]
    duplicate = {**good[0], "ozone": 99.0, "received_at": 200}  # re-sent later: the later copy wins
    bad = [
        reading("d1", "2024-01-01T06:00:00Z", ozone="n/a"),
        reading("d1", "2024-01-01T07:00:00Z", ozone=-999.0),
        reading("", "2024-01-01T08:00:00Z"),
        {k: v for k, v in reading("d2", "x").items() if k != "timestamp"},
        reading("d2", "yesterday"),
        reading("d2", "2024-01-01T09:00:00Z", latitude=123.0),
    ]
    write(raw / "a", "newline", good[:4] + bad[:2], "newline")
    write(raw / "b", "concat", good[4:8] + [duplicate] + bad[2:4], "concatenated")
    write(raw / "c", "gz.gz", good[8:] + bad[4:], "gzip")
    (raw / "c" / "broken").write_bytes(b'{"device_id": "d3", "timestamp": \n' + json.dumps(good[0]).encode() + b"\n")
    out = {k: str(tmp_path / k) for k in ("curated", "quarantine")}

    counts = glue_job.run(spark, str(raw), out["curated"], out["quarantine"])
    assert counts["objects"] == 4 and counts["records_in"] == 10 + 1 + 6 + 2
    assert counts["valid"] == 12 and counts["quarantined"] == 7
    assert counts["curated_rows_in_touched_dates"] == 10  # d1 x 10 hours: three copies of good[0] became one
    frame = curated(tmp_path / "curated")
    assert frame.loc[frame["timestamp"] == pd.Timestamp("2024-01-01 00:00"), "ozone"].tolist() == [99.0]
    reasons = sorted(pd.read_parquet(out["quarantine"])["reason"])
    assert reasons == sorted(
        [
            "ozone: not a number ('n/a')",
            "ozone: -999.0 outside [0, 1000]",
            "missing device_id",
            "missing timestamp",
            "bad timestamp 'yesterday'",
            "latitude: 123.0 outside [-90, 90]",
            "not JSON: Expecting ',' delimiter",
        ]
    )
    schema = dict(pd.read_parquet(out["curated"]).dtypes.astype(str))
    assert schema == {
        "device_id": "object",
        "timestamp": "datetime64[us]",
        "ozone": "float64",
        "particulate_matter": "float64",
        "carbon_monoxide": "float64",
        "sulfur_dioxide": "float64",
        "nitrogen_dioxide": "float64",
        "latitude": "float64",
        "longitude": "float64",
        "received_at": "datetime64[us]",
        "source": "object",
        "date": "category",
    }

    again = glue_job.run(spark, str(raw), out["curated"], out["quarantine"])
    assert again == counts
    pd.testing.assert_frame_equal(curated(tmp_path / "curated"), frame)


def test_only_touched_dates_are_rewritten(spark, tmp_path):
    first, second = tmp_path / "raw-1", tmp_path / "raw-2"
    write(first, "o", [reading("d1", f"2024-01-0{d}T00:00:00Z", ozone=float(d)) for d in (1, 2, 3)], "newline")
    write(second, "o", [reading("d1", "2024-01-02T05:00:00Z", ozone=5.0)], "newline")
    target, quarantine = str(tmp_path / "curated"), str(tmp_path / "q")
    glue_job.run(spark, str(first), target, quarantine)
    untouched = sorted((tmp_path / "curated" / "date=2024-01-01").iterdir())
    counts = glue_job.run(spark, str(second), target, quarantine)
    assert counts["dates_touched"] == 1 and counts["curated_rows_in_touched_dates"] == 2  # merged, not replaced
    frame = curated(tmp_path / "curated")
    assert frame.groupby("date").size().to_dict() == {"2024-01-01": 1, "2024-01-02": 2, "2024-01-03": 1}
    assert sorted((tmp_path / "curated" / "date=2024-01-01").iterdir()) == untouched


def test_split_records_handles_concatenated_and_broken_json():
    text = '{"a": 1}{"a": 2}\n  {"a": 3}\n{"a": \n{"a": 4}'
    values = [(value, error) for value, error, _ in glue_job.split_records(text)]
    assert [v for v, e in values if e is None] == [{"a": 1}, {"a": 2}, {"a": 3}, {"a": 4}]
    assert [e for v, e in values if e] == ["not JSON: Expecting ',' delimiter"]
    assert glue_job.decode_object(gzip.compress(b'{"a": 1}\n') + gzip.compress(b'{"a": 2}\n')) == '{"a": 1}\n{"a": 2}\n'


def test_job_runs_as_glue_invokes_it(tmp_path):
    """The script itself, with Glue's extra arguments, on the generated sample lake."""
    if shutil.which("java") is None and not os.environ.get("CI"):
        pytest.skip("no Java runtime for Spark")
    sample = write_lake(tmp_path, ["s-1", "s-2"], "2024-01-01", days=3, invalid_rate=0.05, duplicate_rate=0.05)
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "ingestion" / "glue_job.py"),
            "--JOB_NAME",
            "raw-to-curated",
            "--raw-path",
            str(tmp_path / "raw"),
            "--curated-path",
            str(tmp_path / "curated"),
            "--quarantine-path",
            str(tmp_path / "quarantine"),
            "--TempDir",
            "/tmp/x",
            "--enable-metrics",
            "--job-bookmark-option",
            "job-bookmark-disable",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [line] = [line for line in result.stdout.splitlines() if line.startswith("ETL_COUNTS ")]
    counts = json.loads(line.removeprefix("ETL_COUNTS "))
    assert counts["objects"] == sample["objects"] and counts["records_in"] == sample["records"]
    assert counts["valid"] + counts["quarantined"] == sample["records"] and counts["quarantined"] > 0
    assert counts["curated_rows_in_touched_dates"] == counts["valid"] - sample["duplicates"]
