"""Greedy ensemble selection with replacement (Caruana, Niculescu-Mizil, Crew and Ksikes, ICML 2004).

Start from an empty bag; each round adds the member (again, if it helps) whose addition gives the bag's
average forecast the lowest validation loss. A member's weight is its share of the bag. The bag of the best
round is kept (round one is the best single member, so the ensemble never scores worse on the windows than
its best member). The loss is the mean weighted quantile loss at the job's quantiles, aggregated as GluonTS's
Evaluator does (``metrics.score_forecasts``), on the quantile-averaged forecast the server will give.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ...ensemble import combine
from ..metrics import score_forecasts

ROUNDS = 25


def validation_loss(at_levels: np.ndarray, truth: np.ndarray, levels: Sequence[float]) -> float:
    """mean_wQuantileLoss of (windows, len(levels), steps) quantile forecasts against (windows, steps) truth."""
    quantiles = {float(q): at_levels[:, i, :] for i, q in enumerate(levels)}
    means = np.zeros_like(truth)  # RMSE is not used here
    return score_forecasts(truth, means, quantiles)["mean_wQuantileLoss"]


def greedy_weights(
    members: dict[str, np.ndarray], truth: np.ndarray, levels: Sequence[float], rounds: int = ROUNDS
) -> tuple[dict[str, float], list[float]]:
    """Weights over ``members`` (name -> (windows, GRID levels, steps) quantile functions) and the loss of each
    round's bag. Ties go to the member listed first."""
    if not members:
        raise ValueError("greedy selection needs at least one member")
    names = list(members)
    at = {name: combine.at_levels(combine.monotone(q), levels) for name, q in members.items()}
    counts = dict.fromkeys(names, 0)
    total = np.zeros_like(next(iter(at.values())))
    history: list[tuple[float, dict[str, int]]] = []
    for bag_size in range(1, rounds + 1):
        losses = [validation_loss((total + at[name]) / bag_size, truth, levels) for name in names]
        best = int(np.nanargmin(losses)) if not np.isnan(losses).all() else 0
        counts[names[best]] += 1
        total = total + at[names[best]]
        history.append((float(losses[best]), dict(counts)))
    best_round = min(range(len(history)), key=lambda i: (history[i][0], i))
    chosen = history[best_round][1]
    size = sum(chosen.values())
    return {name: chosen[name] / size for name in names}, [loss for loss, _ in history]
