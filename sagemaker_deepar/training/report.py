"""Accuracy report for forecasts against held-out actuals: tables, scores and one PNG per series.

Shared by local_test.predict (local server) and evaluation.invoke / batch.py (SageMaker
endpoints and batch transform). Needs only numpy, pandas and (for plots) matplotlib, so it also runs
in the SageMaker SDK's environment, which cannot install the container's stack.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import numpy as np

from ..contract import pandas_freq, target_array
from .metrics import score_forecasts

QUANTILES = ("0.1", "0.5", "0.9")


@dataclass
class AccuracyReport:
    """Collects (series, forecast, actuals) and prints the built-in's accuracy metrics."""

    prediction_length: int
    freq: str = "H"
    quantiles: tuple[str, ...] = QUANTILES
    names: list[str] = field(default_factory=list)
    actuals: list[np.ndarray] = field(default_factory=list)
    means: list[np.ndarray] = field(default_factory=list)
    bands: dict[str, list[np.ndarray]] = field(default_factory=dict)
    plots: list[Path] = field(default_factory=list)

    def add(self, name: str, record: dict, prediction: dict, plot_dir: Path | None = None) -> None:
        """One series: ``record`` is the full series, ``prediction`` the answer for its held-out form."""
        self._check(name, prediction)
        actual = target_array(record["target"][-self.prediction_length :])
        self.names.append(name)
        self.actuals.append(actual)
        self.means.append(np.asarray(prediction["mean"], dtype=float))
        for q in self.quantiles:
            self.bands.setdefault(q, []).append(np.asarray(prediction["quantiles"][q], dtype=float))
        if plot_dir is not None:
            plot_dir.mkdir(parents=True, exist_ok=True)
            path = plot_dir / f"{_file_name(name)}.png"
            plot_forecast(
                path,
                record,
                prediction,
                freq=self.freq,
                prediction_length=self.prediction_length,
                title=name,
                quantiles=self.quantiles,
            )
            self.plots.append(path)

    def _check(self, name: str, prediction: dict) -> None:
        if "error" in prediction:
            raise ValueError(f"{name}: the model answered with an error: {prediction['error']}")
        missing = [q for q in self.quantiles if q not in prediction.get("quantiles", {})]
        if "mean" not in prediction or missing:
            raise ValueError(
                f"{name}: the forecast lacks {'mean' if 'mean' not in prediction else 'quantiles ' + ', '.join(missing)}"
            )
        if len(prediction["mean"]) != self.prediction_length:
            raise ValueError(
                f"{name}: forecast has {len(prediction['mean'])} points, expected {self.prediction_length}"
            )

    def scores(self) -> dict[str, float]:
        return score_forecasts(
            np.array(self.actuals), np.array(self.means), {float(q): np.array(v) for q, v in self.bands.items()}
        )

    def series_scores(self) -> list[dict]:
        rows = []
        for i, name in enumerate(self.names):
            one = score_forecasts(
                self.actuals[i][None], self.means[i][None], {float(q): v[i][None] for q, v in self.bands.items()}
            )
            rows.append({"series": name, "RMSE": one["RMSE"], "mean_wQuantileLoss": one["mean_wQuantileLoss"]})
        return rows

    def print(self, out: TextIO = sys.stdout) -> dict:
        """The per-series table and the overall scores; returns them as a dict (for --json-out)."""
        rows = self.series_scores()
        width = max([len("series")] + [len(r["series"]) for r in rows])
        out.write(f"{'series':<{width}}  {'RMSE':>10}  {'wQuantileLoss':>13}\n")
        for r in rows:
            out.write(f"{r['series']:<{width}}  {r['RMSE']:>10.4f}  {r['mean_wQuantileLoss']:>13.4f}\n")
        overall = self.scores()
        out.write(
            f"accuracy over {len(rows)} series x {self.prediction_length} steps: RMSE {overall['RMSE']:.4f}, "
            f"mean_wQuantileLoss {overall['mean_wQuantileLoss']:.4f} (quantiles {', '.join(self.quantiles)})\n"
        )
        if self.plots:
            out.write(f"plots written to {self.plots[0].parent}\n")
        return {"overall": overall, "series": rows, "plots": [str(p) for p in self.plots]}


def plot_forecast(
    path: Path,
    record: dict,
    prediction: dict,
    *,
    freq: str,
    prediction_length: int,
    title: str,
    held_out: bool = True,
    quantiles: tuple[str, ...] = QUANTILES,
) -> None:
    """History (last five horizons), actuals when ``held_out``, mean forecast and the outer quantile band.

    ``held_out``: the record's last ``prediction_length`` points are the actuals the forecast covers;
    otherwise the whole record is history and the forecast follows it.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    target = target_array(record["target"])
    split = len(target) - prediction_length if held_out else len(target)
    index = pd.period_range(pd.Period(record["start"], freq=pandas_freq(freq)), periods=split + prediction_length)
    x = index.to_timestamp()
    shown = max(0, split - 5 * prediction_length)
    fig, ax = plt.subplots(figsize=(10, 3.5))
    ax.plot(x[shown:split], target[shown:split], color="black", lw=1, label="history")
    if held_out:
        ax.plot(x[split:], target[split:], color="black", lw=1, ls="--", label="actual")
    ax.plot(x[split:], prediction["mean"], color="tab:blue", lw=1.5, label="mean forecast")
    low, high = quantiles[0], quantiles[-1]
    band = prediction.get("quantiles", {})
    if low in band and high in band:
        ax.fill_between(
            x[split:],
            band[low],
            band[high],
            color="tab:blue",
            alpha=0.25,
            label=f"p{float(low) * 100:g}-p{float(high) * 100:g}",
        )
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "series"
