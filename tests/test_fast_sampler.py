"""The fast sampling loop draws what GluonTS's DeepARModel draws (same seed), within Monte-Carlo noise.

In-process and quick: networks are built with GluonTS's own ``DeepARModel`` (random weights, hourly
lags up to 721 steps, two categorical features, a dynamic feature, missing values in the past) for
each likelihood; the served path (transformation + fast loop) is checked against GluonTS's predictor
on the trained ``feature_model``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sagemaker_deepar.runtimes.fast_sampler import FastDeepARSampler, network_flops
from sagemaker_deepar.runtimes.model import Model
from sagemaker_deepar.runtimes.torch_deepar import import_deepar_module
from sagemaker_deepar.serving.codec import parse_instance

LEVELS = (0.1, 0.5, 0.9)


def likelihoods():
    from gluonts.torch.distributions import NegativeBinomialOutput, NormalOutput, StudentTOutput

    from sagemaker_deepar.distributions import LaplaceFixedScaleOutput

    return {
        "student-T": StudentTOutput(),
        "gaussian": NormalOutput(),
        "negative-binomial": NegativeBinomialOutput(),
        "deterministic-L1": LaplaceFixedScaleOutput(),
    }


def network(distr_output, seed: int = 0):
    torch.manual_seed(seed)
    model = import_deepar_module().DeepARModel(
        freq="h",
        context_length=24,
        prediction_length=8,
        num_feat_dynamic_real=3,
        num_feat_static_real=1,
        num_feat_static_cat=2,
        cardinality=[3, 2],
        embedding_dimension=[2, 1],
        num_layers=2,
        hidden_size=16,
        distr_output=distr_output,
    )
    with torch.no_grad():  # weights larger than the default init, so lags and features move the forecast
        for p in model.parameters():
            p.mul_(3.0)
    return model.eval()


def inputs(model, num_series: int = 3) -> dict[str, torch.Tensor]:
    """A batch as GluonTS's transformation makes it: imputed zeros where the target is missing."""
    generator = torch.Generator().manual_seed(1)
    past = model._past_length
    steps = torch.arange(past, dtype=torch.float32)
    level = torch.tensor([5.0, 40.0, 0.5]).unsqueeze(1)[:num_series]
    target = (
        level * (1.5 + torch.sin(steps / 24 * 2 * torch.pi)) + torch.rand(num_series, past, generator=generator)
    ).round()
    observed = torch.ones(num_series, past)
    observed[0, -10:-5] = 0.0  # missing values inside the context
    observed[1, : past - 30] = 0.0  # a short series: left-padded history
    target = target * observed
    time_feat = torch.randn(num_series, past + model.prediction_length, 3, generator=generator)
    return {
        "feat_static_cat": torch.tensor([[0, 1], [2, 0], [1, 1]])[:num_series],
        "feat_static_real": torch.zeros(num_series, 1),
        "past_time_feat": time_feat[:, :past],
        "past_target": target,
        "past_observed_values": observed,
        "future_time_feat": time_feat[:, past:],
    }


def assert_same_forecast(fast: np.ndarray, reference: np.ndarray) -> None:
    """Same seed: the draws agree up to float rounding; and the quantiles agree within MC tolerance."""
    assert fast.shape == reference.shape
    assert np.isfinite(fast).all()
    close = np.isclose(fast, reference, rtol=1e-3, atol=1e-3 * np.abs(reference).mean())
    assert close.mean() > 0.99, f"only {close.mean():.2%} of the draws match"
    q_fast = np.quantile(fast, LEVELS, axis=1)
    q_ref = np.quantile(reference, LEVELS, axis=1)
    spread = q_ref[-1] - q_ref[0] + 1e-3 * np.abs(reference).mean()
    # 0.1 x the 10-90 % spread is ~5 standard errors of a quantile estimated from 2,000 draws.
    assert (np.abs(q_fast - q_ref) <= 0.1 * spread).all()


@pytest.mark.parametrize("likelihood", ["student-T", "gaussian", "negative-binomial", "deterministic-L1"])
def test_same_quantiles_as_gluonts_deepar(likelihood: str):
    model = network(likelihoods()[likelihood])
    batch = inputs(model)
    sampler = FastDeepARSampler(model)
    with torch.inference_mode():
        torch.manual_seed(11)
        reference = model(**batch, num_parallel_samples=2000).numpy()
        torch.manual_seed(11)
        fast = sampler.sample(**batch, num_samples=2000).numpy()
    assert_same_forecast(fast, reference)


def test_lags_and_features_reach_the_forecast():
    """Guards the test above: changing a lagged past value or a future feature changes the draws."""
    model = network(likelihoods()["gaussian"])
    sampler = FastDeepARSampler(model)
    batch = inputs(model)
    lagged = {**batch, "past_target": batch["past_target"].clone()}
    lagged["past_target"][:, -168] += 50.0  # one week back: a lag of hourly data, outside the context
    later = {**batch, "future_time_feat": batch["future_time_feat"].clone()}
    later["future_time_feat"][:, -1] += 3.0
    with torch.inference_mode():
        draws = []
        for b in (batch, lagged, later):
            torch.manual_seed(5)
            draws.append(sampler.sample(**b, num_samples=50).numpy())
    assert not np.allclose(draws[0], draws[1])
    np.testing.assert_allclose(draws[0][..., :-1], draws[2][..., :-1], rtol=1e-5)  # only the last step moved
    assert not np.allclose(draws[0][..., -1], draws[2][..., -1])


def test_served_path_matches_the_gluonts_predictor(feature_model: Path):
    """Trained model (student-T, cat, dynamic_feat), transformation included, NaNs and an empty target."""
    from gluonts.model.predictor import Predictor

    ours = Model.load(feature_model / "model", runtime="torch")
    theirs = Predictor.deserialize(feature_model / "model" / "predictor")
    theirs.prediction_net.model.num_parallel_samples = 2000
    pl = ours.prediction_length
    raw = [
        {"start": "2024-01-01 00:00:00", "target": [10.0 + (i % 7) for i in range(40)]},
        {"start": "2024-01-03 05:00:00", "target": []},
        {"start": "2024-01-02", "target": [None, 3.0, "NaN", 4.0, 5.0, None, 7.0]},
    ]
    data = [
        parse_instance(
            {**r, "cat": [i % 2], "dynamic_feat": [[float(t % 24) for t in range(len(r["target"]) + pl)]]},
            ours,
            f"instances[{i}].",
        ).entry
        for i, r in enumerate(raw)
    ]
    torch.manual_seed(7)
    reference = np.stack([f.samples for f in theirs.predict(data)])
    torch.manual_seed(7)
    assert_same_forecast(ours.sample(data, 2000), reference)


def test_network_flops_counts_the_lstm_and_projection():
    model = network(likelihoods()["student-T"])
    per_step = 2 * 4 * 16 * (model.rnn_input_size + 16) + 2 * 4 * 16 * (16 + 16) + 2 * 16 * 3
    assert network_flops(model, 2, 10) == 2 * 24 * per_step + 2 * 10 * 7 * per_step
