"""Cold start of the image's server: `docker run IMAGE serve` until /ping answers 200, with the
model on a read-only /opt/ml mount; median of --runs. Also prints the image size.

    .venv/bin/python -m bench.image_cold_start [--image sagemaker-deepar:latest] [--runs 5]

Trains a small model in the image first (the same container path SageMaker uses).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from tests.helpers import free_port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", default="sagemaker-deepar:latest")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    size = int(
        subprocess.run(
            ["docker", "image", "inspect", args.image, "--format", "{{.Size}}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "input/config").mkdir(parents=True)
        (root / "input/config/hyperparameters.json").write_text(
            json.dumps(
                {
                    "time_freq": "H",
                    "prediction_length": "24",
                    "context_length": "72",
                    "epochs": "1",
                    "num_layers": "3",
                    "num_batches_per_epoch": "2",
                }
            )
        )
        (root / "input/data/train").mkdir(parents=True)
        (root / "input/data/train/train.json").write_text(
            json.dumps({"start": "2024-01-01 00:00:00", "target": [float(i % 24) for i in range(500)]}) + "\n"
        )
        subprocess.run(
            ["docker", "run", "--rm", "-v", f"{root}:/opt/ml", args.image, "train"], check=True, capture_output=True
        )
        times = []
        for _ in range(args.runs):
            port, name = free_port(), f"deepar-bench-{uuid.uuid4().hex[:8]}"
            start = time.perf_counter()
            subprocess.run(
                [
                    "docker",
                    "run",
                    "-d",
                    "--name",
                    name,
                    "-p",
                    f"127.0.0.1:{port}:8080",
                    "-v",
                    f"{root}:/opt/ml:ro",
                    args.image,
                    "serve",
                ],
                check=True,
                capture_output=True,
            )
            try:
                while time.perf_counter() - start < 120:
                    try:
                        if urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).status == 200:
                            break
                    except OSError:
                        time.sleep(0.05)
                times.append(time.perf_counter() - start)
            finally:
                subprocess.run(["docker", "rm", "-f", name], capture_output=True)
    print(f"image {args.image}: {size / 1e9:.2f} GB")
    print(
        f"docker run ... serve -> /ping 200: median {statistics.median(times):.2f} s "
        f"(runs {', '.join(f'{t:.2f}' for t in times)})"
    )


if __name__ == "__main__":
    main()
