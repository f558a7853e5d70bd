"""The ONNX runtime: ``network.onnx`` (exported at training) with onnxruntime and the numpy sampler.

A torch model's default runtime: no process imports torch. Each worker creates its own session after the
fork (milliseconds; a session's thread pools and allocator are not documented as fork-safe) and draws with
its own numpy generator, seeded from the OS per load; a seeded request draws from its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..contract import ModelArtifact
from . import Entry, LoadOptions, RuntimeUnavailable, tiny_entry

LOAD_BEFORE_FORK = False


def available(model_dir: Path, artifact: ModelArtifact, options: LoadOptions) -> None:
    if artifact.backend != "torch":
        raise RuntimeUnavailable(f"a {artifact.backend} model has no ONNX network")
    if not (artifact.onnx or {}).get("file"):
        reason = (artifact.onnx or {}).get("reason", "trained before the ONNX export existed")
        raise RuntimeUnavailable(f"no ONNX network: {reason}")


def prepare(options: LoadOptions) -> None:
    import onnxruntime  # noqa: F401

    from . import onnx_forecast  # noqa: F401


def load(model_dir: Path, artifact: ModelArtifact, options: LoadOptions) -> "OnnxRuntime":
    from .onnx_forecast import OnnxForecaster

    available(model_dir, artifact, options)
    onnx_file = (artifact.onnx or {})["file"]
    try:
        forecaster = OnnxForecaster.load(model_dir, threads=options.threads or 0)
    except Exception as failure:  # e.g. a damaged file: the torch network in the same artifact still serves
        raise RuntimeUnavailable(
            f"{onnx_file} did not load ({type(failure).__name__}: {failure})".splitlines()[0][:500]
        ) from None
    return OnnxRuntime(forecaster, why=f"{onnx_file} with onnxruntime")


class OnnxRuntime:
    name = "onnx"

    def __init__(self, forecaster: Any, why: str):
        self.forecaster = forecaster  # onnx_forecast.OnnxForecaster
        self.why = why
        self.rng = np.random.default_rng()  # unseeded requests: one stream per loaded model

    def prewarm(self) -> None:
        self.sample([tiny_entry(self.forecaster.artifact, np.datetime64("2020-01-01T00:00"))], 2, None)

    def sample(self, entries: Sequence[Entry], num_samples: int, rng: Optional[np.random.Generator]) -> np.ndarray:
        series = [
            self.forecaster.series(
                _start(entry["start"]),
                np.asarray(entry["target"], dtype=np.float32),
                entry.get("feat_static_cat"),
                entry.get("feat_dynamic_real"),
            )
            for entry in entries
        ]
        return self.forecaster.sample(series, num_samples, rng or self.rng)

    def forecast(self, instances: list[dict], configuration: Optional[dict] = None) -> list[dict]:
        """Raw request instances to JSON-ready predictions (the serverless function's whole path)."""
        return self.forecaster.forecast(instances, configuration)


def _start(start: Any) -> Any:
    """numpy datetime64 (or a timestamp string) as the numpy sampler takes it; a pandas Period (the server's
    parsed entries, ``data.parse_start``) converted without importing pandas here."""
    start_time = getattr(start, "start_time", None)
    return start_time.to_datetime64() if start_time is not None else start
