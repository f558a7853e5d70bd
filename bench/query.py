"""queries/daily_stats.sql on DuckDB (`ingestion.query`) vs the same daily statistics in pandas.

    .venv/bin/python -m bench.query                       # 10 M readings, 3 interleaved rounds
    .venv/bin/python -m bench.query --readings 2000000 --rounds 1

Writes a lake in the Glue job's layout (readings/date=YYYY-MM-DD/, one snappy Parquet file per date,
sorted by device_id then timestamp, one row group: device_id, timestamp (INT64 microseconds, no time
zone), the five pollutants, latitude, longitude, received_at, source), then runs, in interleaved rounds
(duckdb, pandas, duckdb, pandas, ...), each side as a fresh process over the same files:
- duckdb: `ingestion.query.run` of daily_stats (what `python -m ingestion.query daily_stats` runs);
- pandas: `pd.read_parquet` of the columns it needs, then per (device, day) count/mean/min/max of each
  pollutant (groupby + agg, the idiomatic way, no melt). The day is the hive `date` partition on both
  sides (the query groups by it too): the same knowledge of the layout, and pandas' fastest way
  (grouping by the timestamp normalised to midnight reads one more column and costs it more).
Prints each round (wall seconds including interpreter start, and each side's CPU seconds from the
child's rusage), the median of the per-round ratios with its range, each side's peak RSS, the
machine's load and cores and what each side may use (DuckDB: all cores; pandas: one, pyarrow's reader
all). Both answers are compared once (same groups, same means to 1e-9). --json PATH writes the result
for bench.report.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._paired import Paired, machine
from bench._results import JSON_HELP, Result

REPO = Path(__file__).resolve().parent.parent
POLLUTANTS = ("ozone", "particulate_matter", "carbon_monoxide", "sulfur_dioxide", "nitrogen_dioxide")

DUCKDB_SIDE = """
import json, sys, time
from ingestion import query
started = time.perf_counter()
q = query.load_query("daily_stats")
result = query.run(q, query.bind(q, {}), sys.argv[1])
seconds = time.perf_counter() - started
means = {f"{r[0]}|{r[1]}|{r[2]}": r[4] for r in result.rows}
print(json.dumps({"seconds": seconds, "groups": len(result.rows), "means": means if len(sys.argv) > 2 else None}))
"""

PANDAS_SIDE = """
import json, sys, time
import pandas as pd
POLLUTANTS = ["ozone", "particulate_matter", "carbon_monoxide", "sulfur_dioxide", "nitrogen_dioxide"]
started = time.perf_counter()
frame = pd.read_parquet(sys.argv[1] + "/readings", columns=["device_id", "date", *POLLUTANTS])
stats = frame.groupby(["device_id", "date"], observed=True)[POLLUTANTS].agg(["count", "mean", "min", "max"])
long = stats.stack(level=0, future_stack=True)
seconds = time.perf_counter() - started
means = {f"{d}|{day}|{m}": v for (d, day, m), v in long["mean"].items()} if len(sys.argv) > 2 else None
print(json.dumps({"seconds": seconds, "groups": len(long), "means": means}))
"""


def write_lake(root: Path, readings: int, devices: int) -> int:
    """``readings`` rows over ``devices`` devices, one Parquet file per day, 10-second cadence."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    per_device = readings // devices
    per_day = 24 * 360  # one reading every 10 s
    days = -(-per_device // per_day)
    rng = np.random.default_rng(1)
    written = 0
    start = pd.Timestamp("2024-01-01")
    for day in range(days):
        count = min(per_day, per_device - day * per_day)
        if count <= 0:
            break
        stamps = start + pd.Timedelta(days=day) + pd.to_timedelta(np.arange(count) * 10, unit="s")
        n = count * devices
        columns = {
            "device_id": pa.array(np.repeat([f"sensor-{d:03d}" for d in range(devices)], count)),
            "timestamp": pa.array(np.tile(stamps.values.astype("datetime64[us]"), devices)),
        }
        for name in POLLUTANTS:
            values = rng.gamma(2.0, 10.0, n)
            values[rng.random(n) < 0.01] = np.nan  # a sensor that sent nothing for this one (null)
            columns[name] = pa.array(values, from_pandas=True)  # NaN -> null, as the Glue job writes gaps
        columns["latitude"] = pa.array(np.full(n, 40.4))
        columns["longitude"] = pa.array(np.full(n, -3.7))
        columns["received_at"] = columns["timestamp"]
        columns["source"] = pa.array(np.full(n, "s3://raw/raw/x.gz"))
        folder = root / "readings" / f"date={(start + pd.Timedelta(days=day)).date()}"
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table(columns), folder / "part-00000.snappy.parquet", compression="snappy")
        written += n
    return written


def rows_in(lake: Path) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(path).metadata.num_rows for path in (lake / "readings").rglob("*.parquet"))


def run_side(code: str, lake: Path, compare: bool = False) -> dict:
    """One side as a fresh process: its answer, its wall seconds (interpreter start included) and its
    CPU seconds (user + system, every thread: the figure a loaded machine distorts least)."""
    argv = [sys.executable, "-c", code, str(lake)] + (["compare"] if compare else [])
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=1800)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode:
        raise SystemExit(f"side failed:\n{done.stderr[-2000:]}")
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    answer["wall"] = wall
    answer["cpu"] = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return answer


def peak_alone(code: str, lake: Path) -> float:
    """Peak RSS (MB) of one side: a wrapper process runs it and reports its only child's rusage."""
    wrapper = (
        "import resource, subprocess, sys\n"
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", wrapper, sys.executable, "-c", code, str(lake)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1800,
        check=True,
    )
    return float(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.query", description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=10_000_000)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--lake", type=Path, help="use (and keep) this lake folder instead of a temporary one")
    parser.add_argument("--json", type=Path, help=JSON_HELP)
    args = parser.parse_args(argv)
    result = Result("query", list(argv if argv is not None else sys.argv[1:]))

    tmp = Path(tempfile.mkdtemp(prefix="bench-query-")) if args.lake is None else None
    lake = args.lake or tmp / "lake"  # type: ignore[operator]
    try:
        if not (lake / "readings").is_dir():
            started = time.perf_counter()
            rows = write_lake(lake, args.readings, args.devices)
            print(f"lake: {rows:,} readings, {args.devices} devices, written in {time.perf_counter() - started:.1f} s")
        size = sum(p.stat().st_size for p in lake.rglob("*.parquet")) / 1e6
        print(f"lake: {lake} ({size:.0f} MB of Parquet)")
        print(f"{machine()}; duckdb: every core; pandas: one (pyarrow's reader: every core)")

        duck = run_side(DUCKDB_SIDE, lake, compare=True)
        panda = run_side(PANDAS_SIDE, lake, compare=True)
        assert duck["groups"] == panda["groups"], (duck["groups"], panda["groups"])
        worst = max(
            abs(duck["means"][k] - panda["means"][k]) for k in panda["means"] if panda["means"][k] == panda["means"][k]
        )
        print(f"answers agree: {duck['groups']} (device, day, pollutant) groups, largest mean difference {worst:.1e}")
        assert worst < 1e-9

        readings = rows_in(lake)
        rounds = Paired(f"daily_stats over {readings:,} readings, duckdb / pandas speed", ">= 5x")
        cpu = Paired(f"daily_stats over {readings:,} readings, pandas CPU s / duckdb CPU s")
        for _ in range(args.rounds):
            d = run_side(DUCKDB_SIDE, lake)
            p = run_side(PANDAS_SIDE, lake)
            say = (
                f"duckdb {d['wall']:.2f} s (query {d['seconds']:.2f} s, {d['cpu']:.2f} CPU s), pandas {p['wall']:.2f} s "
                f"(compute {p['seconds']:.2f} s, {p['cpu']:.2f} CPU s), each a fresh process"
            )
            rounds.add(1 / d["wall"], 1 / p["wall"], say)
            cpu.rounds.append((1 / d["cpu"], 1 / p["cpu"]))
            result.row(
                round=len(rounds.rounds),
                duckdb_wall=d["wall"],
                duckdb_query=d["seconds"],
                duckdb_cpu=d["cpu"],
                pandas_wall=p["wall"],
                pandas_compute=p["seconds"],
                pandas_cpu=p["cpu"],
            )
        duck_peak, pandas_peak = peak_alone(DUCKDB_SIDE, lake), peak_alone(PANDAS_SIDE, lake)
        peak = f"peak RSS: duckdb {duck_peak:.0f} MB, pandas {pandas_peak:.0f} MB"
        print(peak)
        print(f"{machine()} (at the end)")
        print(cpu.headline())
        print(rounds.headline())
        result.headline(rounds)
        result.headline(cpu)
        result.figure("duckdb peak RSS", duck_peak, "MB", peak)
        result.figure("pandas peak RSS", pandas_peak, "MB", peak)
        result.write(args.json)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
