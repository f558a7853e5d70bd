"""Series/s of the ONNX predictor (onnxruntime + numpy loop) vs the torch in-process predictor (fast_sampler).

Trains the README model (context 72, prediction 24, 3 x 40 LSTM, Student-t) through
`container/train` (which also writes `network.onnx`), then forecasts 1-series and 100-series
requests (100 samples, 200 points of history) with both, one thread each, alternating in short rounds
so both see the same machine load. Each side does the whole request in-process: instance parsing,
sampling, mean and quantiles. Bounded: `--rounds` rounds of `--seconds` per side and size.

    .venv/bin/python -m bench.onnx_predict [--rounds 3] [--seconds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable

from bench.serve_throughput import request_body, train
from sagemaker_deepar.training import sample_data


def rate(forecast: Callable[[], object], num_series: int, seconds: float) -> float:
    forecast()  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        forecast()
        done += num_series
    return done / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()

    import torch

    from sagemaker_deepar.logs import quiet_libraries
    from sagemaker_deepar.runtimes.model import Model
    from sagemaker_deepar.runtimes.onnx_forecast import OnnxForecaster
    from sagemaker_deepar.serving.codec import InferenceConfig, parse_instance, predictions

    quiet_libraries()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        records = sample_data.generate(num_sensors=20, days=30)
        train(Path(tmp) / "torch", "torch", records)
        model_dir = Path(tmp) / "torch" / "model"
        model = Model.load(model_dir, runtime="torch")
        onnx = OnnxForecaster.load(model_dir, threads=1)
        config = {"num_samples": 100, "output_types": ["mean", "quantiles"], "quantiles": ["0.1", "0.5", "0.9"]}
        torch_config = InferenceConfig(100, ("mean", "quantiles"), ("0.1", "0.5", "0.9"), (0.1, 0.5, 0.9))

        def torch_forecast(instances: list[dict]) -> object:
            entries = [parse_instance(r, model, f"instances[{i}].").entry for i, r in enumerate(instances)]
            return predictions(model.sample(entries, 100), torch_config, [])

        print(f"{'series/request':>15} {'torch (fast_sampler)':>21} {'onnx':>10} {'onnx/torch':>11}")
        for n in (1, 100):
            instances = request_body(records, n)["instances"]
            torch_rates, onnx_rates = [], []
            for _ in range(args.rounds):
                torch_rates.append(rate(lambda batch=instances: torch_forecast(batch), n, args.seconds))
                onnx_rates.append(rate(lambda batch=instances: onnx.forecast(batch, config), n, args.seconds))
            best_torch, best_onnx = max(torch_rates), max(onnx_rates)
            print(f"{n:>15} {best_torch:>17.1f} s/s {best_onnx:>6.1f} s/s {best_onnx / best_torch:>10.2f}x")


if __name__ == "__main__":
    main()
