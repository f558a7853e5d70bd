"""The network as ONNX: exported and checked by ``container/train``, forecast by ``onnx_forecast`` in numpy.

The ONNX predictor must draw from the same distribution as the torch server: on the bundled sample
data, with fixed seeds, its quantiles must differ from the torch sampler's by no more than the
torch sampler differs from itself under another seed (Monte-Carlo noise), with margin; the same
check must fail when the scaling is dropped or one weight of the graph is perturbed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from sagemaker_deepar.contract import ContractError, split_train_test
from sagemaker_deepar.training.sample_data import generate
from tests.conftest import OptMl, run_train

PREDICTION_LENGTH = 24
NUM_SAMPLES = 400
LEVELS = (0.1, 0.5, 0.9)
# Allowed quantile difference, in units of the torch-vs-torch difference under another seed.
NOISE_MARGIN = 3.0


@pytest.fixture(scope="module")
def sample_model(tmp_path_factory) -> Path:
    """The README's network (context 72, 3x40 LSTM, Student-t) on the bundled sample data, briefly trained."""
    root = tmp_path_factory.mktemp("onnx_model")
    m = OptMl(root)
    m.hyperparameters(
        time_freq="H",
        prediction_length=str(PREDICTION_LENGTH),
        context_length="72",
        num_cells="40",
        num_layers="3",
        epochs="1",
        num_batches_per_epoch="5",
        mini_batch_size="32",
    )
    train, _ = split_train_test(generate(num_sensors=2, days=20), PREDICTION_LENGTH)
    m.channel("train", train)
    m.channels(train=None)
    result = run_train(m)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ONNX network written to network.onnx (checked:" in result.stderr + result.stdout
    return root / "model"


def sample_requests() -> list[dict]:
    records = generate(num_sensors=2, days=20, seed=11)
    return [{**r, "target": r["target"][:-PREDICTION_LENGTH]} for r in records[:4]]


def test_train_writes_a_checked_network_and_says_so(sample_model: Path):
    onnx = json.loads((sample_model / "deepar-metadata.json").read_text())["onnx"]
    assert onnx["file"] == "network.onnx" and (sample_model / "network.onnx").stat().st_size > 10_000
    assert onnx["max_abs_error"] <= 1e-4
    assert onnx["time_features"] == ["hour_of_day", "day_of_week", "day_of_month", "day_of_year"]


def test_onnx_forecaster_imports_no_torch_gluonts_pandas_or_flask(sample_model: Path):
    code = (
        "import sys; from sagemaker_deepar.runtimes.onnx_forecast import OnnxForecaster;"
        f"f = OnnxForecaster.load({str(sample_model)!r});"
        "f.forecast([{'start': '2024-01-01 00:00:00', 'target': [1.0] * 30, 'cat': [0, 1]}]);"
        "print(sorted(m for m in ('torch', 'gluonts', 'pandas', 'flask', 'mxnet') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"


def _quantiles(samples: np.ndarray) -> np.ndarray:
    return np.quantile(samples, LEVELS, axis=1)


@dataclass
class TorchReference:
    """The torch server's quantiles (levels, series, steps) and its own Monte-Carlo noise per series."""

    quantiles: np.ndarray
    noise: np.ndarray

    def distance(self, samples: np.ndarray) -> np.ndarray:
        """Per series: the largest quantile difference from torch's, in units of torch's seed-to-seed noise."""
        return self.distance_of_quantiles(_quantiles(samples))

    def distance_of_quantiles(self, quantiles: np.ndarray) -> np.ndarray:
        return np.abs(quantiles - self.quantiles).max(axis=(0, 2)) / self.noise


@pytest.fixture(scope="module")
def torch_reference(sample_model: Path) -> TorchReference:
    import torch

    from sagemaker_deepar.runtimes.model import Model
    from sagemaker_deepar.serving.codec import parse_instance

    torch_model = Model.load(sample_model, runtime="torch")
    entries = [parse_instance(r, torch_model, "").entry for r in sample_requests()]
    torch.manual_seed(0)
    reference = _quantiles(torch_model.sample(entries, NUM_SAMPLES))
    torch.manual_seed(1)
    noise = np.abs(_quantiles(torch_model.sample(entries, NUM_SAMPLES)) - reference).max(axis=(0, 2))
    return TorchReference(reference, noise)


def test_onnx_quantiles_equal_the_torch_servers_within_monte_carlo_noise(
    sample_model: Path, torch_reference: TorchReference
):
    """Both ONNX paths, the function's (OnnxForecaster.forecast) and the server's (Model.sample on parsed entries)."""
    import onnx
    import onnxruntime

    from sagemaker_deepar.runtimes.model import Model
    from sagemaker_deepar.serving.codec import parse_instance

    requests = sample_requests()
    served = Model.load(sample_model)  # the server's default runtime
    assert served.runtime == "onnx"
    forecaster = served.engine.forecaster
    series = [forecaster.parse_instance(r, "") for r in requests]
    entries = [parse_instance(r, served, "").entry for r in requests]

    def distances() -> tuple[float, float]:
        function = forecaster.sample(series, NUM_SAMPLES, np.random.default_rng(0))
        served.engine.rng = np.random.default_rng(0)
        return torch_reference.distance(function).max(), torch_reference.distance(
            served.sample(entries, NUM_SAMPLES)
        ).max()

    function, server = distances()
    assert function <= NOISE_MARGIN and server <= NOISE_MARGIN

    # The check can fail: without the scaling, or with one weight of the graph perturbed.
    forecaster.scaling = False
    assert min(distances()) > NOISE_MARGIN
    forecaster.scaling = True
    graph = onnx.load(str(sample_model / "network.onnx"))
    # Student-t's projections are df, loc, scale: shift loc by one unit of the series' scale.
    (bias,) = [t for t in graph.graph.initializer if t.name == "model.param_proj.proj.1.bias"]
    bias.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(bias) + 1.0, bias.name))
    forecaster.session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    assert min(distances()) > NOISE_MARGIN


def test_a_long_history_gives_the_same_network_inputs_as_its_tail(sample_model: Path):
    """Only the last past_length points reach the network: dropping older ones changes nothing but the age."""
    from sagemaker_deepar.runtimes.onnx_forecast import OnnxForecaster

    forecaster = OnnxForecaster.load(sample_model)
    past = forecaster.past_length
    request = {"start": "2024-01-01 00:00:00", "target": [float(i % 24) for i in range(past + 50)], "cat": [0, 1]}
    long = forecaster.parse_instance(request, "")
    assert long.target.size == past and long.features.shape[1] == past + PREDICTION_LENGTH
    full_age = np.log10(2.0 + np.arange(past + 50 + PREDICTION_LENGTH, dtype=np.float32))
    np.testing.assert_array_equal(long.features[-1], full_age[50:])
    tail = forecaster.parse_instance({**request, "start": "2024-01-03 02:00:00", "target": request["target"][50:]}, "")
    np.testing.assert_array_equal(long.target, tail.target)
    np.testing.assert_array_equal(long.features[:-1], tail.features[:-1])  # calendar features of the same hours


def _mapped_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_served_quantiles_equal_torchs_and_onnx_serving_never_imports_torch(
    sample_model: Path, torch_reference: TorchReference, runtime: str
):
    """Through container/serve (2 workers): the runtime named in the log, torch's libraries mapped in no process
    of an ONNX server (master, workers), and quantiles within Monte-Carlo noise of the torch reference."""
    from tests.conftest import running_server
    from tests.helpers import children, gunicorn_workers

    with running_server(sample_model.parent, SAGEMAKER_MODEL_SERVER_WORKERS="2", DEEPAR_INFERENCE_RUNTIME=runtime) as s:
        body = {
            "instances": sample_requests(),
            "configuration": {
                "num_samples": NUM_SAMPLES,
                "output_types": ["quantiles"],
                "quantiles": ["0.1", "0.5", "0.9"],
            },
        }
        response = s.post(body)
        assert response.status_code == 200, response.text
        workers = gunicorn_workers(s.process.pid)
        masters = [p for p in children(s.process.pid) if b"gunicorn" in Path(f"/proc/{p}/cmdline").read_bytes()]
        maps = {pid: _mapped_libraries(pid) for pid in [*masters, *workers]}
        log = s.output(tail=None)
    assert len(workers) == 2 and len(masters) == 1
    # ONNX: a session per worker, after the fork; torch: the model loaded once, in the master, before it.
    assert log.count(f"inference runtime: {runtime} (") == (2 if runtime == "onnx" else 1), log[-3000:]
    ready = (
        "model loaded (torch backend, onnx"
        if runtime == "onnx"
        else "model ready (loaded before fork) (torch backend, torch"
    )
    assert log.count(ready) == 2, log[-3000:]
    for pid, mapped in maps.items():
        assert ("libtorch_cpu" in mapped) == (runtime == "torch"), f"pid {pid}"
        assert ("onnxruntime" in mapped) == (runtime == "onnx"), f"pid {pid}"
    served = np.asarray(
        [[p["quantiles"][key] for p in response.json()["predictions"]] for key in ("0.1", "0.5", "0.9")]
    )
    assert torch_reference.distance_of_quantiles(served).max() <= NOISE_MARGIN


def test_forecast_answers_like_invocations_and_names_bad_fields(sample_model: Path):
    from sagemaker_deepar.runtimes.onnx_forecast import OnnxForecaster

    forecaster = OnnxForecaster.load(sample_model)
    requests = sample_requests()[:2]
    out = forecaster.forecast(requests, {"num_samples": 50, "output_types": ["mean", "quantiles", "samples"]}, seed=3)
    assert len(out) == 2 and set(out[0]) == {"mean", "quantiles", "samples"}
    assert list(out[0]["quantiles"]) == ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9"]
    assert len(out[0]["mean"]) == PREDICTION_LENGTH and len(out[0]["samples"]) == 50
    assert json.loads(json.dumps(out)) == out  # JSON-ready as it is
    with pytest.raises(ContractError, match=r"instances\[1\]\.cat: required"):
        forecaster.forecast([requests[0], {"start": "2024-01-01 00:00:00", "target": [1.0, 2.0]}])
    with pytest.raises(ContractError, match=r"configuration\.num_samples: 0 is not an integer"):
        forecaster.forecast(requests, {"num_samples": 0})
    with pytest.raises(ContractError, match=r"instances\[0\]\.start: 'yesterday' is not a timestamp"):
        forecaster.forecast([{**requests[0], "start": "yesterday"}])


def test_mxnet_model_records_that_it_has_no_onnx(mxnet_model: Path):
    from sagemaker_deepar.runtimes.onnx_forecast import OnnxForecaster

    onnx = json.loads((mxnet_model / "model" / "deepar-metadata.json").read_text())["onnx"]
    assert onnx["file"] is None and "mxnet backend" in onnx["reason"]
    assert not (mxnet_model / "model" / "network.onnx").exists()
    with pytest.raises(ContractError, match="has no ONNX network"):
        OnnxForecaster.load(mxnet_model / "model")


def test_export_failure_keeps_the_model_and_says_why(tmp_path: Path, feature_model: Path):
    from sagemaker_deepar.runtimes.torch_deepar import TorchDeepAR
    from sagemaker_deepar.training.onnx_export import export_checked

    model = TorchDeepAR(feature_model / "model" / "predictor", batch_size=1).model
    missing = tmp_path / "no-such-folder"
    onnx = export_checked(model, "student-T", "h", missing)  # the exporter cannot write there
    assert onnx["file"] is None and onnx["reason"]
    assert export_checked(model, "beta", "h", tmp_path)["reason"].startswith("likelihood beta has no numpy sampler")
