"""Rows/s of the ETL on >= 1M generated readings, each beside a baseline run on the same data.

    .venv/bin/python -m bench.etl_throughput --devices 120 --days 365

1. The Glue job (ingestion/glue_job.py: decode any encoding, split records, type, validate,
   quarantine, de-duplicate, write partitioned Parquet) vs the least Spark can do with the same
   readings: `spark.read.json` of a newline-only copy -> partitioned Parquet, no checks.
2. The converter (ingestion/to_deepar.py: resample, gaps, split, write JSON Lines) vs pandas reading
   the same Parquet and resampling it, writing nothing.
Each step runs as a fresh process; wall-clock seconds include interpreter and JVM start. Both
comparisons run in paired rounds (ours, baseline, ours, baseline, ...; outputs removed between rounds so
every round does the same work); the headline is the median of the per-round time ratios with its range
(bench._paired). Spark runs local[*] on every core for both sides; pandas uses one.

--compare-job FILE also runs another version of the job (a self-contained glue_job.py, e.g. the
previous commit's: `git show main:ingestion/glue_job.py > /tmp/old.py`) in the same rounds (ours, it,
baseline, ...) and prints its own ratio to the baseline and ours / it: a before/after figure measured
under the same load, which two separate runs on a shared machine cannot give.

--keep DIR keeps the generated data and reuses it on the next run with the same --devices, --days and
--object-hours (generating 1 M raw records takes minutes). --json PATH writes the result for bench.report.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._paired import Paired, machine
from bench._results import JSON_HELP, Result

REPO = Path(__file__).resolve().parent.parent

SPARK_BASELINE = """
import sys
from pyspark.sql import SparkSession, functions as F
spark = (SparkSession.builder.config("spark.sql.session.timeZone", "UTC")
         .config("spark.ui.showConsoleProgress", "false").getOrCreate())
frame = spark.read.json(sys.argv[1])
frame.withColumn("date", F.substring("timestamp", 1, 10)).write.mode("overwrite").partitionBy("date").parquet(sys.argv[2])
"""

PANDAS_BASELINE = """
import sys, pandas as pd
frame = pd.read_parquet(sys.argv[1], columns=["device_id", "timestamp", "ozone", "particulate_matter",
                        "carbon_monoxide", "sulfur_dioxide", "nitrogen_dioxide"])
frame.set_index("timestamp").groupby("device_id").resample("h").mean(numeric_only=True)
"""


def timed(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if result.returncode:
        raise SystemExit(f"{command[:4]} failed: {result.stderr[-2000:]}")
    return time.perf_counter() - started, result.stdout


def run_job(entry: list[str], work: Path) -> tuple[float, dict]:
    """Seconds and ETL_COUNTS of one Glue job run over work/raw, from empty outputs."""
    for folder in ("curated", "quarantine"):
        shutil.rmtree(work / folder, ignore_errors=True)
    seconds, out = timed(
        [
            sys.executable,
            *entry,
            "--raw-path",
            str(work / "raw"),
            "--curated-path",
            str(work / "curated"),
            "--quarantine-path",
            str(work / "quarantine"),
        ]
    )
    return seconds, json.loads(out.split("ETL_COUNTS ", 1)[1].splitlines()[0])


def generate(work: Path, plain: Path, devices: int, days: float, object_hours: int) -> None:
    """The raw lake under work/raw and its newline-only copy in ``plain``, unless ``work`` already holds
    both for the same settings (a kept run)."""
    from ingestion.glue_job import decode_object, split_records
    from ingestion.raw_sample import write_lake

    settings = {"devices": devices, "days": days, "object_hours": object_hours}
    marker = work / "sample.json"
    if marker.is_file() and json.loads(marker.read_text()).get("settings") == settings:
        sample = json.loads(marker.read_text())["sample"]
        print(f"reusing {sample['records']:,} raw records in {sample['objects']:,} objects under {work}")
        return
    started = time.perf_counter()
    sample = write_lake(
        work, [f"bench-sensor-{n}" for n in range(1, devices + 1)], "2024-01-01", days, object_hours=object_hours
    )
    print(
        f"generated {sample['records']:,} raw records in {sample['objects']:,} objects "
        f"(newline/concatenated/gzip mixed) in {time.perf_counter() - started:.0f} s"
    )
    plain.mkdir(exist_ok=True)
    for n, path in enumerate(sorted(p for p in (work / "raw").rglob("*") if p.is_file())):
        text = "".join(raw + "\n" for _, _, raw in split_records(decode_object(path.read_bytes())))
        (plain / f"part-{n:05d}.json").write_text(text)
    marker.write_text(json.dumps({"settings": settings, "sample": sample}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", type=int, default=120)
    parser.add_argument("--days", type=float, default=365)
    parser.add_argument(
        "--object-hours", type=int, default=1, help="hours of readings per raw object (Firehose buffer)"
    )
    parser.add_argument("--keep", type=Path, help="keep the generated data here")
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds of each comparison")
    parser.add_argument("--compare-job", type=Path, help="another glue_job.py to time in the same rounds")
    parser.add_argument("--skip-converter", action="store_true", help="time the Glue job only")
    parser.add_argument("--json", type=Path, help=JSON_HELP)
    args = parser.parse_args()
    result = Result("etl_throughput", sys.argv[1:])

    work = args.keep or Path(tempfile.mkdtemp(prefix="etl-bench-"))
    plain = work / "plain.json"  # the baseline's input: the same records, newline-separated, one file per object
    generate(work, plain, args.devices, args.days, args.object_hours)
    print(f"{machine()}; Spark local[*] (every core) on both sides", flush=True)
    glue = Paired("glue job / plain Spark time", "<= 1.1x", higher_is_better=True)
    other = Paired(f"{args.compare_job} / plain Spark time", higher_is_better=True)
    versus = Paired(f"glue job / {args.compare_job} time", higher_is_better=True)
    counts: dict = {}
    for _ in range(args.rounds):
        job_seconds, counts = run_job(["-m", "ingestion.glue_job"], work)
        if args.compare_job:
            other_seconds, other_counts = run_job([str(args.compare_job.resolve())], work)
            if other_counts != counts:
                raise SystemExit(f"{args.compare_job} counted {other_counts}, the glue job {counts}")
        shutil.rmtree(work / "baseline", ignore_errors=True)
        base_seconds, _ = timed([sys.executable, "-c", SPARK_BASELINE, str(plain), str(work / "baseline")])
        rows = counts["records_in"]
        if args.compare_job:
            other.add(other_seconds, base_seconds, f"{other_seconds:.1f} s")
            versus.add(job_seconds, other_seconds)
        glue.add(
            job_seconds,
            base_seconds,
            f"glue job {job_seconds:.1f} s = {rows / job_seconds:,.0f} rows/s; spark.read.json -> parquet (no checks, "
            f"newline only) {base_seconds:.1f} s = {rows / base_seconds:,.0f} rows/s",
        )
        result.row(step="glue job", round=len(glue.rounds), job_seconds=job_seconds, spark_seconds=base_seconds)
    print(f"glue job: {counts['valid']:,} valid, {counts['quarantined']:,} quarantined of {counts['records_in']:,}")
    print(f"{machine()} (at the end)")
    print(glue.headline(), flush=True)
    result.headline(glue)
    if args.compare_job:
        print(other.headline(), flush=True)
        print(versus.headline(), flush=True)
        result.headline(other)
        result.headline(versus)
    if args.skip_converter:
        result.write(args.json)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        return

    converter = Paired("converter / pandas read+resample time", higher_is_better=True)
    readings = counts["curated_rows_in_touched_dates"]
    for _ in range(args.rounds):
        shutil.rmtree(work / "deepar", ignore_errors=True)
        convert_seconds, out = timed(
            [
                sys.executable,
                "-m",
                "ingestion.to_deepar",
                "--curated",
                str(work / "curated"),
                "--out",
                str(work / "deepar"),
                "--prediction-length",
                "24",
            ]
        )
        pandas_seconds, _ = timed([sys.executable, "-c", PANDAS_BASELINE, str(work / "curated")])
        converter.add(
            convert_seconds,
            pandas_seconds,
            f"converter {readings / convert_seconds:,.0f} rows/s; pandas read + resample only "
            f"{readings / pandas_seconds:,.0f} rows/s",
        )
    print(converter.headline(), flush=True)
    result.headline(converter)
    result.write(args.json)
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
