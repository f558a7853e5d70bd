"""The period grid of sagemaker_deepar.contract (issue #23 item 5) and every component that resamples
a lake with it: the monitor (mlops.monitor.align), the converter (python -m ingestion.to_deepar), the
forecast API's GET /forecast/{device_id} and the event-driven long-CSV reader; every supported
frequency, multiples included. Monthly and weekly series were never scored by the monitor (month-end
and Sunday labels against period starts), the API answered 500 for them and the CSV reader left
their gaps unfilled."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ingestion import to_deepar
from mlops import monitor, registry
from sagemaker_deepar import contract
from serverless.handlers import forecast_api, forecasting, inputs

from .helpers import StubHandler, http_stub

pytestmark = pytest.mark.unit

# time_freq -> (the start of a period on its grid, the length of one period). Multiples count from
# 1970-01-01 (weeks from Monday 1970-01-05): 2H periods start at even hours, 2D ones on even days since
# the epoch (2024-01-02 is day 19724), 2W ones every other Monday from 1970-01-05 (2023-12-25 is week
# 2816), 3M ones in January, April, July and October.
GRID = {
    "min": ("2024-01-01 10:07:00", pd.DateOffset(minutes=1)),
    "5min": ("2024-01-01 10:05:00", pd.DateOffset(minutes=5)),
    "H": ("2024-01-01 10:00:00", pd.DateOffset(hours=1)),
    "2H": ("2024-01-01 02:00:00", pd.DateOffset(hours=2)),
    "D": ("2024-01-30 00:00:00", pd.DateOffset(days=1)),
    "2D": ("2024-01-02 00:00:00", pd.DateOffset(days=2)),
    "W": ("2024-01-01 00:00:00", pd.DateOffset(weeks=1)),
    "2W": ("2023-12-25 00:00:00", pd.DateOffset(weeks=2)),
    "M": ("2024-01-01 00:00:00", pd.DateOffset(months=1)),
    "3M": ("2024-01-01 00:00:00", pd.DateOffset(months=3)),
}
PERIODS = 6
EMPTY = 2  # the period that holds no reading


def readings(time_freq: str) -> tuple[pd.DataFrame, list]:
    """Two readings in every period but one (at its first instant and one second before its end) and
    the expected mean of each period ("NaN" for the empty one)."""
    first, step = GRID[time_freq]
    rows, expected = [], []
    for period in range(PERIODS):
        start = pd.Timestamp(first) + period * step
        if period == EMPTY:
            expected.append("NaN")
            continue
        low, high = 10.0 + period, 20.0 + 3 * period
        end = pd.Timestamp(first) + (period + 1) * step - pd.Timedelta(seconds=1)
        rows += [("d1", start, low), ("d1", end, high)]
        expected.append((low + high) / 2)
    frame = pd.DataFrame(rows, columns=["device_id", "timestamp", "ozone"])
    frame["date"] = frame["timestamp"].dt.strftime("%Y-%m-%d")
    return frame, expected


def as_floats(values: list) -> np.ndarray:
    return np.array([np.nan if v == "NaN" else v for v in values], dtype=float)


@pytest.mark.parametrize("time_freq", GRID)
def test_periods_are_pandas_periods_and_multiples_count_from_the_epoch(time_freq):
    freq = contract.parse_time_freq(time_freq)
    frame, expected = readings(time_freq)
    stamps = frame["timestamp"].to_numpy()
    ordinals = freq.ordinals(stamps)
    starts = freq.starts(ordinals)
    first, step = GRID[time_freq]
    assert freq.label(int(ordinals[0])) == first
    assert (starts <= stamps).all() and (freq.starts(ordinals + 1) > stamps).all()  # each reading in its period
    if freq.multiple == 1:  # one unit is exactly the period pandas gives (weeks: Monday to Sunday)
        pandas_starts = frame["timestamp"].dt.to_period(freq.pandas).dt.start_time.to_numpy()
        assert (pandas_starts.astype("datetime64[s]") == starts).all()
    grid = contract.period_means(stamps, frame["ozone"].to_numpy(), time_freq)
    assert grid.start == first and len(grid.means) == PERIODS
    np.testing.assert_array_equal(grid.means[:, 0], as_floats(expected))
    assert freq.ordinal_of(first) == grid.first
    mid_period = (pd.Timestamp(first) + step).isoformat()
    assert freq.ordinal_of(mid_period) == grid.first + 1  # a start inside a period is that period
    assert freq.ordinal_of(str(pd.Timestamp(first) + step - pd.Timedelta(seconds=1))) == grid.first


def test_time_freq_spellings_compare_as_one_frequency():
    assert contract.same_time_freq("H", "1h") and contract.same_time_freq("1D", "D")
    assert not contract.same_time_freq("H", "2H") and not contract.same_time_freq("W", "D")
    assert contract.same_time_freq("x", "x") and not contract.same_time_freq("x", "H")
    assert registry.shape_differences({"time_freq": "1H"}, {"time_freq": "h"}) == []
    assert registry.shape_differences({"time_freq": "M"}, {"time_freq": "W"}) == ["time_freq M -> W"]


def test_grid_reads_dates_beyond_nanoseconds_and_empty_input():
    freq = contract.parse_time_freq("M")
    assert freq.label(int(freq.ordinals(["9999-12-31T00:00:00"])[0])) == "9999-12-01 00:00:00"
    empty = contract.period_means(np.array([], dtype="datetime64[s]"), [], freq)
    assert empty.means.shape == (0, 1) and np.isnan(empty.window(5, 3)).all()
    with pytest.raises(contract.ContractError, match="start: 'soon' is not a timestamp"):
        freq.ordinal_of("soon")
    minutes = contract.parse_time_freq("min")
    far = np.array(["2024-01-01T00:00", "9999-12-31T00:00"], dtype="datetime64[s]")
    with pytest.raises(
        contract.ContractError, match=r"2024-01-01 00:00:00 to 9999-12-31 00:00:00 span .* is a timestamp"
    ):
        contract.period_means(far, [1.0, 2.0], minutes)  # a named error, not gigabytes of empty periods


@pytest.mark.parametrize("time_freq", GRID)
def test_monitor_scores_every_frequency(tmp_path, time_freq):
    """#23 item 5: for M and W no actual ever matched a forecast (the run said "no data" and exited 0)."""
    frame, expected = readings(time_freq)
    frame.to_parquet(tmp_path / "lake", partition_cols=["date"], index=False)
    first, _ = GRID[time_freq]
    forecast = {
        "item_id": "d1",
        "start": first,
        "mean": [1.0] * PERIODS,
        "quantiles": {"0.5": [1.0] * PERIODS},
    }
    shifted = {**forecast, "item_id": "d1/ozone", "start": (pd.Timestamp(first) + GRID[time_freq][1]).isoformat()}
    unknown = {**forecast, "item_id": "d9"}
    actual, mean, bands = monitor.align(
        [("f:1", forecast), ("f:2", shifted), ("f:3", unknown)], tmp_path / "lake", "ozone", time_freq
    )
    np.testing.assert_array_equal(actual[0], as_floats(expected))
    np.testing.assert_array_equal(actual[1], as_floats([*expected[1:], "NaN"]))  # one period later
    assert np.isnan(actual[2]).all() and mean.shape == (3, PERIODS) and set(bands) == {0.5}


@pytest.mark.parametrize("time_freq", GRID)
def test_converter_writes_series_on_the_grid(tmp_path, time_freq):
    frame, expected = readings(time_freq)
    frame.to_parquet(tmp_path / "lake", partition_cols=["date"], index=False)
    assert (
        to_deepar.main(
            [
                "--curated",
                str(tmp_path / "lake"),
                "--out",
                str(tmp_path / "out"),
                "--time-freq",
                time_freq,
                "--prediction-length",
                "1",
                "--pollutant",
                "ozone",
                "--min-length",
                "2",
            ]
        )
        == 0
    )
    [series] = contract.read_jsonl(tmp_path / "out" / "test" / "test.json")
    assert series == {"start": GRID[time_freq][0], "target": expected, "item_id": "d1"}


@pytest.fixture
def forecaster(monkeypatch):
    """A serving container's /invocations that records what it was asked and answers a flat forecast."""
    asked: list[dict] = []

    class Container(StubHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            request = json.loads(self.request_body())
            asked.extend(request["instances"])
            body = json.dumps({"predictions": [{"mean": [1.0, 2.0]} for _ in request["instances"]]}).encode()
            self.answer(200, body, {"Content-Type": "application/json"})

    with http_stub(Container) as url:
        monkeypatch.setenv("FORECAST_ENDPOINT", url)
        monkeypatch.delenv("FORECAST_MODEL", raising=False)
        forecasting._cached.clear()
        yield asked
    forecasting._cached.clear()


@pytest.mark.parametrize("time_freq", GRID)
def test_forecast_api_serves_every_frequency(tmp_path, monkeypatch, forecaster, time_freq):
    """#23 item 5: GET /forecast/{device_id} answered 500 for TIME_FREQ M and W."""
    frame, expected = readings(time_freq)
    frame.to_parquet(tmp_path / "lake", partition_cols=["date"], index=False)
    monkeypatch.setenv("LAKE_URI", str(tmp_path / "lake"))
    monkeypatch.setenv("TIME_FREQ", time_freq)
    monkeypatch.setenv("HISTORY_DAYS", "800")  # eighteen months of 3M periods
    event = {
        "httpMethod": "GET",
        "resource": "/forecast/{device_id}",
        "pathParameters": {"device_id": "d1"},
        "queryStringParameters": {"pollutant": "ozone"},
    }
    answer = forecast_api.handler(event)
    assert answer["statusCode"] == 200, answer["body"]
    body = json.loads(answer["body"])
    assert (body["history_start"], body["history_points"]) == (GRID[time_freq][0], PERIODS)
    assert forecaster == [{"start": GRID[time_freq][0], "target": expected}]


def test_forecast_api_history_ignores_partitions_dated_after_tomorrow(tmp_path, monkeypatch, forecaster):
    """#23 item 2: a far-future partition (a broken device clock, from before the ETL quarantined it) made
    the newest-partitions read see only that one: 404 for every other device."""
    frame, expected = readings("H")
    broken = pd.DataFrame({"device_id": ["broken"], "timestamp": [pd.Timestamp("2262-01-01")], "ozone": [1.0]})
    broken["date"] = "9999-12-31"  # the partition the Glue job once wrote; pandas cannot hold that timestamp
    pd.concat([frame, broken]).to_parquet(tmp_path / "lake", partition_cols=["date"], index=False)
    monkeypatch.setenv("LAKE_URI", str(tmp_path / "lake"))
    monkeypatch.setenv("TIME_FREQ", "H")
    monkeypatch.setenv("HISTORY_DAYS", "1")
    event = {
        "httpMethod": "GET",
        "resource": "/forecast/{device_id}",
        "pathParameters": {"device_id": "d1"},
        "queryStringParameters": {"pollutant": "ozone"},
    }
    answer = forecast_api.handler(event)
    assert answer["statusCode"] == 200, answer["body"]
    assert forecaster == [{"start": GRID["H"][0], "target": expected}]


@pytest.mark.parametrize("time_freq", GRID)
def test_long_csv_fills_the_gaps_of_every_frequency(time_freq):
    """#23 item 5: gaps were filled for min, H and D only."""
    frame, expected = readings(time_freq)
    rows = [f"{device},{stamp.isoformat()},{value}" for device, stamp, value, _ in frame.itertuples(index=False)]
    body = "\n".join(["item_id,timestamp,value", *reversed(rows)]).encode()  # order does not matter
    [line] = inputs._long_csv(body, time_freq)
    assert line.record == {"item_id": "d1", "start": GRID[time_freq][0], "target": expected}


def test_long_csv_reads_offsets_as_utc():
    body = b"item_id,timestamp,value\na,2024-01-01T02:30:00+02:00,1\na,2024-01-01T03:10:00Z,3\n"
    [line] = inputs._long_csv(body, "H")
    assert line.record == {"item_id": "a", "start": "2024-01-01 00:00:00", "target": [1.0, "NaN", "NaN", 3.0]}


def test_lake_history_outside_the_grid_is_named(tmp_path):
    with pytest.raises(monitor.LoopError, match=r"--time-freq: '2X'"):
        monitor.align(
            [("f:1", {"item_id": "d", "start": "x", "mean": [1], "quantiles": {}})], Path(tmp_path), "o", "2X"
        )
