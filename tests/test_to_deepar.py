"""`python -m ingestion.to_deepar`: curated Parquet -> DeepAR channels. Resampling (mean), gaps as
"NaN", train/test split, cat and dynamic_feat, the length filter, and an s3:// round trip on moto."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest

from ingestion.glue_job import POLLUTANTS
from ingestion.to_deepar import convert
from sagemaker_deepar.errors import UserError

from .conftest import REPO, free_port


def curated_frame() -> pd.DataFrame:
    """Two devices, readings every 30 min for 12 hours; d1 is silent from 04:00 to 05:59; d2 is short."""
    rows = []
    for step in range(24):
        when = pd.Timestamp("2024-03-01 00:00") + pd.Timedelta(minutes=30 * step)
        if not (8 <= step < 12):
            rows.append(
                {"device_id": "d1", "timestamp": when, **{p: float(step + i) for i, p in enumerate(POLLUTANTS)}}
            )
        if step < 6:
            rows.append({"device_id": "d2", "timestamp": when, **{p: 1.0 for p in POLLUTANTS}})
    frame = pd.DataFrame(rows)
    frame["latitude"], frame["longitude"] = 40.4, -3.7
    frame["received_at"], frame["source"] = frame["timestamp"], "s3://raw/x"
    frame["date"] = frame["timestamp"].dt.strftime("%Y-%m-%d")
    return frame


def write_curated(path) -> None:
    curated_frame().to_parquet(path, partition_cols=["date"], index=False)


def read(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


def test_resample_gaps_split_and_length_filter(tmp_path):
    write_curated(tmp_path / "curated")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "ingestion.to_deepar",
            "--curated",
            str(tmp_path / "curated"),
            "--out",
            str(tmp_path / "out"),
            "--time-freq",
            "H",
            "--prediction-length",
            "3",
            "--min-length",
            "8",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "dropped 5 series shorter than 8 points: d2/ozone" in result.stdout
    test, train = read(tmp_path / "out/test/test.json"), read(tmp_path / "out/train/train.json")
    assert [r["item_id"] for r in test] == [f"d1/{p}" for p in POLLUTANTS]
    ozone = test[0]
    assert ozone["start"] == "2024-03-01 00:00:00"
    # hourly means of the two half-hour readings (step, step + 1); hours 4 and 5 had none
    assert ozone["target"] == [0.5, 2.5, 4.5, 6.5, "NaN", "NaN", 12.5, 14.5, 16.5, 18.5, 20.5, 22.5]
    assert test[4]["target"][0] == 4.5  # nitrogen_dioxide = step + 4
    assert all(tr["target"] == te["target"][:-3] for tr, te in zip(train, test))
    assert "d1/ozone" in result.stdout and "16.7" in result.stdout  # per-series table: 2 of 12 missing


def test_one_pollutant_with_cat_and_dynamic_feat(tmp_path):
    write_curated(tmp_path / "curated")
    summary = convert(
        str(tmp_path / "curated"),
        str(tmp_path / "out"),
        "H",
        2,
        pollutant="ozone",
        with_cat=True,
        dynamic=["nitrogen_dioxide"],
        min_length=3,
        compress=True,
        quiet=True,
    )
    assert summary["series"] == 2 and summary["readings"] == 26
    import gzip

    test = [json.loads(line) for line in gzip.open(tmp_path / "out/test/test.json.gz", "rt")]
    train = [json.loads(line) for line in gzip.open(tmp_path / "out/train/train.json.gz", "rt")]
    assert [(r["item_id"], r["cat"]) for r in test] == [("d1", [0]), ("d2", [1])]
    feature = test[0]["dynamic_feat"][0]
    assert len(feature) == len(test[0]["target"]) and feature[4] == feature[3] == 10.5  # gap filled forward
    assert train[0]["dynamic_feat"][0] == feature[:-2] and len(train[0]["target"]) == len(test[0]["target"]) - 2


def test_s3_round_trip_on_moto(tmp_path, monkeypatch):
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    try:
        host, port = server.get_host_and_port()
        for key, value in {
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        s3 = boto3.client("s3")
        for bucket in ("curated", "artifacts"):
            s3.create_bucket(Bucket=bucket)
        write_curated(tmp_path / "curated")
        for path in (tmp_path / "curated").rglob("*.parquet"):
            s3.upload_file(str(path), "curated", f"readings/{path.relative_to(tmp_path / 'curated')}")
        summary = convert("s3://curated/readings/", "s3://artifacts/deepar/", "H", 3, min_length=8, quiet=True)
        keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket="artifacts")["Contents"])
        assert keys == ["deepar/test/test.json", "deepar/train/train.json"]
        test = [
            json.loads(line)
            for line in s3.get_object(Bucket="artifacts", Key="deepar/test/test.json")["Body"]
            .read()
            .decode()
            .splitlines()
        ]
        assert len(test) == summary["series"] == 5 and test[0]["target"][:2] == [0.5, 2.5]
    finally:
        server.stop()


def test_unknown_column_and_nothing_long_enough_are_clear_errors(tmp_path):
    write_curated(tmp_path / "curated")
    with pytest.raises(UserError, match="no series has 100 points or more"):
        convert(str(tmp_path / "curated"), str(tmp_path / "out"), "H", 3, min_length=100, quiet=True)
    with pytest.raises(UserError, match="unknown column"):
        convert(str(tmp_path / "curated"), str(tmp_path / "out"), "H", 3, dynamic=["humidity"], quiet=True)
