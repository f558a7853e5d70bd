"""#23 item 3: an S3 key never becomes a path outside the work folder of whoever copies it.

The one copy loop (`awsinfra.s3.download_prefix`), then `python -m ingestion.to_deepar`,
`python -m ingestion.query` and `python -m mlops.monitor` against moto server, with objects whose
keys climb out of the prefix (`readings/../../../escape.parquet`): the run ends with a one-line error
naming the key and nothing is written beside the temporary folder (TMPDIR points into tmp_path, so a
climbing key would land in tmp_path itself on today's main).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO
from .test_to_deepar import write_curated

ESCAPE = "../../../escape"  # from <TMPDIR>/<tmpXXXX>/<folder>/ up to TMPDIR's parent: tmp_path


@pytest.fixture
def s3(moto_env, monkeypatch):
    import boto3

    for key in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.setenv(key, moto_env[key])
    client = boto3.client("s3")
    bucket = f"keys-{len(client.list_buckets()['Buckets'])}"  # one bucket per test on the module's server
    client.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": moto_env["AWS_REGION"]})
    client.bucket = bucket
    return client


def run(module: str, env: dict, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    (tmp_path / "tmp").mkdir(exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        env={**env, "TMPDIR": str(tmp_path / "tmp")},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_converter_refuses_a_key_that_climbs_out_of_the_prefix(s3, moto_env, tmp_path):
    write_curated(tmp_path / "curated")
    for path in (tmp_path / "curated").rglob("*.parquet"):
        s3.upload_file(str(path), s3.bucket, f"readings/{path.relative_to(tmp_path / 'curated')}")
    bad_key = f"readings/{ESCAPE}.parquet"
    s3.put_object(Bucket=s3.bucket, Key=bad_key, Body=b"PAR1")
    out = tmp_path / "channels"
    result = run(
        "ingestion.to_deepar", moto_env, tmp_path, "--curated", f"s3://{s3.bucket}/readings/", "--out", str(out)
    )
    assert result.returncode == 1, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert f"s3 key {bad_key!r}" in last and "has '..'" in last
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "escape.parquet").exists() and not out.exists()


def test_monitor_refuses_a_forecast_key_that_climbs_out_of_the_prefix(s3, moto_env, tmp_path):
    import boto3

    boto3.client("ssm").put_parameter(Name="/keys/threshold", Value="0.2", Type="String", Overwrite=True)
    bad_key = f"forecasts/{ESCAPE}.out"
    s3.put_object(Bucket=s3.bucket, Key="forecasts/ok.out", Body=b"")
    s3.put_object(Bucket=s3.bucket, Key=bad_key, Body=b'{"written": "outside"}\n')
    args = ["--forecasts", f"s3://{s3.bucket}/forecasts/", "--lake", f"s3://{s3.bucket}/lake/"]
    args += ["--pipeline", "p", "--threshold-parameter", "/keys/threshold"]
    result = run("mlops.monitor", moto_env, tmp_path, *args)
    assert result.returncode == 1, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert f"s3 key {bad_key!r}" in last and "has '..'" in last
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "escape.out").exists()


def test_the_one_copy_loop_keeps_the_layout_and_refuses_a_climbing_key_before_writing_it(s3, tmp_path):
    from awsinfra.s3 import download_prefix
    from sagemaker_deepar.contract import UnsafePathError

    for key in ("lake/", "lake/date=2024-01-01/a.parquet", "lake/date=2024-01-02/b.parquet", "lake/c.txt", "x/d"):
        s3.put_object(Bucket=s3.bucket, Key=key, Body=key.encode())
    folder = tmp_path / "copy"
    copied = download_prefix(s3, s3.bucket, "lake/", folder, lambda key: key.endswith(".parquet"))
    assert copied == 2  # the folder marker, the .txt and what lies outside the prefix are left
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) == [
        "date=2024-01-01/a.parquet",
        "date=2024-01-02/b.parquet",
    ]
    assert (folder / "date=2024-01-01" / "a.parquet").read_bytes() == b"lake/date=2024-01-01/a.parquet"
    for bad in (f"lake/{ESCAPE}.parquet", "lake/./c.parquet", "lake//d.parquet"):
        s3.put_object(Bucket=s3.bucket, Key=bad, Body=b"outside")
        with pytest.raises(UnsafePathError, match=re.escape(repr(bad))):
            download_prefix(s3, s3.bucket, "lake/", tmp_path / "again", lambda key: True)
        s3.delete_object(Bucket=s3.bucket, Key=bad)
    assert not (tmp_path / "escape.parquet").exists()


def test_query_refuses_a_lake_key_that_climbs_out_of_the_prefix(s3, moto_env, tmp_path):
    write_curated(tmp_path / "curated")
    for path in (tmp_path / "curated").rglob("*.parquet"):
        s3.upload_file(str(path), s3.bucket, f"lake/{path.relative_to(tmp_path / 'curated')}")
    bad_key = f"lake/{ESCAPE}.parquet"
    s3.put_object(Bucket=s3.bucket, Key=bad_key, Body=b"PAR1")
    result = run("ingestion.query", moto_env, tmp_path, "latest_reading", "--lake", f"s3://{s3.bucket}/lake/")
    assert result.returncode != 0, result.stdout[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert f"s3 key {bad_key!r}" in last and "has '..'" in last and "refused" in last
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "escape.parquet").exists()
