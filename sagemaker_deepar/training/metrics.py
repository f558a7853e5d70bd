"""Metric log lines in the built-in DeepAR's format, and test-channel scoring with GluonTS's Evaluator.

The built-in's HPO/CloudWatch regexes (see README) match these lines exactly.
"""

from __future__ import annotations

import logging
import sys
from typing import Iterable, TextIO

import numpy as np

from ..contract import write_jsonl

log = logging.getLogger(__name__)

# The metric definitions a user passes to Estimator(metric_definitions=...): same names as the built-in.
METRIC_DEFINITIONS = [
    {"Name": "test:RMSE", "Regex": r"#quality_metric: host=\S+, test RMSE <loss>=(\S+)"},
    {"Name": "test:mean_wQuantileLoss", "Regex": r"#quality_metric: host=\S+, test mean_wQuantileLoss <loss>=(\S+)"},
    {"Name": "train:final_loss", "Regex": r"#quality_metric: host=\S+, train final_loss <loss>=(\S+)"},
    {"Name": "train:loss", "Regex": r"#quality_metric: host=\S+, epoch=\S+, train loss <loss>=(\S+)"},
    {"Name": "train:progress", "Regex": r"#progress_metric: host=\S+, completed (\S+) %"},
    {"Name": "train:throughput", "Regex": r"#throughput_metric: host=\S+, train throughput=(\S+) records/second"},
]


class MetricLogger:
    """Writes the ``#quality_metric`` / ``#progress_metric`` / ``#test_score`` lines to stdout."""

    def __init__(self, host: str, stream: TextIO | None = None):
        self.host = host
        self.stream = stream or sys.stdout

    def _emit(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()

    def epoch(self, epoch: int, loss: float, progress_percent: float, records_per_second: float) -> None:
        self._emit(f"#quality_metric: host={self.host}, epoch={epoch}, train loss <loss>={loss}")
        self._emit(f"#progress_metric: host={self.host}, completed {progress_percent:.1f} % of epochs")
        self._emit(f"#throughput_metric: host={self.host}, train throughput={records_per_second:.2f} records/second")

    def final_loss(self, loss: float) -> None:
        self._emit(f"#quality_metric: host={self.host}, train final_loss <loss>={loss}")

    def test_scores(self, metrics: dict[str, float], quantiles: Iterable[float]) -> None:
        names = ["RMSE", "mean_wQuantileLoss"] + [wql_name(q) for q in quantiles]
        for name in names:
            self._emit(f"#test_score ({self.host}, {name}): {metrics[name]}")
        for name in ("RMSE", "mean_wQuantileLoss"):
            self._emit(f"#quality_metric: host={self.host}, test {name} <loss>={metrics[name]}")


def wql_name(quantile: float) -> str:
    return f"wQuantileLoss[{quantile}]"


def evaluate_forecasts(test_entries: list[dict], forecasts: list, quantiles: list[float]) -> dict[str, float]:
    """RMSE and weighted quantile losses over the forecast horizon (the withheld last points).

    Uses ``gluonts.evaluation.Evaluator`` so the numbers mean what the built-in's mean.
    """
    import pandas as pd
    from gluonts.evaluation import Evaluator

    def actuals() -> Iterable[pd.DataFrame]:
        for entry in test_entries:
            index = pd.period_range(entry["start"], periods=len(entry["target"]))
            yield pd.DataFrame(entry["target"].astype(np.float64), index=index)

    evaluator = Evaluator(quantiles=quantiles, num_workers=0)
    aggregate, _ = evaluator(actuals(), iter(forecasts), num_series=len(test_entries))
    keys = ["RMSE", "mean_wQuantileLoss"] + [wql_name(q) for q in quantiles]
    return {k: float(aggregate[k]) for k in keys}


def score_forecasts(actuals: np.ndarray, means: np.ndarray, quantiles: dict[float, np.ndarray]) -> dict[str, float]:
    """The built-in's accuracy metrics from (series, step) arrays of actuals, mean and quantile forecasts.

    Aggregated as GluonTS's Evaluator does (what the test channel's metrics mean): RMSE is the root of
    the mean over series of each series' MSE; wQuantileLoss[q] = 2 * sum(pinball_q) / sum(|y|) over
    all points. Missing actuals (NaN) are skipped.
    """
    observed = ~np.isnan(actuals)
    y = np.where(observed, actuals, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        series_mse = ((y - means) ** 2 * observed).sum(axis=1) / observed.sum(axis=1)
    scores = {"RMSE": float(np.sqrt(np.nanmean(series_mse)))}
    denominator = float(np.abs(y).sum())
    for q, forecast in quantiles.items():
        pinball = np.where(y >= forecast, q * (y - forecast), (1 - q) * (forecast - y))
        scores[wql_name(q)] = float(2 * pinball[observed].sum() / denominator) if denominator else float("nan")
    if quantiles:
        scores["mean_wQuantileLoss"] = float(np.mean([scores[wql_name(q)] for q in quantiles]))
    return scores


def write_forecasts(forecasts: list, locations: list[str], quantiles: list[float], path) -> None:
    """One JSON line per test series: where it came from, forecast start, mean and quantiles."""
    write_jsonl(
        (
            {
                "source": location,
                "start": str(forecast.start_date),
                "mean": forecast.mean,
                "quantiles": {str(q): forecast.quantile(q) for q in quantiles},
            }
            for forecast, location in zip(forecasts, locations)
        ),
        path,
    )
