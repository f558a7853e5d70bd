"""A loaded model: what it was trained with (``deepar-metadata.json``) and the runtime that draws its samples.

Used by the servers, the mlflow model and the train job's load check; the request codec (``serving.codec``)
checks requests against its features.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from ..contract import FeatureSpec, ModelArtifact
from . import LoadOptions, Runtime, load


@dataclass
class Model:
    """A loaded model: what it was trained with (its metadata) and the runtime that draws its samples."""

    engine: Runtime  # runtimes/: onnx, torch or mxnet (or a forecaster wrapping one)
    metadata: dict
    freq: str
    prediction_length: int
    cardinality: list[int]
    num_dynamic_feat: int
    backend: str

    @classmethod
    def load(
        cls, model_dir: Path, max_batch_series: int = 256, runtime: str = "onnx", threads: Optional[int] = None
    ) -> "Model":
        """``runtime``: the preferred one (DEEPAR_INFERENCE_RUNTIME); the seam falls back when it cannot
        serve this artifact (``runtimes.load``). ``threads``: intra-op threads of the runtime (None: its default)."""
        artifact = ModelArtifact.read(model_dir)
        options = LoadOptions(preferred=runtime, max_batch_series=max_batch_series, threads=threads)
        return cls(
            engine=load(model_dir, options, artifact),
            metadata=artifact.to_dict(),
            freq=artifact.freq,
            prediction_length=artifact.prediction_length,
            cardinality=list(artifact.cardinality),
            num_dynamic_feat=artifact.num_dynamic_feat,
            backend=artifact.backend,
        )

    @property
    def runtime(self) -> str:
        """What draws the samples: "onnx", "torch" or "mxnet"."""
        return self.engine.name

    @property
    def features(self) -> FeatureSpec:
        return FeatureSpec(cardinality=tuple(self.cardinality), num_dynamic_feat=self.num_dynamic_feat)

    def sample(self, entries: list[dict], num_samples: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
        """Sample paths, shape (series, num_samples, prediction_length), batched over all entries.

        ``rng``: a seeded request's own generator (``configuration.seed``); None draws from the runtime's stream.
        """
        return self.engine.sample(entries, num_samples, rng)
