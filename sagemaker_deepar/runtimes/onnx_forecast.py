"""DeepAR forecasts from ``network.onnx`` with onnxruntime and numpy: no torch, GluonTS, pandas or Flask.

For an event-driven function whose bundle cannot hold torch. ``OnnxForecaster.load(model_dir)``
reads an extracted ``model.tar.gz`` (``deepar-metadata.json`` + ``network.onnx``, written by the
torch train job, see ``onnx_export``); ``forecast(instances, configuration)`` answers what
``/invocations`` answers per instance.

The loop is GluonTS's ``DeepARModel.forward`` (and the server's ``fast_sampler``) in numpy:
the input transformation (missing values imputed with 0 and marked unobserved, calendar time
features normalised to [-0.5, 0.5], log10 age, dynamic features, left zero-padding to the past
window), mean scaling over the context (with the batch default for unobserved series), lags of
the scaled target, the context encoded once, then ancestral sampling of ``num_samples`` paths with
every path's sampled value fed back through its lags. The graph holds the embeddings, the LSTM and
the distribution-argument projection; numpy draws (other random numbers than torch's, the same
distribution: ``tests/test_onnx.py`` compares quantiles with the torch server's).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import onnxruntime

from ..contract import (
    MAX_ABS_VALUE,
    ONNX_FILE,
    ContractError,
    ModelArtifact,
    parse_configuration,
    parse_time_freq,
    predictions,
    target_array,
)

# ---------------------------------------------------------------- calendar features (GluonTS's, in numpy)

# numpy datetime64 unit of each time_freq unit; weeks are counted in days (W-SUN periods, 7 days each).
_UNITS = {"min": "m", "h": "h", "H": "h", "D": "D", "W": "D", "M": "M"}


def period_index(
    start: str | np.datetime64, unit: str, multiple: int, length: int, where: str, offset: int = 0
) -> np.ndarray:
    """The timestamps pandas' ``PeriodIndex`` reports attributes for: each period's start (its end for weeks).

    Periods ``offset`` to ``offset + length`` after ``start`` (a timestamp string, or a datetime64 parsed before).
    """
    try:
        first = start if isinstance(start, np.datetime64) else np.datetime64(str(start).strip().replace(" ", "T"))
    except ValueError:
        raise ContractError(f"{where}start: {start!r} is not a timestamp (expected YYYY-MM-DD HH:MM:SS)") from None
    steps = offset + np.arange(length)
    if unit == "W":
        day = first.astype("datetime64[D]")
        day = day + (6 - _day_of_week(day)) % 7  # W-SUN: a week is labelled by its Sunday
        return day + steps * 7 * multiple
    base = first.astype(f"datetime64[{_UNITS[unit]}]")
    return base + steps * multiple


def _day_of_week(days: Any) -> Any:
    return (np.asarray(days).astype("datetime64[D]").astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday


def _iso_week(days: np.ndarray) -> np.ndarray:
    weekday = _day_of_week(days) + 1  # Monday 1 .. Sunday 7
    year_start = days.astype("datetime64[Y]")
    day_of_year = (days - year_start.astype("datetime64[D]")).astype(np.int64) + 1
    week = (day_of_year - weekday + 10) // 7

    def weeks_in(year: np.ndarray) -> np.ndarray:
        jan1 = _day_of_week(year.astype("datetime64[D]"))
        years = year.astype(np.int64) + 1970
        leap = (years % 4 == 0) & ((years % 100 != 0) | (years % 400 == 0))
        return np.where((jan1 == 3) | (leap & (jan1 == 2)), 53, 52)

    week = np.where(week < 1, weeks_in(year_start - 1), week)
    return np.where(week > weeks_in(year_start), 1, week)


def time_features(index: np.ndarray, names: list[str]) -> np.ndarray:
    """(len(names), len(index)) float32, as ``gluonts.time_feature`` computes them from a PeriodIndex."""
    minutes = index.astype("datetime64[m]").astype(np.int64)
    days = index.astype("datetime64[D]")
    month_start = days.astype("datetime64[M]")
    year_start = days.astype("datetime64[Y]")
    values = {
        "minute_of_hour": lambda: (minutes % 60) / 59.0,
        "hour_of_day": lambda: (minutes // 60 % 24) / 23.0,
        "day_of_week": lambda: _day_of_week(days) / 6.0,
        "day_of_month": lambda: (days - month_start.astype("datetime64[D]")).astype(np.int64) / 30.0,
        "day_of_year": lambda: (days - year_start.astype("datetime64[D]")).astype(np.int64) / 365.0,
        "month_of_year": lambda: (month_start.astype(np.int64) % 12) / 11.0,
        "week_of_year": lambda: (_iso_week(days) - 1) / 52.0,
    }
    unknown = [name for name in names if name not in values]
    if unknown:
        raise ContractError(f"{ONNX_FILE}: time feature(s) {', '.join(unknown)} have no numpy version")
    rows = [values[name]() - 0.5 for name in names]
    return np.asarray(rows, dtype=np.float32).reshape(len(names), len(index))


# ---------------------------------------------------------------- the forecaster


@dataclass
class Series:
    target: np.ndarray  # float32, NaN where missing
    cat: list[int]
    dynamic_feat: Optional[np.ndarray]  # (features, len(target) + prediction_length)
    features: np.ndarray  # (time features + age + dynamic, len(target) + prediction_length)
    # target holds at most the network's past_length last points; features and dynamic_feat the same ones onwards


class OnnxForecaster:
    def __init__(self, artifact: ModelArtifact, session: onnxruntime.InferenceSession):
        spec = artifact.onnx or {}
        self.artifact = artifact
        self.session = session
        self.prediction_length = artifact.prediction_length
        self.lags = np.asarray(spec["lags"], dtype=np.int64)
        self.past_length = int(spec["past_length"])
        self.context_length = int(spec["context_length"])
        self.scaling = bool(spec["scaling"])
        self.minimum_scale = float(spec["minimum_scale"])
        self.default_scale = spec.get("default_scale")
        self.time_feature_names = list(spec["time_features"])
        self.num_feat_static_real = int(spec["num_feat_static_real"])
        self.nonnegative = bool(spec["nonnegative"])
        self.num_layers = int(spec["num_layers"])
        self.hidden_size = int(spec["hidden_size"])
        self.likelihood = str(spec["likelihood"])
        freq = parse_time_freq(artifact.freq, "deepar-metadata.json: freq")
        self.unit, self.multiple = freq.unit, freq.multiple

    @classmethod
    def load(cls, model_dir: str | Path, threads: int = 0) -> "OnnxForecaster":
        """From an extracted model.tar.gz; ``threads`` = onnxruntime intra-op threads (0: its default)."""
        model_dir = Path(model_dir)
        artifact = ModelArtifact.read(model_dir)
        if not artifact.onnx or not artifact.onnx.get("file"):
            reason = (artifact.onnx or {}).get("reason", "trained before the ONNX export existed")
            raise ContractError(f"{model_dir}: the model has no ONNX network ({reason}); serve it with the container")
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        if threads:  # the graph is one chain: a pool for independent nodes would only add threads
            options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(
            str(model_dir / artifact.onnx["file"]), options, providers=["CPUExecutionProvider"]
        )
        return cls(artifact, session)

    # ------------------------------------------------------------ requests

    def parse_instance(self, raw: Any, where: str) -> Series:
        if not isinstance(raw, dict):
            raise ContractError(f"{where}: expected a JSON object, got {type(raw).__name__}")
        for name in ("start", "target"):
            if name not in raw:
                raise ContractError(f"{where}{name}: missing")
        if not isinstance(raw["target"], list):
            raise ContractError(f'{where}target: expected a list of numbers (null or "NaN" for missing)')
        try:
            target = target_array(raw["target"]).astype(np.float32)
        except (TypeError, ValueError):
            raise ContractError(f'{where}target: expected a list of numbers (null or "NaN" for missing)') from None
        if not target.size:
            raise ContractError(f"{where}target: empty; at least one value is needed")
        problems = self.artifact.features.check(raw, prediction_length=self.prediction_length, where=where)
        if problems:
            raise ContractError(problems[0])
        dynamic = None
        if self.artifact.num_dynamic_feat:
            try:
                dynamic = np.asarray(raw["dynamic_feat"], dtype=np.float32)
            except (TypeError, ValueError):
                raise ContractError(f"{where}dynamic_feat: expected a list of lists of numbers") from None
            if np.isnan(dynamic).any():
                raise ContractError(f"{where}dynamic_feat: missing values are not allowed")
        for name, values in (("target", target), ("dynamic_feat", dynamic)):
            if values is not None and (np.abs(np.nan_to_num(values)) > MAX_ABS_VALUE).any():
                raise ContractError(f"{where}{name}: values beyond {MAX_ABS_VALUE:g} are too large to forecast")
        cat = [int(c) for c in raw["cat"]] if self.artifact.cardinality else None
        return self.series(raw["start"], target, cat, dynamic, where)

    def series(
        self,
        start: str | np.datetime64,
        target: np.ndarray,
        cat: Optional[Sequence[int]],
        dynamic: Optional[np.ndarray],
        where: str = "",
    ) -> Series:
        """The network's inputs for one checked series (the server's entries come here too, see runtimes/onnx.py).

        Only the last ``past_length`` points reach the network: older ones are dropped before the calendar
        features are computed, so a long history costs no more than a short one.
        """
        skip = max(0, target.size - self.past_length)
        length = target.size - skip + self.prediction_length
        index = period_index(start, self.unit, self.multiple, length, where, offset=skip)
        rows = [
            time_features(index, self.time_feature_names),
            # GluonTS's AddAgeFeature(log_scale) counts from the series' first point, dropped or not.
            np.log10(2.0 + np.arange(skip, skip + length, dtype=np.float32))[None, :],
        ]
        if dynamic is not None:
            dynamic = np.asarray(dynamic, dtype=np.float32)[:, skip:]
            rows.append(dynamic)
        return Series(
            target=np.asarray(target[skip:], dtype=np.float32),
            cat=[int(c) for c in cat] if cat is not None and len(cat) else [0],
            dynamic_feat=dynamic,
            features=np.concatenate(rows).astype(np.float32),
        )

    # ------------------------------------------------------------ sampling

    def _run(self, lags, time_feat, cats, reals, log_scale, h, c):
        return self.session.run(
            None,
            {
                "lags": lags.astype(np.float32, copy=False),
                "time_feat": time_feat.astype(np.float32, copy=False),
                "feat_static_cat": cats,
                "feat_static_real": reals,
                "log_scale": log_scale,
                "h0": h,
                "c0": c,
            },
        )

    def _draw(self, args: np.ndarray, scale: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One value per path from the domain-mapped arguments (paths, n_args), times the series' scale."""
        if self.likelihood == "student-T":
            df, loc, spread = args[:, 0], args[:, 1], args[:, 2]
            return (loc + spread * rng.standard_t(df)) * scale
        if self.likelihood == "gaussian":
            return rng.normal(args[:, 0], args[:, 1]) * scale
        if self.likelihood == "deterministic-L1":
            return (args[:, 0] + rng.laplace(0.0, 1.0, size=args.shape[0])) * scale
        raise ContractError(f"{ONNX_FILE}: likelihood {self.likelihood} has no numpy sampler")

    def sample(self, series: list[Series], num_samples: int, rng: np.random.Generator) -> np.ndarray:
        """Sample paths, shape (series, num_samples, prediction_length), float32."""
        steps, past, context = self.prediction_length, self.past_length, self.context_length
        batch = len(series)
        num_features = series[0].features.shape[0]
        past_target = np.zeros((batch, past), dtype=np.float32)
        observed = np.zeros((batch, past), dtype=np.float32)
        past_time = np.zeros((batch, past, num_features), dtype=np.float32)
        future_time = np.empty((batch, steps, num_features), dtype=np.float32)
        for row, s in enumerate(series):
            n = min(s.target.size, past)  # longer series: the last `past` points; shorter: zero-padded left
            window = s.target[-n:]
            past_target[row, past - n :] = np.nan_to_num(window, nan=0.0)
            observed[row, past - n :] = ~np.isnan(window)
            past_time[row, past - n :] = s.features[:, s.target.size - n : s.target.size].T
            future_time[row] = s.features[:, s.target.size :].T
        scale = self._scale(past_target[:, -context:], observed[:, -context:])  # (batch, 1)
        scaled = past_target / scale
        cats = np.asarray([s.cat for s in series], dtype=np.int64)
        reals = np.zeros((batch, self.num_feat_static_real), dtype=np.float32)
        log_scale = np.log(scale).astype(np.float32)

        # Context: position i reads target lags at past - context - lag + i and time features one step ahead.
        positions = past - context + np.arange(context)[:, None] - self.lags[None, :]
        lags = scaled[:, positions]  # (batch, context, lags)
        time_feat = np.concatenate((past_time[:, past - context + 1 :], future_time[:, :1]), axis=1)
        zeros = np.zeros((self.num_layers, batch, self.hidden_size), dtype=np.float32)
        args, h, c = self._run(lags, time_feat, cats, reals, log_scale, zeros, zeros)

        paths = batch * num_samples
        repeated_scale = np.repeat(scale[:, 0], num_samples)
        buffer = np.zeros((paths, past + steps), dtype=np.float32)  # scaled past, then the sampled steps
        buffer[:, :past] = np.repeat(scaled, num_samples, axis=0)
        h, c = np.repeat(h, num_samples, axis=1), np.repeat(c, num_samples, axis=1)
        cats, reals = np.repeat(cats, num_samples, axis=0), np.repeat(reals, num_samples, axis=0)
        log_scale = np.repeat(log_scale, num_samples, axis=0)
        step_args = np.repeat(args[:, -1], num_samples, axis=0)
        samples = np.empty((paths, steps), dtype=np.float32)
        for k in range(steps):
            if k:
                step_lags = buffer[:, past + k - 1 - self.lags][:, None, :]
                step_time = np.repeat(future_time[:, k : k + 1], num_samples, axis=0)
                out, h, c = self._run(step_lags, step_time, cats, reals, log_scale, h, c)
                step_args = out[:, -1]
            draw = self._draw(step_args.astype(np.float64), repeated_scale, rng)
            samples[:, k] = draw
            buffer[:, past + k] = draw / repeated_scale
        if self.nonnegative:
            np.maximum(samples, 0.0, out=samples)
        return samples.reshape(batch, num_samples, steps)

    def _scale(self, context: np.ndarray, observed: np.ndarray) -> np.ndarray:
        """GluonTS's MeanScaler over the context window (NOPScaler when scaling is off)."""
        if not self.scaling:
            return np.ones((context.shape[0], 1), dtype=np.float32)
        total = np.abs(context * observed).sum(axis=1, keepdims=True)
        count = observed.sum(axis=1, keepdims=True)
        scale = total / np.maximum(count, 1.0)
        if self.default_scale is None:
            default = total.sum() / max(float(count.sum()), 1.0)
        else:
            default = float(self.default_scale)
        scale = np.where(count > 0, scale, default)
        return np.maximum(scale, self.minimum_scale).astype(np.float32)

    # ------------------------------------------------------------ the interface

    def forecast(
        self, instances: list[dict], configuration: dict | None = None, seed: Optional[int] = None
    ) -> list[dict]:
        """One prediction object per instance, as ``/invocations`` returns them; ContractError names the place."""
        if not isinstance(instances, list) or not instances:
            raise ContractError("instances: expected a non-empty list of time series")
        config = parse_configuration(configuration)
        series = [self.parse_instance(raw, f"instances[{i}].") for i, raw in enumerate(instances)]
        seed = config.seed if seed is None else seed  # the argument wins over configuration.seed
        samples = self.sample(series, config.num_samples, np.random.default_rng(seed))
        bad = np.flatnonzero(~np.isfinite(samples.reshape(len(series), -1)).all(axis=1))
        if bad.size:
            raise ContractError(
                f"instances[{int(bad[0])}].target: the forecast overflowed float32 (values too large in "
                "magnitude); rescale the series"
            )
        return [_as_lists(item) for item in predictions(samples, config)]


def _as_lists(value: Any) -> Any:
    """JSON-ready values (the server's encoder takes numpy arrays; a function returns plain objects)."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {key: _as_lists(item) for key, item in value.items()}
    return value
