"""A faster sampling loop for a trained GluonTS torch ``DeepARModel`` (same network, same weights).

GluonTS's ``DeepARModel.forward`` spends most of a one-series forecast on Python around tiny
tensors, and most of a 100-series forecast on copying: per prediction step it re-copies every
sample path's whole history (context + the longest lag, 793 points for hourly data) to read ~40
lag values, runs ``nn.LSTM`` through its Python wrapper, and builds a ``torch.distributions``
object with argument validation, shape broadcasting and an affine transform just to draw once.

This loop computes the same thing with the samples folded into the batch, as GluonTS does, but:

- the context is encoded by GluonTS's own code (``prepare_rnn_input`` + the model's ``nn.LSTM``),
  so scaling, embeddings, lags and features of the past are exactly GluonTS's;
- every input of the first LSTM layer that does not depend on the sampled path (static features,
  time features and lags that still fall in the observed past) is multiplied by its weights once
  per series and step, before the loop, instead of once per sample path;
- lags that fall on already-sampled steps come from a (paths, prediction_length) buffer through a
  per-step weight matrix, so nothing grows or is copied inside the loop;
- each LSTM layer step is one ``torch.lstm_cell`` call; Student-t and Gaussian draws are written
  with the same primitives (and the same order of random draws) as ``torch.distributions``;
  other likelihoods fall back to GluonTS's distribution object for the draw.

``tests/test_fast_sampler.py`` checks that quantiles match GluonTS's predictor within Monte-Carlo
noise for several likelihoods, with categorical and dynamic features and missing values.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

INPUT_NAMES = ("feat_static_cat", "feat_static_real", "past_time_feat", "past_target",
               "past_observed_values", "future_time_feat")

Draw = Callable[[tuple[Tensor, ...], Tensor], Tensor]


def _draw_student_t(params: tuple[Tensor, ...], scale: Tensor) -> Tensor:
    # torch.distributions.StudentT.rsample: normal first, then chi2 = Gamma(df / 2, rate 0.5).
    df, loc, spread = params
    normal = torch.randn_like(loc)
    chi2 = (torch._standard_gamma(0.5 * df) * 2.0).clamp_min_(torch.finfo(df.dtype).tiny)
    return (loc + spread * normal * torch.rsqrt(chi2 / df)) * scale


def _draw_normal(params: tuple[Tensor, ...], scale: Tensor) -> Tensor:
    loc, spread = params
    return torch.normal(loc, spread) * scale


def _distribution_draw(distr_output) -> Draw:
    """A direct draw for the common likelihoods; GluonTS's distribution object for the rest."""
    name = type(distr_output).__name__
    if name == "StudentTOutput":
        return _draw_student_t
    if name == "NormalOutput":
        return _draw_normal

    def generic(params: tuple[Tensor, ...], scale: Tensor) -> Tensor:
        return distr_output.distribution(params, scale=scale).sample()

    return generic


class FastDeepARSampler:
    """Draws sample paths from a GluonTS torch ``DeepARModel`` in eval mode; call under inference mode."""

    def __init__(self, model) -> None:
        self.model = model
        rnn = model.rnn
        if rnn.bidirectional or getattr(rnn, "proj_size", 0) or not rnn.batch_first:
            raise ValueError("only the unidirectional, batch-first LSTM of GluonTS's DeepARModel is supported")
        self.prediction_length: int = model.prediction_length
        self.lags: list[int] = list(model.lags_seq)  # already "minus one": lag l reads position t - 1 - l
        self.num_layers: int = rnn.num_layers
        self.hidden_size: int = rnn.hidden_size
        self.weights = [(getattr(rnn, f"weight_ih_l{i}").detach(), getattr(rnn, f"weight_hh_l{i}").detach(),
                         getattr(rnn, f"bias_ih_l{i}").detach(), getattr(rnn, f"bias_hh_l{i}").detach())
                        for i in range(self.num_layers)]
        w_ih0, _, b_ih0, b_hh0 = self.weights[0]
        num_lags = len(self.lags)
        self.w_lags = w_ih0[:, :num_lags]  # (4H, lags)
        self.w_features = w_ih0[:, num_lags:]  # (4H, static + time features)
        self.bias0 = b_ih0 + b_hh0
        self.draw = _distribution_draw(model.distr_output)
        # Step k reads the sampled (scaled) value of step k - 1 - l for every lag l < k: fold those
        # lag weights into one (prediction_length, 4H) matrix per step, applied to the path buffer.
        steps = []
        for k in range(self.prediction_length):
            matrix = torch.zeros(self.prediction_length, w_ih0.shape[0])
            for j, lag in enumerate(self.lags):
                if lag <= k - 1:
                    matrix[k - 1 - lag] += self.w_lags[:, j]
            steps.append(matrix.t().contiguous())  # (4H, prediction_length): lstm_cell's w_ih layout
        self.step_lag_weights = steps

    @torch.inference_mode()
    def sample(self, feat_static_cat: Tensor, feat_static_real: Tensor, past_time_feat: Tensor, past_target: Tensor,
               past_observed_values: Tensor, future_time_feat: Tensor, num_samples: int) -> Tensor:
        """Sample paths, shape (series, num_samples, prediction_length), like ``DeepARModel.forward``."""
        model = self.model
        steps = self.prediction_length
        num_series = past_target.shape[0]
        paths = num_series * num_samples

        rnn_input, scale, static_feat = model.prepare_rnn_input(
            feat_static_cat, feat_static_real, past_time_feat, past_target, past_observed_values,
            future_time_feat[:, :1])
        output, (h_context, c_context) = model.rnn(rnn_input)
        first_params = model.param_proj(output[:, -1])

        # Input of the first layer that is the same for every path of a series, for every step.
        scaled_past = past_target / scale  # (series, past_length)
        past_length = scaled_past.shape[1]
        k = torch.arange(steps).unsqueeze(1)
        lag = torch.tensor(self.lags).unsqueeze(0)
        in_past = lag >= k  # (steps, lags): lag l at step k still reads the observed past
        positions = (past_length + k - 1 - lag).clamp(0, past_length - 1)
        past_lags = scaled_past[:, positions] * in_past  # (series, steps, lags)
        features = torch.cat((static_feat.unsqueeze(1).expand(-1, steps, -1), future_time_feat), dim=-1)
        shared_gates = past_lags @ self.w_lags.t() + features @ self.w_features.t() + self.bias0  # (series, steps, 4H)

        repeated_scale = scale.squeeze(-1).repeat_interleave(num_samples)
        hidden = [h.repeat_interleave(num_samples, dim=0) for h in h_context]
        cell = [c.repeat_interleave(num_samples, dim=0) for c in c_context]
        scaled_paths = torch.zeros(paths, steps)
        samples = torch.empty(paths, steps)

        params = tuple(p.repeat_interleave(num_samples) for p in first_params)
        for step in range(steps):
            if step:
                gates = shared_gates[:, step].repeat_interleave(num_samples, dim=0)
                hidden[0], cell[0] = torch.lstm_cell(scaled_paths, (hidden[0], cell[0]),
                                                     self.step_lag_weights[step], self.weights[0][1], gates, None)
                for layer in range(1, self.num_layers):
                    w_ih, w_hh, b_ih, b_hh = self.weights[layer]
                    hidden[layer], cell[layer] = torch.lstm_cell(hidden[layer - 1], (hidden[layer], cell[layer]),
                                                                 w_ih, w_hh, b_ih, b_hh)
                params = model.param_proj(hidden[-1])
            draw = self.draw(params, repeated_scale)
            samples[:, step] = draw
            scaled_paths[:, step] = draw / repeated_scale
        return model.post_process_samples(samples).reshape(num_series, num_samples, steps)


def network_flops(model, num_series: int, num_samples: int) -> float:
    """Multiply-add FLOPs of GluonTS's DeepAR forward pass (context + sampling loop) for one batch.

    Counts the LSTM and projection matrix products the reference implementation performs, so
    GFLOP/s figures compare work done, not the shortcuts taken by this module.
    """
    rnn = model.rnn
    hidden = rnn.hidden_size
    per_step = sum(2 * 4 * hidden * (getattr(rnn, f"weight_ih_l{i}").shape[1] + hidden) for i in range(rnn.num_layers))
    per_step += 2 * hidden * sum(p.out_features for p in model.param_proj.proj)
    context_steps = model.context_length
    return float(num_series * context_steps * per_step + num_series * num_samples * (model.prediction_length - 1) * per_step)
