"""Training windows for torch DeepAR, sampled and gathered with numpy over the whole dataset.

GluonTS's training loader re-runs its transformation chain (time features over the full series,
age feature, observed-value mask, splitting) in Python for every sampled window. That chain is
what bounds training speed for networks of DeepAR's usual size. Here the series are concatenated
once; window positions are drawn for many series per numpy call; every field of a batch is one
fancy-indexing gather. The batches are identical to GluonTS's (same fields, shapes, dtypes,
values, padding) and, for the same ``np.random`` state, so are the window positions: the draws of
``ExpectedNumInstanceSampler`` are reproduced in the same order. The network and its loss stay
GluonTS's (``DeepARLightningModule``); only ``create_training_data_loader`` changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import pandas as pd
import torch
from gluonts.torch.model.deepar import DeepAREstimator
from gluonts.transform import ExpectedNumInstanceSampler

from ..errors import UserError
from ..runtimes.fast_sampler import INPUT_NAMES

# One numpy call draws at most this many uniforms (memory: 8 bytes each); longer passes are chunked.
MAX_DRAWS_PER_CALL = 1 << 22
# The calendar of time features is precomputed when it is not much larger than the data itself.
MAX_CALENDAR_FACTOR = 4
MIN_CALENDAR_SIZE = 1 << 20

# What the network takes to sample (fast_sampler.INPUT_NAMES), plus the targets its training loss needs.
TRAINING_FIELDS = (*INPUT_NAMES, "future_target", "future_observed_values")


@dataclass(frozen=True)
class WindowSpec:
    """What shapes a training window: GluonTS DeepAR's instance splitter and feature chain."""

    past_length: int  # context_length + max(lags_seq)
    future_length: int  # prediction_length
    freq: str
    time_features: Sequence[Any]  # gluonts.time_feature callables, applied to a PeriodIndex
    dummy_value: float  # distr_output.value_in_support: imputation and padding value


class SeriesTable:
    """All training series concatenated: targets (NaN kept), dynamic features, starts, static cats."""

    def __init__(self, entries: Sequence[dict], spec: WindowSpec, num_cat: int, num_dynamic_feat: int) -> None:
        self.spec = spec
        self.lengths = np.fromiter((len(e["target"]) for e in entries), dtype=np.int64, count=len(entries))
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)
        self.target = (
            np.concatenate([np.asarray(e["target"], dtype=np.float32) for e in entries])
            if entries
            else np.zeros(0, np.float32)
        )
        self.dynamic = (
            np.concatenate([np.asarray(e["feat_dynamic_real"], dtype=np.float32) for e in entries], axis=1).T.copy()
            if num_dynamic_feat > 0
            else None
        )  # (points, features): rows gather contiguously
        # GluonTS sets feat_static_cat to [0] when there is none; AsNumpyArray(dtype=int) makes it int64.
        self.static_cat = (
            np.array([np.asarray(e["feat_static_cat"], dtype=int) for e in entries], dtype=int).reshape(
                len(entries), num_cat
            )
            if num_cat > 0
            else np.zeros((len(entries), 1), dtype=int)
        )
        starts = [pd.Period(e["start"], freq=spec.freq) for e in entries]
        self.start_ordinals = np.fromiter((p.ordinal for p in starts), dtype=np.int64, count=len(entries))
        first = starts[0] if starts else pd.Period("2000-01-01", freq=spec.freq)
        self.ordinal_step = (first + 1).ordinal - first.ordinal  # e.g. 2 for "2h"
        max_length = int(self.lengths.max()) if entries else 0
        # GluonTS's AddAgeFeature: log10(2 + t) computed in float32, identical for every series.
        self.age = np.log10(2.0 + np.arange(max_length, dtype=np.float32))
        self._calendar_origin, self._calendar = self._build_calendar()

    def _build_calendar(self) -> tuple[int, Optional[np.ndarray]]:
        """Time features for every period the data spans, when that span is small (it usually is)."""
        if not len(self.lengths) or not self.spec.time_features:
            return 0, None
        ends = self.start_ordinals + (self.lengths - 1) * self.ordinal_step
        origin, span = int(self.start_ordinals.min()), int(ends.max() - self.start_ordinals.min()) + 1
        if span > max(MAX_CALENDAR_FACTOR * int(self.lengths.sum()), MIN_CALENDAR_SIZE):
            return 0, None
        return origin, self._time_features(origin + np.arange(span, dtype=np.int64))

    def _time_features(self, ordinals: np.ndarray) -> np.ndarray:
        """(len(ordinals), num_time_features) float32, as AddTimeFeatures computes them."""
        index = pd.PeriodIndex.from_ordinals(ordinals, freq=self.spec.freq)
        return np.vstack([feature(index) for feature in self.spec.time_features]).astype(np.float32).T

    def time_features_at(self, ordinals: np.ndarray) -> np.ndarray:
        if self._calendar is not None:
            return self._calendar[ordinals - self._calendar_origin]
        return self._time_features(ordinals.ravel()).reshape(*ordinals.shape, -1)

    @property
    def window_sizes(self) -> np.ndarray:
        """Split points per series, ``InstanceSampler._get_bounds`` with min_past=0, min_future=prediction_length."""
        return self.lengths - self.spec.future_length + 1

    def batch(self, series: np.ndarray, split_points: np.ndarray) -> dict[str, np.ndarray]:
        """The training fields of GluonTS's InstanceSplitter for windows split at ``split_points``."""
        spec = self.spec
        size = len(series)
        window = spec.past_length + spec.future_length
        relative = split_points[:, None] - spec.past_length + np.arange(window)  # position in the series
        pad = relative < 0  # before the series start: GluonTS pads every field with the dummy value
        position = np.maximum(relative, 0)
        flat = self.offsets[series][:, None] + position

        target = self.target[flat]
        missing = np.isnan(target)
        observed = (~missing).astype(np.float32)
        target[missing] = spec.dummy_value
        target[pad] = spec.dummy_value
        observed[pad] = spec.dummy_value

        ordinals = self.start_ordinals[series][:, None] + position * self.ordinal_step
        parts = [self.time_features_at(ordinals)] if spec.time_features else []
        parts.append(self.age[position][..., None])
        if self.dynamic is not None:
            parts.append(self.dynamic[flat])
        time_feat = np.concatenate(parts, axis=-1)
        time_feat[pad] = spec.dummy_value

        past = spec.past_length
        return {
            "feat_static_cat": self.static_cat[series],
            "feat_static_real": np.zeros((size, 1), dtype=np.float32),
            "past_time_feat": time_feat[:, :past],
            "past_target": target[:, :past],
            "past_observed_values": observed[:, :past],
            "future_time_feat": time_feat[:, past:],
            "future_target": target[:, past:],
            "future_observed_values": observed[:, past:],
        }


class ExpectedNumInstanceWindows:
    """``ExpectedNumInstanceSampler(num_instances, min_future)`` over GluonTS's cyclic stream, vectorised.

    GluonTS visits the usable series (those with W > 0 split points) in order, forever; at each visit
    it updates the running mean of W over the visits so far and keeps each split point with
    probability ``num_instances / mean`` (``np.random.random_sample(W) < p``). Drawing the uniforms
    of many consecutive visits in one call consumes ``np.random``'s stream exactly as the per-visit
    calls do, so the same seed gives the same windows.
    """

    def __init__(self, window_sizes: np.ndarray, num_instances: float = 1.0) -> None:
        self.usable = np.flatnonzero(window_sizes > 0)
        if not len(self.usable):
            # GluonTS's own loader would wait forever for a first window here.
            raise UserError(
                "train: no series has at least prediction_length values, so there is no training "
                "window; provide longer series or lower prediction_length"
            )
        self.sizes = window_sizes[self.usable].astype(np.int64)
        self.num_instances = num_instances
        self.next_visit = 0  # also the sampler's n: every visit counts
        self.total_length = 0
        # To rewind the last draw: its first visit, np.random's state before it, total_length before it, sizes.
        self._last_draw: Optional[tuple[int, Any, int, np.ndarray]] = None

    def draw(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The next visits (up to the end of the pass, at most MAX_DRAWS_PER_CALL uniforms, at least one
        visit): (series index, split point, visit number) of each window kept, in stream order."""
        start = self.next_visit % len(self.sizes)
        ends = np.cumsum(self.sizes[start:])
        count = max(int(np.searchsorted(ends, MAX_DRAWS_PER_CALL, side="right")), 1)
        sizes, ends = self.sizes[start : start + count], ends[:count]
        visits = self.next_visit + np.arange(1, count + 1, dtype=np.int64)
        totals = self.total_length + ends
        self._last_draw = (self.next_visit, np.random.get_state(), self.total_length, sizes)
        probability = self.num_instances / (totals.astype(np.float64) / visits.astype(np.float64))
        kept = np.flatnonzero(np.random.random_sample(int(ends[-1])) < np.repeat(probability, sizes))
        owner = np.searchsorted(ends, kept, side="right")
        first_visit = self.next_visit
        self.next_visit, self.total_length = int(visits[-1]), int(totals[-1])
        return self.usable[start + owner], kept - (ends[owner] - sizes[owner]), first_visit + owner

    def resume_after(self, visit: int) -> None:
        """Continue with the visit after ``visit`` (of the last draw), as if no later visit had drawn.

        GluonTS starts every epoch with a new splitter over the same stream: the windows of the
        visit in progress that did not fit into the epoch are dropped, and the next visit draws next.
        """
        assert self._last_draw is not None
        first, state, total_before, sizes = self._last_draw
        used = visit - first + 1
        if used == len(sizes):
            return
        np.random.set_state(state)
        np.random.random_sample(int(sizes[:used].sum()))  # replay the draws of the visits that happened
        self.next_visit, self.total_length = visit + 1, total_before + int(sizes[:used].sum())
        self._last_draw = None


class TrainingBatches:
    """GluonTS's training loader (``IterableSlice`` of batches over an endless window stream), from numpy.

    Every iteration is one epoch of ``num_batches`` full batches of consecutive windows.
    """

    def __init__(
        self,
        table: SeriesTable,
        sampler: ExpectedNumInstanceWindows,
        batch_size: int,
        num_batches: int,
        as_tensor=torch.from_numpy,
    ) -> None:
        self.table, self.sampler = table, sampler
        self.batch_size, self.num_batches = batch_size, num_batches
        self.as_tensor = as_tensor
        self._last_visit: Optional[int] = None  # visit of the last window handed out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        if self._last_visit is not None:  # here, not after the last yield: an epoch may be cut short
            self.sampler.resume_after(self._last_visit)
            self._last_visit = None
        series, points, visits = (np.zeros(0, np.int64),) * 3
        for _ in range(self.num_batches):
            while len(series) < self.batch_size:
                more = self.sampler.draw()
                series, points, visits = (np.concatenate(pair) for pair in zip((series, points, visits), more))
            batch = self.table.batch(series[: self.batch_size], points[: self.batch_size])
            self._last_visit = int(visits[self.batch_size - 1])
            series, points, visits = series[self.batch_size :], points[self.batch_size :], visits[self.batch_size :]
            yield {name: self.as_tensor(np.ascontiguousarray(value)) for name, value in batch.items()}


def window_spec(estimator, module) -> WindowSpec:
    """The WindowSpec of a GluonTS torch DeepAREstimator and its Lightning module."""
    return WindowSpec(
        past_length=module.model._past_length,
        future_length=estimator.prediction_length,
        freq=estimator.freq,
        time_features=list(estimator.time_features),
        dummy_value=float(estimator.distr_output.value_in_support),
    )


class VectorisedDeepAREstimator(DeepAREstimator):
    """GluonTS's torch DeepAREstimator whose training batches come from numpy (see module docstring).

    Validation and prediction keep GluonTS's transformation chain, and the predictor is built by
    GluonTS from the same transformation and module, so serialized models do not change. A training
    sampler other than the default ``ExpectedNumInstanceSampler`` falls back to GluonTS's loader.
    """

    def train_model(self, training_data, *args, **kwargs):
        self._training_entries = training_data  # the raw entries: GluonTS passes the loader a lazy transform
        return super().train_model(training_data, *args, **kwargs)

    def create_training_data_loader(self, data, module, shuffle_buffer_length: Optional[int] = None, **kwargs):
        sampler = self.train_sampler
        if (
            shuffle_buffer_length
            or self.num_feat_static_real > 0
            or type(sampler) is not ExpectedNumInstanceSampler
            or sampler.min_past != 0
            or sampler.min_instances != 0
            or sampler.min_future != self.prediction_length
        ):
            return super().create_training_data_loader(
                data, module, shuffle_buffer_length=shuffle_buffer_length, **kwargs
            )
        table = SeriesTable(
            self._training_entries, window_spec(self, module), self.num_feat_static_cat, self.num_feat_dynamic_real
        )
        windows = ExpectedNumInstanceWindows(table.window_sizes, sampler.num_instances)
        return TrainingBatches(table, windows, self.batch_size, self.num_batches_per_epoch)
