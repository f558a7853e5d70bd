"""Peak memory of one full forward pass in a serving worker: our sampling loop vs GluonTS's forward.

Trains the README model (context 72, prediction 24, 3 x 40 LSTM) through `container/train`, loads
it as a worker does (`Model.load`), and forecasts DEEPAR_MAX_BATCH_SERIES (256) series x 100 samples
in one pass with each sampler, reporting RSS and the process's peak RSS after each. The fast loop
runs first, so its peak is not inflated by GluonTS's.

    .venv/bin/python -m bench.serve_memory [--series 256]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from bench.serve_throughput import request_body, train
from sagemaker_deepar.training import sample_data

REPO = Path(__file__).resolve().parent.parent


def rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) / 1024


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--series", type=int, default=256)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        records = sample_data.generate(num_sensors=20, days=30)
        train(Path(tmp) / "torch", "torch", records)

        import torch

        from sagemaker_deepar.logs import quiet_libraries
        from sagemaker_deepar.runtimes.model import Model
        from sagemaker_deepar.serving.codec import parse_instance

        quiet_libraries()
        torch.set_num_threads(1)
        model = Model.load(Path(tmp) / "torch/model", max_batch_series=args.series, runtime="torch")
        instances = request_body(records * (args.series // len(records) + 1), args.series)["instances"]
        entries = [parse_instance(i, model, "").entry for i in instances]
        model.sample(entries[:1], 2)  # warm-up, as the server does
        print(f"loaded: RSS {rss_mb():.0f} MB, peak {peak_mb():.0f} MB")
        fast = model.engine.network.fast_sampler
        for name, sampler in (("fast loop", fast), ("GluonTS forward", None)):
            model.engine.network.fast_sampler = sampler
            start = time.perf_counter()
            model.sample(entries, 100)
            print(
                f"{name:15}: {args.series} series x 100 samples in one pass, {time.perf_counter() - start:.1f} s; "
                f"RSS {rss_mb():.0f} MB, peak {peak_mb():.0f} MB"
            )


if __name__ == "__main__":
    main()
