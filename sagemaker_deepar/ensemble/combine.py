"""Quantile functions on one grid of levels, their weighted average, and samples drawn from it (numpy only).

Every member describes its forecast of one series as a quantile function: its values at ``GRID`` levels,
shape (levels, prediction_length). The ensemble's forecast is the weighted average of the members' quantile
functions at each level (Vincentization, or quantile averaging): unlike a mixture of the members' samples,
it keeps the shape of the members' distributions and does not widen the intervals when members disagree
on the location, and it is what greedy selection scores the weights by, so the served forecast is the one the
weights were chosen for. An average of non-decreasing functions is non-decreasing, so the combined
quantiles never cross.

Samples are the combined quantile function evaluated at stratified levels ((i + 0.5) / n, in a random
order): their empirical quantiles reproduce the served quantiles up to the grid's interpolation, and each
path is one level across the whole horizon (a coherent scenario).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import numpy as np

GRID_STEPS = 200
GRID = np.arange(1, GRID_STEPS) / GRID_STEPS  # 0.005, 0.01, ..., 0.995: 199 levels
FloatArray = np.ndarray


def monotone(quantiles: FloatArray) -> FloatArray:
    """Quantile functions made non-decreasing along the level axis (-2): sampling noise can cross them."""
    return np.sort(quantiles, axis=-2)


def quantiles_from_samples(samples: FloatArray) -> FloatArray:
    """(series, samples, steps) -> (series, levels, steps) at GRID."""
    return np.moveaxis(np.quantile(samples, GRID, axis=1), 0, 1)


def weighted_average(quantiles: FloatArray, weights: Sequence[float]) -> FloatArray:
    """Members' quantile functions (members, ..., levels, steps) averaged with ``weights`` (renormalised)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or len(w) != quantiles.shape[0] or w.sum() <= 0 or (w < 0).any():
        raise ValueError(f"weights {list(w)} do not fit {quantiles.shape[0]} member(s)")
    return np.tensordot(w / w.sum(), monotone(quantiles), axes=1)


def at_levels(quantiles: FloatArray, levels: Union[Sequence[float], FloatArray]) -> FloatArray:
    """A quantile function (..., GRID levels, steps) read at other ``levels`` (linear; flat beyond the grid)."""
    u = np.clip(np.asarray(levels, dtype=np.float64), GRID[0], GRID[-1])
    upper = np.clip(np.searchsorted(GRID, u, side="left"), 1, len(GRID) - 1)
    lower = upper - 1
    share = (u - GRID[lower]) / (GRID[upper] - GRID[lower])
    return quantiles[..., lower, :] * (1 - share)[:, None] + quantiles[..., upper, :] * share[:, None]


def mean(quantiles: FloatArray) -> FloatArray:
    """The mean of a distribution given by its quantile function at GRID (the average over levels): the mean
    of the samples ``sample_paths`` draws, so the served mean and the scored one agree."""
    return quantiles.mean(axis=-2)


def sample_paths(quantiles: FloatArray, num_samples: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """(series, levels, steps) -> (series, num_samples, steps) float32 at stratified levels, shuffled."""
    levels = (np.arange(num_samples) + 0.5) / num_samples
    if rng is not None:
        levels = rng.permutation(levels)
    paths = at_levels(quantiles, levels)  # (series, num_samples, steps)
    return np.ascontiguousarray(paths, dtype=np.float32)  # the response encoder writes C-ordered arrays


def weighted_average_available(quantiles: FloatArray, weights: Sequence[float]) -> tuple[FloatArray, FloatArray]:
    """Per series, the weighted average of the members that forecast it (a member's NaN rows are a failure
    on that series): (members, series, levels, steps) -> ((series, levels, steps), (series, members) mask of
    the members used). A series no weighted member forecast is NaN."""
    w = np.asarray(weights, dtype=np.float64)
    available = np.isfinite(quantiles).all(axis=(2, 3)).T & (w > 0)  # (series, members)
    effective = available * w
    totals = effective.sum(axis=1, keepdims=True)
    shares = np.divide(effective, totals, out=np.zeros_like(effective), where=totals > 0)
    filled = np.where(np.isfinite(quantiles), quantiles, 0.0)
    combined = np.einsum("sm,msld->sld", shares, monotone(filled))
    combined[totals[:, 0] <= 0] = np.nan
    return combined, available
