"""The inference runtimes seam (``sagemaker_deepar.runtimes``): the order of preference, the fallback with
its reason, the forecaster hook, and an import that pulls in neither torch, GluonTS nor pandas."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from sagemaker_deepar import runtimes
from sagemaker_deepar.contract import ModelArtifact
from sagemaker_deepar.errors import RequestError, UserError


def _artifact(backend: str, onnx: dict | None) -> ModelArtifact:
    return ModelArtifact(
        backend=backend, freq="h", prediction_length=4, context_length=8, likelihood="student-T", onnx=onnx
    )


WITH_ONNX = {"file": "network.onnx"}
WITHOUT_ONNX = {"file": None, "reason": "likelihood beta has no numpy sampler"}


@pytest.mark.unit
@pytest.mark.parametrize(
    ("backend", "onnx", "preferred", "chosen"),
    [
        ("torch", WITH_ONNX, "onnx", "onnx"),
        ("torch", WITH_ONNX, "torch", "torch"),
        ("torch", WITHOUT_ONNX, "onnx", "torch"),
        ("torch", None, "onnx", "torch"),  # trained before the export existed
        ("mxnet", WITHOUT_ONNX, "onnx", "mxnet"),
        ("mxnet", WITHOUT_ONNX, "torch", "mxnet"),
    ],
)
def test_choose_takes_the_preferred_runtime_when_it_can_serve_the_artifact(backend, onnx, preferred, chosen):
    options = runtimes.LoadOptions(preferred=preferred)
    assert runtimes.choose(Path("/nowhere"), _artifact(backend, onnx), options) == chosen


@pytest.mark.unit
def test_only_the_allowed_runtimes_are_tried_and_the_refusal_says_why():
    options = runtimes.LoadOptions(preferred="onnx")
    with pytest.raises(runtimes.NoRuntime, match=r"onnx: no ONNX network: likelihood beta has no numpy sampler"):
        runtimes.choose(Path("/m"), _artifact("torch", WITHOUT_ONNX), options, only=("onnx",))
    with pytest.raises(runtimes.NoRuntime, match=r"onnx: a mxnet model has no ONNX network"):
        runtimes.load(Path("/m"), options, _artifact("mxnet", WITHOUT_ONNX), only=("onnx",))


@pytest.mark.unit
def test_inference_runtime_setting_accepts_the_selectable_runtimes_only():
    assert runtimes.INFERENCE_RUNTIMES == ("onnx", "torch")
    assert runtimes.order("torch") == ["torch", "onnx", "mxnet"]
    with pytest.raises(ValueError, match="inference runtime 'mxnet' must be one of onnx, torch"):
        runtimes.order("mxnet")


@pytest.mark.unit
def test_an_unknown_forecaster_is_refused_before_anything_loads():
    artifact = SimpleNamespace(backend="torch", onnx=WITH_ONNX, forecaster="stacking")
    with pytest.raises(UserError, match=r"forecaster 'stacking' is not known to this image \(known: deepar"):
        runtimes.load(Path("/m"), runtimes.LoadOptions(), artifact)  # type: ignore[arg-type]
    assert runtimes.forecaster_of(_artifact("torch", WITH_ONNX)) == "deepar"


@pytest.mark.unit
def test_a_seeded_request_to_an_mxnet_model_is_a_400():
    from sagemaker_deepar.runtimes.mxnet import MxnetRuntime

    runtime = MxnetRuntime(predictor=None, artifact=_artifact("mxnet", WITHOUT_ONNX), why="test")
    with pytest.raises(RequestError, match="configuration.seed: reproducible forecasts need a torch model") as error:
        runtime.sample([{"start": "2020-01-01", "target": [1.0]}], 2, np.random.default_rng(1))
    assert error.value.status == 400


def test_the_seam_and_its_onnx_runtime_import_no_torch_gluonts_or_pandas(torch_model: Path):
    """The serverless function's path: load through the seam (onnx only), sample from a numpy entry, forecast."""
    code = (
        "import logging, sys, numpy as np; from sagemaker_deepar import runtimes; logging.basicConfig(level=20);"
        f"r = runtimes.load({str(torch_model / 'model')!r}, runtimes.LoadOptions('onnx'), only=('onnx',));"
        "s = r.sample([{'start': np.datetime64('2024-01-01T00:00'), 'target': np.ones(30, np.float32)}], 5, None);"
        "assert s.shape[:2] == (1, 5) and s.dtype == np.float32, (s.shape, s.dtype);"
        "r.prewarm(); r.forecast([{'start': '2024-01-01 00:00:00', 'target': [1.0] * 30}]);"
        "print(r.name, sorted(m for m in ('torch', 'gluonts', 'pandas', 'flask', 'mxnet') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "onnx []"
    assert "inference runtime: onnx (network.onnx with onnxruntime)" in result.stderr


def test_a_damaged_onnx_network_falls_back_to_torch_and_says_why(tmp_path: Path, torch_model: Path, caplog):
    from sagemaker_deepar.runtimes.model import Model

    model_dir = tmp_path / "model"
    shutil.copytree(torch_model / "model", model_dir)
    (model_dir / "network.onnx").write_bytes(b"not an onnx graph")
    with caplog.at_level(logging.INFO, logger="sagemaker_deepar.runtimes"):
        model = Model.load(model_dir, max_batch_series=4)
    assert model.runtime == "torch"
    chosen = [r.getMessage() for r in caplog.records if r.getMessage().startswith("inference runtime:")]
    assert len(chosen) == 1 and chosen[0].startswith("inference runtime: torch (GluonTS's torch network; onnx: ")
    assert "network.onnx did not load" in chosen[0]
    # Seeded requests are reproducible through torch's forked generator; unseeded ones keep drawing fresh paths.
    entry = {"start": np.datetime64("2024-01-01T00:00"), "target": np.ones(30, dtype=np.float32)}
    first = model.sample([entry], 8, np.random.default_rng(7))
    assert np.array_equal(first, model.sample([entry], 8, np.random.default_rng(7)))
    assert first.shape == (1, 8, model.prediction_length) and first.dtype == np.float32
    assert not np.array_equal(model.sample([entry], 8), model.sample([entry], 8))
