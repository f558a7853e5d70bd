"""Serving a torch DeepAR without importing PyTorch Lightning.

`Predictor.deserialize` rebuilds the training-time LightningModule, and importing GluonTS's torch
package pulls in Lightning (plus torch._dynamo, torchmetrics, scipy.signal): ~2.4 s of a ~4.5 s
cold start on these machines. Inference needs only the plain `DeepARModel`, the input
transformation and the weights, all of which the serialized predictor holds, so this module
loads exactly those. `tests/test_torch_serving.py` checks it draws the same samples as GluonTS's
own predictor.
"""

from __future__ import annotations

import importlib
import json
import sys
import types
from pathlib import Path

import numpy as np
import torch

from .fast_sampler import FastDeepARSampler

_PACKAGES_WITHOUT_INIT = ("gluonts.torch", "gluonts.torch.model", "gluonts.torch.model.deepar")


def import_deepar_module():
    """``gluonts.torch.model.deepar.module`` without running the package ``__init__`` files above it.

    Those ``__init__`` files only re-export the estimators (and with them Lightning); the module
    itself imports nothing from them. If GluonTS's torch package is already loaded, use it as is.
    """
    if "gluonts.torch" not in sys.modules:
        import gluonts

        root = Path(gluonts.__file__).parent
        for name in _PACKAGES_WITHOUT_INIT:
            package = types.ModuleType(name)
            package.__path__ = [str(root.joinpath(*name.split(".")[1:]))]
            package.__package__ = name
            sys.modules[name] = package
            parent, _, child = name.rpartition(".")
            setattr(sys.modules[parent], child, package)  # attribute lookups (serde's locate) walk these
    return importlib.import_module("gluonts.torch.model.deepar.module")


class TorchDeepAR:
    """The DeepAR network and its input transformation, read from a serialized PyTorchPredictor."""

    def __init__(self, predictor_dir: Path, batch_size: int):
        deepar_module = import_deepar_module()
        from gluonts.core import serde
        from gluonts.torch.batchify import batchify
        from gluonts.transform import SelectFields

        spec = json.loads((predictor_dir / "predictor.json").read_text())["kwargs"]
        net = spec["prediction_net"]
        if not net["class"].endswith("DeepARLightningModule"):
            raise ValueError(f"{predictor_dir} holds {net['class']}, not a torch DeepAR")
        self.model = deepar_module.DeepARModel(**serde.decode(net["kwargs"]["model_kwargs"]))
        state = torch.load(predictor_dir / "prediction-net-state.pt", map_location="cpu", weights_only=True)
        # The LightningModule keeps the network as its `model` attribute.
        self.model.load_state_dict({k.removeprefix("model."): v for k, v in state.items()})
        self.model.eval()
        self.input_names: list[str] = spec["input_names"]
        self.transform = serde.decode(spec["input_transform"]) + SelectFields(self.input_names, allow_missing=True)
        self.batch_size = batch_size
        self._batchify = batchify
        # None runs GluonTS's own DeepARModel.forward (the reference the benchmark compares against).
        self.fast_sampler: FastDeepARSampler | None = FastDeepARSampler(self.model)

    def sample(self, entries: list[dict], num_samples: int) -> np.ndarray:
        """Sample paths, shape (series, num_samples, prediction_length)."""
        from gluonts.dataset.loader import InferenceDataLoader

        loader = InferenceDataLoader(
            entries,
            transform=self.transform,
            batch_size=self.batch_size,
            stack_fn=lambda data: self._batchify(data, "cpu"),
        )
        blocks = []
        with torch.inference_mode():
            for batch in loader:
                inputs = [batch[name] for name in self.input_names]
                if self.fast_sampler is None:
                    out = self.model(*inputs, num_parallel_samples=num_samples)
                else:
                    out = self.fast_sampler.sample(*inputs, num_samples=num_samples)  # type: ignore[misc]  # inputs: the 6 tensors
                blocks.append(out.numpy())
        return np.concatenate(blocks).astype(np.float32, copy=False)
