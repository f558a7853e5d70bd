"""The served ensemble: each weighted member forecasts the request's series, their quantile functions are
averaged with the artifact's weights, and samples are drawn from the average (``combine``).

Members with weight 0 are not run. A member that fails on one instance (a statsforecast error, too few
observed values) is left out for that instance, the others reweighted, and a log line says so; the response
keeps its shape. When every weighted member fails on an instance, the job's DeepAR network (always in the
artifact, weighted or not) answers it alone.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..contract import ModelArtifact
from . import combine
from .members import DEEPAR, History, LocalMember, MemberFailure, member_from_settings

log = logging.getLogger(__name__)

# DeepAR's samples -> one quantile function per series: (entries, num_samples, rng) -> (series, samples, steps)
DeepARSampler = Callable[[list[Any], int, Optional[np.random.Generator]], np.ndarray]
DEFAULT_DEEPAR_SAMPLES = 100


class EnsembleForecaster:
    def __init__(self, artifact: ModelArtifact, deepar: DeepARSampler):
        if artifact.forecaster != "ensemble" or not artifact.ensemble:
            raise ValueError("not an ensemble artifact (forecaster != 'ensemble')")
        self.prediction_length = artifact.prediction_length
        self.deepar = deepar
        self.weights: dict[str, float] = {}
        self.locals: dict[str, LocalMember] = {}
        self.deepar_samples = DEFAULT_DEEPAR_SAMPLES
        for member in artifact.ensemble["members"]:
            name, weight, settings = member["name"], float(member["weight"]), member.get("settings") or {}
            if name == DEEPAR:
                self.deepar_samples = int(settings.get("num_samples", DEFAULT_DEEPAR_SAMPLES))
            elif weight > 0:
                self.locals[name] = member_from_settings(name, settings)
            if weight > 0:
                self.weights[name] = weight

    @property
    def members(self) -> list[str]:
        """The members this forecaster runs (weight > 0), in the artifact's order."""
        return list(self.weights)

    def prewarm(self, entry: Any) -> None:
        """One forecast of one series: loads statsforecast's and GluonTS's modules before the first request."""
        self.sample([entry], 2, None)

    def sample(self, entries: list[Any], num_samples: int, rng: Optional[np.random.Generator] = None) -> np.ndarray:
        """(series, num_samples, prediction_length) float32 drawn from the combined quantile functions."""
        return combine.sample_paths(self.quantiles(entries, rng), num_samples, rng)

    def quantiles(self, entries: list[Any], rng: Optional[np.random.Generator] = None) -> np.ndarray:
        """The combined quantile functions (series, GRID levels, prediction_length)."""
        shape = (len(entries), len(combine.GRID), self.prediction_length)
        names = self.members
        stacked = np.full((len(names), *shape), np.nan)
        for position, name in enumerate(names):
            if name == DEEPAR:
                stacked[position] = self._deepar_quantiles(entries, rng)
            else:
                stacked[position] = self._local_quantiles(self.locals[name], entries, rng)
        combined, available = combine.weighted_average_available(stacked, [self.weights[n] for n in names])
        alone = np.flatnonzero(~available.any(axis=1))
        if len(alone):
            log.warning(
                "ensemble: every weighted member failed on %d series (e.g. number %d of the batch): DeepAR answers them",
                len(alone),
                int(alone[0]),
            )
            combined[alone] = self._deepar_quantiles([entries[i] for i in alone], rng)
        return combined

    def _deepar_quantiles(self, entries: Sequence[Any], rng: Optional[np.random.Generator]) -> np.ndarray:
        samples = self.deepar(list(entries), self.deepar_samples, rng)
        return combine.monotone(combine.quantiles_from_samples(np.asarray(samples, dtype=np.float64)))

    def _local_quantiles(
        self, member: LocalMember, entries: Sequence[Any], rng: Optional[np.random.Generator]
    ) -> np.ndarray:
        out = np.full((len(entries), len(combine.GRID), self.prediction_length), np.nan)
        for index, entry in enumerate(entries):
            try:
                out[index] = member.quantiles(History(entry["start"], entry["target"]), self.prediction_length, rng)
            except MemberFailure as failure:
                log.warning(
                    "ensemble: member %s failed on series %d of the batch (%s): the other members answer it",
                    member.name,
                    index,
                    failure,
                )
        return out
