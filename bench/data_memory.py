"""Memory of reading a large train channel: peak RSS vs the decoded float32 size of the targets.

Writes ~--gigabytes of JSON Lines (hourly series with gaps), then reads it in a fresh process with
the train job's reader (validation, statistics, float32 arrays) and prints the peak resident memory
above the interpreter's baseline, as a multiple of 4 bytes x observations (target: a few times).
With --single-series-points N it writes one series of N points on one line instead (a 7.2 M-point
series is ~50 MB) and reads it beside a many-series baseline of the same size, measured in the
same run (target: <= 2x the decoded size above baseline, >= 50 MB/s).

    .venv/bin/python -m bench.data_memory [--gigabytes 1.0]
    .venv/bin/python -m bench.data_memory --single-series-points 7200000 [--dynamic-feat 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent

READER = r"""
import sys, time
from pathlib import Path
import numpy, pandas, orjson  # the baseline includes the libraries the job always imports
from sagemaker_deepar.training.data import read_channel

def peak_kb():  # VmHWM, not ru_maxrss: a child's ru_maxrss starts at its parent's RSS when it forked
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM:")).split()[1])

baseline = peak_kb()
start = time.perf_counter()
channel = read_channel("train", Path(sys.argv[1]), "h")
elapsed = time.perf_counter() - start
peak = peak_kb()
assert Path(sys.modules["sagemaker_deepar"].__file__).is_relative_to(sys.argv[2]), "measured the wrong checkout"
floats = sum(e["target"].size + getattr(e.get("feat_dynamic_real"), "size", 0) for e in channel.entries)
print(channel.stats.num_series, channel.stats.num_observations, baseline, peak, elapsed, floats)
"""


def series_line(rng: np.random.Generator, points: int, dynamic_feat: int = 0) -> str:
    values = np.round(30 + 10 * np.sin(np.arange(points) / 24 * 2 * np.pi) + rng.normal(0, 3, points), 3)
    text = ",".join(map(str, values.tolist()))
    line = '{"start": "2024-01-01 00:00:00", "target": [' + text.replace(",31.0,", ",null,", 3) + '], "cat": [1]'
    if dynamic_feat:
        rows = (",".join(map(str, np.round(rng.normal(0, 1, points), 3).tolist())) for _ in range(dynamic_feat))
        line += ', "dynamic_feat": [' + ",".join(f"[{row}]" for row in rows) + "]"
    return line + "}\n"


def write_channel(path: Path, gigabytes: float) -> int:
    """Series of 5,000 points written until the file reaches the size; returns bytes written."""
    rng = np.random.default_rng(0)
    written, target = 0, int(gigabytes * 1e9)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        while written < target:
            line = series_line(rng, 5000)
            f.write(line)
            written += len(line)
    return written


def write_long_series(path: Path, points: int, dynamic_feat: int = 0) -> int:
    """One series of ``points`` values (and ``dynamic_feat`` features as long) on one line; returns bytes written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = series_line(np.random.default_rng(0), points, dynamic_feat)
    path.write_text(line)
    return len(line)


def measure(channel: Path, size: int, label: str, code: Path = REPO) -> tuple[float, float]:
    """Read the channel in a fresh process; print and return (peak RSS above baseline / decoded, MB/s)."""
    out = subprocess.run(
        [sys.executable, "-c", READER, str(channel), str(code)],
        capture_output=True,
        text=True,
        check=True,
        cwd=code,  # `python -c` imports from its working folder first: the checkout whose reader is measured
    ).stdout.split()
    series, observations, baseline_kb, peak_kb, seconds = (
        int(out[0]),
        int(out[1]),
        int(out[2]),
        int(out[3]),
        float(out[4]),
    )
    floats = int(out[5]) if len(out) > 5 else observations  # another checkout's reader may print targets only
    decoded = 4 * floats
    used = (peak_kb - baseline_kb) * 1024
    rate = size / 1e6 / seconds
    print(
        f"{label}: JSON Lines {size / 1e6:.1f} MB, {series} series, {observations:,} observations; read in "
        f"{seconds:.2f} s ({rate:.0f} MB/s); decoded float32 {decoded / 1e6:.1f} MB, peak RSS above baseline "
        f"{used / 1e6:.1f} MB = {used / decoded:.2f}x"
    )
    return used / decoded, rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gigabytes", type=float, default=1.0)
    parser.add_argument(
        "--single-series-points",
        type=int,
        default=0,
        help="one series of this many points on one line (beside a many-series baseline of equal size)",
    )
    parser.add_argument(
        "--dynamic-feat", type=int, default=0, help="with --single-series-points: that many dynamic features as long"
    )
    parser.add_argument(
        "--also-code", type=Path, help="another checkout (e.g. before a change) to read the long series with"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if not args.single_series_points:
            size = write_channel(Path(tmp) / "train" / "data.json", args.gigabytes)
            measure(Path(tmp) / "train", size, "many series")
            print("[target: a few times]")
            return
        size = write_long_series(Path(tmp) / "long" / "data.json", args.single_series_points, args.dynamic_feat)
        baseline_size = write_channel(Path(tmp) / "many" / "data.json", size / 1e9)
        many_ratio, many_rate = measure(Path(tmp) / "many", baseline_size, "baseline, series of 5,000 points")
        long_ratio, long_rate = measure(Path(tmp) / "long", size, "one long series            ")
        if args.also_code:
            measure(Path(tmp) / "long", size, f"one long series, {args.also_code}", args.also_code)
        print(
            f"one long series vs baseline: memory {long_ratio:.2f}x vs {many_ratio:.2f}x of the decoded size "
            f"[target <= 2x]; speed {long_rate:.0f} vs {many_rate:.0f} MB/s [target >= 50 MB/s]"
        )


if __name__ == "__main__":
    main()
