"""The mxnet runtime: GluonTS's predictor of a model trained with ``backend=mxnet`` (and only those).

Not loaded in the gunicorn master: mxnet's engine threads do not survive fork, so each worker loads it.
Its draws cannot be seeded: a seeded request is answered 400.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..contract import ModelArtifact
from ..paths import PREDICTOR_DIR
from . import Entry, LoadOptions, RuntimeUnavailable, SeedUnsupported, tiny_entry
from .torch import as_gluonts_entry

LOAD_BEFORE_FORK = False


def available(model_dir: Path, artifact: ModelArtifact, options: LoadOptions) -> None:
    if artifact.backend != "mxnet":
        raise RuntimeUnavailable(f"a {artifact.backend} model, not an mxnet one")


def prepare(options: LoadOptions) -> None:
    """Nothing: this runs in the gunicorn master too, and mxnet's engine threads do not survive fork."""


def load(model_dir: Path, artifact: ModelArtifact, options: LoadOptions) -> "MxnetRuntime":
    from gluonts.model.predictor import Predictor

    available(model_dir, artifact, options)
    predictor = Predictor.deserialize(Path(model_dir) / PREDICTOR_DIR)
    predictor.batch_size = options.max_batch_series  # one forward pass for a whole request or batch
    return MxnetRuntime(predictor, artifact, why="GluonTS's mxnet predictor")


class MxnetRuntime:
    name = "mxnet"

    def __init__(self, predictor: Any, artifact: ModelArtifact, why: str):
        self.predictor = predictor  # a GluonTS mxnet Predictor
        self.artifact = artifact
        self.why = why

    def prewarm(self) -> None:
        self.sample([tiny_entry(self.artifact, "2020-01-01 00:00:00")], 2, None)

    def sample(self, entries: Sequence[Entry], num_samples: int, rng: Optional[np.random.Generator]) -> np.ndarray:
        if rng is not None:
            raise SeedUnsupported("configuration.seed: reproducible forecasts need a torch model (this one is mxnet)")
        gluonts_entries = [as_gluonts_entry(entry, self.artifact.freq) for entry in entries]
        forecasts = self.predictor.predict(gluonts_entries, num_samples=num_samples)  # 100 per pass, then trimmed
        return np.stack([f.samples[:num_samples] for f in forecasts]).astype(np.float32, copy=False)
