"""SQL over the lake (issue #25, part 2): queries/*.sql on DuckDB over a lake the real Glue job wrote
(local Spark), each result checked against the same computation in pandas; the CLI's bad input; an
s3:// lake on moto; the Athena path on moto's queued results and, for the request shapes, a Stubber."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ingestion import query as lake_query
from ingestion.glue_job import POLLUTANTS
from ingestion.raw_sample import write_lake
from sagemaker_deepar.errors import UserError

from .conftest import REPO

DEVICES = ["dev-a", "dev-b", "dev-c"]


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ingestion.query", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Path:
    """Two days of 10-minute readings from three devices, a few broken records among them, through
    `python -m ingestion.glue_job` on local Spark: readings/ and quarantine/ as the job writes them."""
    if shutil.which("java") is None:
        pytest.skip("no Java runtime for Spark")  # CI installs it (scripts/ensure_packages.sh)
    root = tmp_path_factory.mktemp("lake")
    write_lake(root / "raw", DEVICES, "2024-03-01", 2, step="10min", invalid_rate=0.03, duplicate_rate=0.01)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ingestion.glue_job",
            "--raw-path",
            str(root / "raw"),
            "--curated-path",
            str(root / "lake" / "readings"),
            "--quarantine-path",
            str(root / "lake" / "quarantine"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert any((root / "lake" / "quarantine").rglob("*.parquet")), "the sample should quarantine a few records"
    return root / "lake"


def readings(lake: Path) -> pd.DataFrame:
    frame = pd.read_parquet(lake / "readings")
    frame["timestamp"] = pd.to_datetime(frame["timestamp"])
    return frame


def result_frame(result: lake_query.Result) -> pd.DataFrame:
    return pd.DataFrame(result.rows, columns=result.columns)


def run(name: str, lake: Path, forecasts: Path | None = None, **params: str) -> pd.DataFrame:
    query = lake_query.load_query(name)
    values = lake_query.bind(query, params)
    return result_frame(lake_query.run(query, values, str(lake), str(forecasts) if forecasts else None))


def test_daily_stats_equal_pandas(lake):
    got = run("daily_stats", lake)
    frame = readings(lake)
    frame["day"] = frame["timestamp"].dt.date
    long = frame.melt(["device_id", "day"], list(POLLUTANTS), "measurement", "value").dropna(subset=["value"])
    want = (
        long.groupby(["device_id", "day", "measurement"])["value"]
        .agg(readings="count", mean="mean", min="min", max="max")
        .reset_index()
        .sort_values(["device_id", "day", "measurement"])
        .reset_index(drop=True)
    )
    assert len(got) == len(want) == len(DEVICES) * 2 * len(POLLUTANTS)
    pd.testing.assert_frame_equal(got.astype(want.dtypes.to_dict()), want, check_exact=False, rtol=1e-9)


def test_daily_stats_parameters_filter_device_and_dates(lake):
    got = run("daily_stats", lake, device="dev-b", start_date="2024-03-02", end_date="2024-03-02")
    assert set(got["device_id"]) == {"dev-b"}
    assert {str(d) for d in got["day"]} == {"2024-03-02"}
    frame = readings(lake)
    one_day = frame[(frame.device_id == "dev-b") & (frame.timestamp.dt.date.astype(str) == "2024-03-02")]
    ozone = got.set_index("measurement").loc["ozone"]
    assert ozone["readings"] == one_day["ozone"].count()
    assert ozone["mean"] == pytest.approx(one_day["ozone"].mean())


def test_latest_reading_equals_pandas(lake):
    got = run("latest_reading", lake)
    frame = readings(lake).sort_values(["device_id", "timestamp", "received_at"])
    want = frame.groupby("device_id").tail(1).set_index("device_id")
    assert list(got["device_id"]) == DEVICES
    for _, row in got.iterrows():
        assert pd.Timestamp(row["timestamp"]) == want.loc[row["device_id"], "timestamp"]
        assert row["ozone"] == pytest.approx(want.loc[row["device_id"], "ozone"], nan_ok=True)


def test_data_quality_counts_readings_gaps_and_quarantine_reasons(lake):
    got = run("data_quality", lake, gap_minutes="15").set_index(["device_id", "day"])
    frame = readings(lake).sort_values(["device_id", "timestamp"])
    frame["minutes"] = frame.groupby("device_id")["timestamp"].diff().dt.total_seconds() / 60
    frame["day"] = frame["timestamp"].dt.date
    per_day = frame.groupby(["device_id", "day"]).agg(
        readings=("timestamp", "size"), gaps=("minutes", lambda m: (m > 15).sum())
    )
    for (device, day), row in per_day.iterrows():
        assert got.loc[(device, day), "readings"] == row["readings"]
        assert got.loc[(device, day), "gaps"] == row["gaps"]
    quarantine = pd.read_parquet(lake / "quarantine")
    assert got["quarantined"].sum() == len(quarantine)
    reasons = "; ".join(got["quarantined_by_reason"].dropna())
    assert reasons, "the quarantined records are listed by reason"


def test_forecasts_vs_actuals_equal_pandas(lake, tmp_path):
    """Stored forecasts for two series (one "device/measurement", one plain device: the target) against
    the hourly means of the lake: wQuantileLoss, coverage and mean_wQuantileLoss as computed by hand."""
    frame = readings(lake)
    rng = np.random.default_rng(3)
    forecasts = tmp_path / "forecasts"
    forecasts.mkdir()
    stored = []
    for item_id in ("dev-a/ozone", "dev-b"):
        mean = rng.normal(30, 5, 24)
        stored.append(
            {
                "item_id": item_id,
                "start": "2024-03-01 12:00:00",
                "mean": mean.tolist(),
                "quantiles": {"0.1": (mean - 8).tolist(), "0.5": mean.tolist(), "0.9": (mean + 8).tolist()},
            }
        )
    (forecasts / "part.jsonl").write_text("\n".join(json.dumps(s) for s in stored) + "\n")
    (forecasts / "part.manifest.json").write_text(json.dumps({"status": "complete"}))  # not a forecast: skipped
    got = run("forecasts_vs_actuals", lake, forecasts, step="1 hour", target="particulate_matter")
    assert set(got["item_id"]) == {"dev-a/ozone", "dev-b"}
    for forecast in stored:
        device, _, measurement = forecast["item_id"].partition("/")
        hourly = frame[frame.device_id == device].set_index("timestamp")[measurement or "particulate_matter"]
        actual = hourly.resample("h").mean().reindex(pd.date_range(forecast["start"], periods=24, freq="h"))
        rows = got[got.item_id == forecast["item_id"]].set_index("quantile")
        losses = []
        for name, predicted in forecast["quantiles"].items():
            q, y, p = float(name), actual.to_numpy(), np.asarray(predicted)
            seen = ~np.isnan(y)
            loss = 2 * np.sum(np.abs((y[seen] - p[seen]) * ((y[seen] <= p[seen]) - q))) / np.sum(np.abs(y[seen]))
            losses.append(loss)
            assert rows.loc[q, "points"] == seen.sum()
            assert rows.loc[q, "wQuantileLoss"] == pytest.approx(loss)
            assert rows.loc[q, "coverage"] == pytest.approx(np.mean(y[seen] <= p[seen]))
        assert rows["mean_wQuantileLoss"].iloc[0] == pytest.approx(np.mean(losses))


@pytest.mark.unit
def test_every_query_declares_its_tables_and_one_placeholder_per_parameter():
    names = lake_query.query_names()
    assert {"daily_stats", "data_quality", "latest_reading", "forecasts_vs_actuals"} <= set(names)
    for name in names:
        query = lake_query.load_query(name)
        assert query.tables and query.description
        assert lake_query._placeholders(query.sql) == len(query.parameters)


@pytest.mark.unit
def test_bind_types_and_names_bad_parameters():
    query = lake_query.load_query("daily_stats")
    assert lake_query.bind(query, {"device": "x"})[2] == "x"
    with pytest.raises(UserError, match=r"takes no parameter pollutant \(it takes: start_date DATE"):
        lake_query.bind(query, {"pollutant": "ozone"})
    with pytest.raises(UserError, match=r"start_date='yesterday' is not a DATE"):
        lake_query.bind(query, {"start_date": "yesterday"})
    step = lake_query.load_query("forecasts_vs_actuals")
    with pytest.raises(UserError, match=r"step='1; DROP TABLE x' is not a INTERVAL"):
        lake_query.bind(step, {"step": "1; DROP TABLE x"})


@pytest.mark.unit
def test_athena_constants_are_typed_single_constants():
    assert lake_query.athena_constant(None, "VARCHAR") == "NULL"
    assert lake_query.athena_constant("o'brien", "VARCHAR") == "'o''brien'"
    from datetime import date

    assert lake_query.athena_constant(date(2024, 1, 2), "DATE") == "DATE '2024-01-02'"
    assert lake_query.athena_constant("1 hour", "INTERVAL") == "INTERVAL '1 hour'"
    assert lake_query.athena_constant(15, "INTEGER") == "15"


def test_cli_formats_and_bad_input(lake, tmp_path):
    as_json = cli("latest_reading", "--lake", str(lake), "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    assert [row["device_id"] for row in json.loads(as_json.stdout)] == DEVICES
    as_csv = cli("daily_stats", "--lake", str(lake), "--format", "csv", "--param", "device=dev-c")
    assert as_csv.returncode == 0, as_csv.stderr
    assert as_csv.stdout.splitlines()[0] == "device_id,day,measurement,readings,mean,min,max"
    assert len(as_csv.stdout.splitlines()) == 1 + 2 * len(POLLUTANTS)

    unknown = cli("daily_means", "--lake", str(lake))
    assert unknown.returncode == 1
    assert "unknown query 'daily_means': the queries are daily_stats, data_quality" in unknown.stderr
    undeclared = cli("latest_reading", "--lake", str(lake), "--param", "start_date=2024-01-01")
    assert undeclared.returncode == 1 and "takes no parameter start_date" in undeclared.stderr
    wrong_type = cli("data_quality", "--lake", str(lake), "--param", "gap_minutes=ten")
    assert wrong_type.returncode == 1 and "gap_minutes='ten' is not a INTEGER" in wrong_type.stderr

    missing = cli("daily_stats", "--lake", str(tmp_path / "nowhere"))
    assert missing.returncode == 1 and "nowhere: no such folder" in missing.stderr
    (tmp_path / "empty" / "readings").mkdir(parents=True)
    empty = cli("daily_stats", "--lake", str(tmp_path / "empty"))
    assert empty.returncode == 1 and "no Parquet files" in empty.stderr

    broken = tmp_path / "broken"
    shutil.copytree(lake, broken)
    bad_file = broken / "readings" / "date=2024-03-01" / "part-broken.parquet"
    bad_file.write_bytes(b"PAR1 truncated by a failed upload")
    malformed = cli("daily_stats", "--lake", str(broken))
    assert malformed.returncode == 1 and f"{bad_file}: not a Parquet file" in malformed.stderr
    for result in (unknown, undeclared, wrong_type, missing, empty, malformed):
        assert "Traceback" not in result.stderr


def test_s3_lake_on_moto_equals_the_local_run(lake, offline_aws):
    import boto3

    s3 = boto3.client("s3")
    s3.create_bucket(Bucket="curated")
    for path in lake.rglob("*.parquet"):
        s3.upload_file(str(path), "curated", f"lake/{path.relative_to(lake)}")
    query = lake_query.load_query("daily_stats")
    values = lake_query.bind(query, {})
    remote = lake_query.run(query, values, "s3://curated/lake/")
    assert remote.rows == lake_query.run(query, values, str(lake)).rows

    s3.put_object(Bucket="curated", Key="lake/../../outside.parquet", Body=b"x")
    with pytest.raises(UserError, match=r"lake/\.\./\.\./outside\.parquet.*refused"):
        lake_query.run(query, values, "s3://curated/lake/")
    with pytest.raises(UserError, match="no objects"):
        lake_query.run(query, values, "s3://curated/nothing-here/")


@pytest.mark.unit
def test_athena_request_shapes_with_a_stubber():
    """StartQueryExecution gets the file's text unchanged and the parameters as typed constants in the
    declared order; a failed execution is a named error with Athena's reason."""
    import boto3
    from botocore.stub import Stubber

    athena = boto3.client("athena", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    query = lake_query.load_query("daily_stats")
    values = lake_query.bind(query, {"device": "dev-a", "start_date": "2024-03-01"})
    with Stubber(athena) as stub:
        stub.add_response(
            "start_query_execution",
            {"QueryExecutionId": "q1"},
            {
                "QueryString": query.sql,
                "WorkGroup": "lake-duckdb",
                "ResultConfiguration": {"OutputLocation": "s3://results/q/"},
                "QueryExecutionContext": {"Database": "deepar_iot"},
                "ExecutionParameters": ["DATE '2024-03-01'", "DATE '9999-12-31'", "'dev-a'"],
            },
        )
        stub.add_response(
            "get_query_execution", {"QueryExecution": {"Status": {"State": "RUNNING"}}}, {"QueryExecutionId": "q1"}
        )
        stub.add_response(
            "get_query_execution", {"QueryExecution": {"Status": {"State": "SUCCEEDED"}}}, {"QueryExecutionId": "q1"}
        )
        columns = [{"Name": n, "Type": "varchar"} for n in ("device_id", "readings")]
        stub.add_response(
            "get_query_results",
            {
                "ResultSet": {
                    "ResultSetMetadata": {"ColumnInfo": columns},
                    "Rows": [
                        {"Data": [{"VarCharValue": "device_id"}, {"VarCharValue": "readings"}]},
                        {"Data": [{"VarCharValue": "dev-a"}, {"VarCharValue": "144"}]},
                    ],
                }
            },
            {"QueryExecutionId": "q1"},
        )
        lake_query.ATHENA_POLL_SECONDS = 0.01
        result = lake_query.run_athena(query, values, "lake-duckdb", "s3://results/q/", "deepar_iot", client=athena)
        assert result.columns == ["device_id", "readings"] and result.rows == [("dev-a", "144")]

        stub.add_response("start_query_execution", {"QueryExecutionId": "q2"})
        stub.add_response(
            "get_query_execution",
            {"QueryExecution": {"Status": {"State": "FAILED", "StateChangeReason": "Table readings not found"}}},
        )
        with pytest.raises(UserError, match="q2 .daily_stats. FAILED: Table readings not found"):
            lake_query.run_athena(query, values, "lake-duckdb", "s3://results/q/", client=athena)


def test_athena_cli_on_moto_returns_its_queued_results(moto_env):
    """`--athena` end to end through the CLI against a moto server, which answers with the results
    queued through its API (it executes no SQL)."""
    import requests

    endpoint = moto_env["AWS_ENDPOINT_URL"]
    rows = [["device_id", "day", "readings"], ["dev-a", "2024-03-01", "144"]]
    requests.post(
        f"{endpoint}/moto-api/static/athena/query-results",
        json={
            "account_id": "123456789012",
            "region": moto_env["AWS_REGION"],
            "results": [
                {
                    "rows": [{"Data": [{"VarCharValue": v} for v in row]} for row in rows],
                    "column_info": [{"Name": n, "Type": "varchar"} for n in rows[0]],
                }
            ],
        },
        timeout=10,
    ).raise_for_status()
    done = cli(
        "daily_stats",
        "--athena",
        "--workgroup",
        "primary",
        "--output",
        "s3://results/q/",
        "--format",
        "json",
        env={**moto_env, "PATH": os.environ["PATH"]},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [{"device_id": "dev-a", "day": "2024-03-01", "readings": "144"}]
    no_output = cli("daily_stats", "--athena", "--workgroup", "primary", env=moto_env)
    assert no_output.returncode == 1 and "--athena needs --workgroup W and --output" in no_output.stderr


def synthetic_lake(root: Path, start: str, periods: int, step: str) -> pd.DataFrame:
    """One device's readings in the Glue job's layout (readings/date=.../*.parquet), every ``step``."""
    stamps = pd.date_range(start, periods=periods, freq=step)
    rng = np.random.default_rng(5)
    frame = pd.DataFrame({"device_id": "dev-a", "timestamp": stamps.astype("datetime64[us]")})
    for name in POLLUTANTS:
        frame[name] = rng.gamma(2.0, 10.0, len(frame))
    frame["latitude"], frame["longitude"] = 40.4, -3.7
    frame["received_at"], frame["source"] = frame["timestamp"], "s3://raw/x"
    frame["date"] = frame["timestamp"].dt.strftime("%Y-%m-%d")
    frame.to_parquet(root / "readings", partition_cols=["date"], index=False)
    return frame


@pytest.mark.unit
@pytest.mark.parametrize(
    "time_freq, reading_step, readings",
    [
        ("5min", "1min", 600),
        ("2H", "10min", 600),
        ("D", "2h", 600),
        ("3D", "6h", 400),
        ("W", "1D", 200),
        ("2W", "1D", 300),
        ("M", "1D", 400),
        ("3M", "2D", 600),
    ],
)
def test_forecast_periods_are_the_contracts_period_grid(tmp_path, time_freq, reading_step, readings):
    """Actuals are averaged over the same periods the converter, monitor and forecast API use
    (contract.TimeFreq: weeks from Monday 1970-01-05, multiples counted from the epoch), so a weekly or
    monthly forecast is scored against its own weeks and months (#23 item 5 for SQL)."""
    from sagemaker_deepar import contract

    frame = synthetic_lake(tmp_path, "2024-01-03 07:00", readings, reading_step)
    freq = contract.parse_time_freq(time_freq)
    grid = contract.period_means(frame["timestamp"].to_numpy(), frame["ozone"].to_numpy(), freq)
    first = grid.first + 1  # a whole period after the first reading's
    length = min(4, len(grid.means) - 2)
    actual = grid.means[1 : 1 + length, 0]
    predicted = {"0.1": (actual * 0.8).tolist(), "0.5": (actual * 1.05).tolist(), "0.9": (actual * 1.3).tolist()}
    (tmp_path / "forecasts").mkdir()
    record = {"item_id": "dev-a/ozone", "start": freq.label(first), "mean": actual.tolist(), "quantiles": predicted}
    (tmp_path / "forecasts" / "f.jsonl").write_text(json.dumps(record) + "\n")
    got = run("forecasts_vs_actuals", tmp_path, step=time_freq).set_index("quantile")
    for name, values in predicted.items():
        p = np.asarray(values)
        want = 2 * np.sum(np.abs((actual - p) * ((actual <= p) - float(name)))) / np.sum(np.abs(actual))
        assert got.loc[float(name), "points"] == length
        assert got.loc[float(name), "wQuantileLoss"] == pytest.approx(want)
    assert list(got["coverage"]) == pytest.approx([0.0, 1.0, 1.0])  # 0.8x below, 1.05x and 1.3x above


@pytest.mark.unit
def test_interval_parameters_take_time_freq_spellings():
    query = lake_query.load_query("forecasts_vs_actuals")
    assert lake_query.bind(query, {"step": "2W"})[0] == "14 days"
    assert lake_query.bind(query, {"step": "5min"})[0] == "5 minutes"
    assert lake_query.bind(query, {"step": "M"})[0] == "1 months"
    assert lake_query.bind(query, {"step": "3 hours"})[0] == "3 hours"
