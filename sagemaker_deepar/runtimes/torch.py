"""The torch runtime: GluonTS's DeepAR network in torch (``torch_deepar.TorchDeepAR``), without Lightning.

Serves a torch model when ``DEEPAR_INFERENCE_RUNTIME=torch`` or when it has no (loadable) ONNX network.
Safe to load in the gunicorn master before the fork: the workers share the model's pages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..contract import ModelArtifact
from ..paths import PREDICTOR_DIR
from . import Entry, LoadOptions, RuntimeUnavailable, tiny_entry

LOAD_BEFORE_FORK = True


def available(model_dir: Path, artifact: ModelArtifact, options: LoadOptions) -> None:
    if artifact.backend != "torch":
        raise RuntimeUnavailable(f"a {artifact.backend} model, not a torch one")


def prepare(options: LoadOptions) -> None:
    """What a torch model's first load would otherwise import (seconds): a cold load pays only its model.
    The DeepAR module first, as TorchDeepAR does, so that gluonts.torch's __init__ (Lightning) never runs."""
    import torch

    if options.threads:
        torch.set_num_threads(options.threads)
    from .torch_deepar import import_deepar_module

    import_deepar_module()
    from gluonts.core import serde  # noqa: F401
    from gluonts.dataset.loader import InferenceDataLoader  # noqa: F401
    from gluonts.torch.batchify import batchify  # noqa: F401
    from gluonts.transform import SelectFields  # noqa: F401


def load(model_dir: Path, artifact: ModelArtifact, options: LoadOptions) -> "TorchRuntime":
    import torch

    from .torch_deepar import TorchDeepAR

    available(model_dir, artifact, options)
    if options.threads:
        torch.set_num_threads(options.threads)
    network = TorchDeepAR(Path(model_dir) / PREDICTOR_DIR, batch_size=options.max_batch_series)
    return TorchRuntime(network, artifact, why="GluonTS's torch network")


class TorchRuntime:
    name = "torch"

    def __init__(self, network: Any, artifact: ModelArtifact, why: str):
        self.network = network  # torch_deepar.TorchDeepAR
        self.artifact = artifact
        self.why = why

    def prewarm(self) -> None:
        self.sample([tiny_entry(self.artifact, "2020-01-01 00:00:00")], 2, None)

    def sample(self, entries: Sequence[Entry], num_samples: int, rng: Optional[np.random.Generator]) -> np.ndarray:
        """A seeded request seeds torch's generator from ``rng``, inside a forked RNG state so that unseeded
        requests keep their fresh stream."""
        import torch

        gluonts_entries = [as_gluonts_entry(entry, self.artifact.freq) for entry in entries]
        if rng is None:
            return self.network.sample(gluonts_entries, num_samples)
        with torch.random.fork_rng():
            torch.manual_seed(int(rng.integers(2**63 - 1)))
            return self.network.sample(gluonts_entries, num_samples)


def as_gluonts_entry(entry: Entry, freq: str) -> Any:
    """GluonTS's transformations need ``start`` as a pandas Period: the server's entries already hold one."""
    import pandas as pd

    if isinstance(entry["start"], pd.Period):
        return entry
    return {**entry, "start": pd.Period(pd.Timestamp(entry["start"]), freq=freq)}
