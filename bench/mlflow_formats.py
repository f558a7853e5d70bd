"""Series/s of one model served from an mlflow model folder: DeepAR's request vs mlflow's ``dataframe_split``.

Trains the README model (bench.serve_throughput's hyperparameters) through `container/train`, wraps it
with the pyfunc's ``save_model``, then answers the same series both ways through the server's
``ForecastService`` (ONNX runtime, one thread, the artifact found in the mlflow folder as ``serve`` finds
it): 1-series and 100-series requests, 100 samples, 200 points of history, alternating in short rounds so
both see the same machine load. The difference is what the mlflow path adds: the long frame to DeepAR
instances (``frames.frame_request``) and the answer back to rows. Bounded: ``--rounds`` x ``--seconds``.

    .venv/bin/python -m bench.mlflow_formats [--rounds 3] [--seconds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import orjson

from bench.serve_throughput import train
from sagemaker_deepar.training import sample_data


def rate(body: bytes, service, num_series: int, seconds: float) -> float:  # noqa: ANN001 - ForecastService
    from sagemaker_deepar.serving.service import JSON

    service.realtime(body, JSON, JSON, service.deadline())  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        service.realtime(body, JSON, JSON, service.deadline())
        done += num_series
    return done / (time.perf_counter() - started)


def bodies(records: list[dict], n: int, freq: str) -> tuple[bytes, bytes]:
    """The same n series as DeepAR's request and as mlflow's dataframe_split (100 samples, 3 quantiles)."""
    import pandas as pd

    instances = [{"start": r["start"], "target": r["target"][-200:]} for r in records[:n]]
    deepar = {"instances": instances, "configuration": {"num_samples": 100, "quantiles": ["0.1", "0.5", "0.9"]}}
    rows = []
    for i, instance in enumerate(instances):
        stamps = pd.date_range(instance["start"], periods=len(instance["target"]), freq=freq)
        # A frame's missing value is null (DeepAR's target may also spell it "NaN").
        rows += [[f"s{i}", str(t), None if v == "NaN" else v] for t, v in zip(stamps, instance["target"])]
    mlflow = {
        "dataframe_split": {"columns": ["item_id", "timestamp", "target"], "data": rows},
        "params": {"num_samples": 100, "quantiles": [0.1, 0.5, 0.9]},
    }
    return orjson.dumps(deepar), orjson.dumps(mlflow)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()

    from sagemaker_deepar.logs import quiet_libraries
    from sagemaker_deepar.mlflow_pyfunc import save_model
    from sagemaker_deepar.runtimes.model import Model
    from sagemaker_deepar.serving.batcher import Batcher
    from sagemaker_deepar.serving.mlflow_folder import find_artifact
    from sagemaker_deepar.serving.server_config import ServerConfig
    from sagemaker_deepar.serving.service import ForecastService

    quiet_libraries()
    with tempfile.TemporaryDirectory() as tmp:
        records = sample_data.generate(num_sensors=100, days=30)
        train(Path(tmp) / "job", "torch", records)
        save_model(Path(tmp) / "job" / "model", Path(tmp) / "mlflow" / "model")
        config = ServerConfig.from_env({"SAGEMAKER_BASE_DIR": str(Path(tmp) / "mlflow")})
        served = find_artifact(Path(config.model_dir))
        model = Model.load(served.artifact_dir, config.max_batch_series, "onnx", 1)
        service = ForecastService(
            model, dataclasses.replace(config, max_sample_paths=10**7), Batcher(model.sample, 10**6, 10**4)
        )
        print(f"model folder: {served.describe()}")
        print(f"{'series/request':>15} {'DeepAR request':>15} {'dataframe_split':>16} {'mlflow/DeepAR':>14}")
        for n in (1, 100):
            deepar, mlflow = bodies(records, n, model.freq)
            rates: dict[str, list[float]] = {"deepar": [], "mlflow": []}
            for _ in range(args.rounds):
                rates["deepar"].append(rate(deepar, service, n, args.seconds))
                rates["mlflow"].append(rate(mlflow, service, n, args.seconds))
            best = {name: max(values) for name, values in rates.items()}
            print(
                f"{n:>15} {best['deepar']:>11.1f} s/s {best['mlflow']:>12.1f} s/s {best['mlflow'] / best['deepar']:>13.2f}x"
            )


if __name__ == "__main__":
    main()
