"""Memory of reading a large train channel: peak RSS vs the decoded float32 size of the targets.

Writes ~--gigabytes of JSON Lines (hourly series with gaps), then reads it in a fresh process with
the train job's reader (validation, statistics, float32 arrays) and prints the peak resident memory
above the interpreter's baseline, as a multiple of 4 bytes x observations (target: a few times).

    .venv/bin/python -m bench.data_memory [--gigabytes 1.0]
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
import resource, sys, time
from pathlib import Path
import numpy, pandas, orjson  # the baseline includes the libraries the job always imports
from sagemaker_deepar.data import read_channel
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
channel = read_channel("train", Path(sys.argv[1]), "h")
elapsed = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(channel.stats.num_series, channel.stats.num_observations, baseline, peak, elapsed)
"""


def write_channel(path: Path, gigabytes: float) -> int:
    """Series of 5,000 points written until the file reaches the size; returns bytes written."""
    rng = np.random.default_rng(0)
    written, target = 0, int(gigabytes * 1e9)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        while written < target:
            values = np.round(30 + 10 * np.sin(np.arange(5000) / 24 * 2 * np.pi) + rng.normal(0, 3, 5000), 3)
            text = ",".join(map(str, values.tolist()))
            line = (
                '{"start": "2024-01-01 00:00:00", "target": ['
                + text.replace(",31.0,", ",null,", 3)
                + '], "cat": [1]}\n'
            )
            f.write(line)
            written += len(line)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gigabytes", type=float, default=1.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        channel = Path(tmp) / "train"
        size = write_channel(channel / "data.json", args.gigabytes)
        out = subprocess.run(
            [sys.executable, "-c", READER, str(channel)], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.split()
        series, observations, baseline_kb, peak_kb, seconds = (
            int(out[0]),
            int(out[1]),
            int(out[2]),
            int(out[3]),
            float(out[4]),
        )
        decoded = 4 * observations
        used = (peak_kb - baseline_kb) * 1024
        print(
            f"JSON Lines {size / 1e9:.2f} GB: {series} series, {observations:,} observations; read in {seconds:.1f} s "
            f"({size / 1e6 / seconds:.0f} MB/s)"
        )
        print(
            f"decoded float32 {decoded / 1e6:.0f} MB; peak RSS above baseline {used / 1e6:.0f} MB = {used / decoded:.2f}x "
            f"[target: a few times]"
        )


if __name__ == "__main__":
    main()
