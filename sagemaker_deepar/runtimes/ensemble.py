"""The ensemble forecaster (``forecaster: "ensemble"`` in ``deepar-metadata.json``, issue #22) around the chosen
DeepAR runtime: the members the artifact weights forecast each request's series, their quantile functions are
averaged and the samples drawn from the average (``sagemaker_deepar.ensemble``). The DeepAR member's paths come
from the wrapped runtime (onnx, torch or mxnet), so the ONNX server still never imports torch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..contract import ModelArtifact
from . import Entry, LoadOptions, Runtime

log = logging.getLogger(__name__)


def wrap(runtime: Runtime, model_dir: Path, artifact: ModelArtifact, options: LoadOptions) -> "EnsembleRuntime":
    from ..ensemble.forecaster import EnsembleForecaster

    wrapped = EnsembleRuntime(runtime, artifact)
    wrapped.forecaster = EnsembleForecaster(artifact, wrapped.deepar_sample)
    log.info(
        "forecaster: ensemble of %s (members with weight 0 are not run)",
        ", ".join(f"{name} {weight:.2f}" for name, weight in wrapped.forecaster.weights.items()),
    )
    return wrapped


class EnsembleRuntime:
    """A Runtime: ``name`` and ``why`` are the DeepAR runtime's (what draws the network's paths)."""

    def __init__(self, inner: Runtime, artifact: ModelArtifact):
        self.inner = inner
        self.artifact = artifact
        self.name = inner.name
        self.why = inner.why
        self.forecaster: Any = None  # ensemble.forecaster.EnsembleForecaster

    def prewarm(self) -> None:
        """The DeepAR runtime's warm-up, then one ensemble forecast of a series long enough for every member
        (statsforecast's and GluonTS's first calls import and compile)."""
        self.inner.prewarm()
        self.forecaster.prewarm(self._warm_up_entry())

    def sample(self, entries: Sequence[Entry], num_samples: int, rng: Optional[np.random.Generator]) -> np.ndarray:
        return self.forecaster.sample([self._with_period(entry) for entry in entries], num_samples, rng)

    def deepar_sample(self, entries: list[Any], num_samples: int, rng: Optional[np.random.Generator]) -> np.ndarray:
        return self.inner.sample(entries, num_samples, rng)

    def _with_period(self, entry: Entry) -> Entry:
        """NPTS reads the calendar from a pandas Period start: the server's entries hold one already."""
        import pandas as pd

        if isinstance(entry["start"], pd.Period):
            return entry
        return {**entry, "start": pd.Period(pd.Timestamp(entry["start"]), freq=self.artifact.freq)}

    def _warm_up_entry(self) -> dict[str, Any]:
        length = 96
        target = (10 + 3 * np.sin(np.arange(length) / 4)).astype(np.float32)
        entry: dict[str, Any] = {"start": np.datetime64("2020-01-06T00:00"), "target": target}
        if self.artifact.cardinality:
            entry["feat_static_cat"] = np.zeros(len(self.artifact.cardinality), dtype=np.int64)
        if self.artifact.num_dynamic_feat:
            steps = length + self.artifact.prediction_length
            entry["feat_dynamic_real"] = np.zeros((self.artifact.num_dynamic_feat, steps), dtype=np.float32)
        return dict(self._with_period(entry))
