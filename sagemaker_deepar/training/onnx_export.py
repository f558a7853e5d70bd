"""Export a trained torch DeepAR network to ONNX for ``onnx_forecast.OnnxForecaster`` (torch side).

The exported graph is one LSTM unroll of the trained network, from the inputs that depend on the
sampled path to the distribution arguments, so the same graph encodes the context (T =
context_length, zero state) and takes every sampling step (T = 1, the state carried over):

    inputs:  lags (B, T, lags) scaled target at each lag, time_feat (B, T, time features),
             feat_static_cat (B, cats) int64, feat_static_real (B, reals), log_scale (B, 1),
             h0, c0 (layers, B, hidden)
    outputs: args (B, T, distribution arguments, domain-mapped), h, c

Embeddings, the LSTM and the argument projection (with its domain map) are in the graph; scaling,
lag gathering, time features and the draws are numpy's, in ``onnx_forecast``. The export is
checked against the torch network on one batch before it is published (``check_export``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..contract import ONNX_FILE, ONNX_LIKELIHOODS

log = logging.getLogger(__name__)

# Largest |onnxruntime - torch| accepted on the check batch (float32 through 3 LSTM layers: ~1e-6).
EXPORT_TOLERANCE = 1e-4
OPSET = 17


class UnrollStep(nn.Module):
    """``DeepARModel``'s rnn input assembly (given lags), LSTM and projection, as one traceable module."""

    def __init__(self, model: Any):
        super().__init__()
        self.model = model

    def forward(
        self,
        lags: Tensor,
        time_feat: Tensor,
        feat_static_cat: Tensor,
        feat_static_real: Tensor,
        log_scale: Tensor,
        h0: Tensor,
        c0: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        static_feat = torch.cat((self.model.embedder(feat_static_cat), feat_static_real, log_scale), dim=-1)
        expanded = static_feat.unsqueeze(1).expand(-1, lags.shape[1], -1)
        rnn_input = torch.cat((lags, expanded, time_feat), dim=-1)
        output, (h, c) = self.model.rnn(rnn_input, (h0, c0))
        args = torch.stack(self.model.param_proj(output), dim=-1)
        return args, h, c


INPUT_NAMES = ["lags", "time_feat", "feat_static_cat", "feat_static_real", "log_scale", "h0", "c0"]
OUTPUT_NAMES = ["args", "h", "c"]


def example_inputs(model: Any, batch: int = 3, steps: int = 5, seed: int = 0) -> tuple[Tensor, ...]:
    """A random batch shaped as the network expects (categories within their cardinalities)."""
    generator = torch.Generator().manual_seed(seed)
    rnn = model.rnn
    num_lags = len(model.lags_seq)
    cardinalities = [embedding.num_embeddings for embedding in model.embedder._embedders]
    cats = torch.stack([torch.randint(0, c, (batch,), generator=generator) for c in cardinalities], dim=1)
    return (
        torch.randn(batch, steps, num_lags, generator=generator),
        torch.randn(batch, steps, model.num_feat_dynamic_real, generator=generator),
        cats.long(),
        torch.randn(batch, model.num_feat_static_real, generator=generator),
        torch.randn(batch, 1, generator=generator),
        torch.randn(rnn.num_layers, batch, rnn.hidden_size, generator=generator),
        torch.randn(rnn.num_layers, batch, rnn.hidden_size, generator=generator),
    )


def export(model: Any, path: Path) -> Path:
    """Write ``model`` (a GluonTS torch ``DeepARModel`` in eval mode) as ONNX with dynamic batch and length."""
    step = UnrollStep(model).eval()
    dynamic = {"lags": {0: "batch", 1: "steps"}, "time_feat": {0: "batch", 1: "steps"}}
    dynamic |= {name: {0: "batch"} for name in ("feat_static_cat", "feat_static_real", "log_scale")}
    dynamic |= {name: {1: "batch"} for name in ("h0", "c0", "h", "c")}
    dynamic["args"] = {0: "batch", 1: "steps"}
    with torch.inference_mode():
        # The TorchScript exporter: it needs neither onnx nor onnxscript installed.
        torch.onnx.export(
            step,
            example_inputs(model),
            str(path),
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,
        )
    return path


def check_export(model: Any, path: Path) -> float:
    """Largest |onnxruntime - torch| over a fresh batch; raises if above ``EXPORT_TOLERANCE``."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = example_inputs(model, batch=4, steps=7, seed=1)
    with torch.inference_mode():
        expected = UnrollStep(model).eval()(*inputs)
    got = session.run(OUTPUT_NAMES, {name: t.numpy() for name, t in zip(INPUT_NAMES, inputs)})
    error = max(float(np.max(np.abs(g - e.numpy()))) for g, e in zip(got, expected))
    if not error <= EXPORT_TOLERANCE:
        raise ValueError(f"{path.name}: onnxruntime differs from torch by {error:g} (> {EXPORT_TOLERANCE:g})")
    return error


def sampler_spec(model: Any, freq: str) -> dict[str, Any]:
    """What the numpy loop needs besides the graph: lags, window, scaling, time features, post-processing."""
    from gluonts.time_feature import time_features_from_frequency_str

    scaler = model.scaler
    return {
        "lags": [int(lag) for lag in model.lags_seq],  # GluonTS's "minus one" lags: lag l reads t - 1 - l
        "past_length": int(model.past_length),
        "context_length": int(model.context_length),
        "scaling": type(scaler).__name__ == "MeanScaler",
        "minimum_scale": float(getattr(scaler, "minimum_scale", 1e-10)),
        "default_scale": getattr(scaler, "default_scale", None),
        "time_features": [f.__name__ for f in time_features_from_frequency_str(freq)],
        "num_feat_static_real": int(model.num_feat_static_real),
        "nonnegative": bool(model.nonnegative_pred_samples),
        "num_layers": int(model.rnn.num_layers),
        "hidden_size": int(model.rnn.hidden_size),
    }


def export_checked(model: Any, likelihood: str, freq: str, model_dir: Path) -> dict[str, Any]:
    """The ``onnx`` entry of the artifact: the file written and checked, or why there is none.

    Never raises: the model is published either way (serving does not need the ONNX file).
    """
    if likelihood not in ONNX_LIKELIHOODS:
        reason = f"likelihood {likelihood} has no numpy sampler (ONNX covers {', '.join(ONNX_LIKELIHOODS)})"
        log.warning("no ONNX network exported: %s", reason)
        return {"file": None, "reason": reason}
    path = Path(model_dir) / ONNX_FILE
    try:
        export(model, path)
        error = check_export(model, path)
        spec = sampler_spec(model, freq)
    except Exception as failure:  # any exporter or runtime failure: the torch model is still good
        path.unlink(missing_ok=True)
        reason = f"{type(failure).__name__}: {failure}".splitlines()[0][:500]
        log.warning("no ONNX network exported (the torch model is unaffected): %s", reason)
        return {"file": None, "reason": reason}
    log.info("ONNX network written to %s (checked: max |onnxruntime - torch| = %.2g)", ONNX_FILE, error)
    return {"file": ONNX_FILE, "opset": OPSET, "max_abs_error": error, "likelihood": likelihood, **spec}
