"""Forecast accuracy, rolling origin, over real public series (issue #22 item 6).

Data sets: statsmodels' bundled series (they load offline) at several frequencies, plus the bundled
sample data (``sagemaker_deepar.training.sample_data``):

    co2        weekly   1 series   (Mauna Loa CO2, gaps interpolated)
    elnino     monthly  1 series   (sea surface temperature, 1950-2010)
    macrodata  quarterly 8 series  (US macro series, 1959-2009)
    sunspots   yearly   1 series   (1700-2008)
    nile       yearly   1 series   (1871-1970)
    sample     hourly   25 series  (the bundled synthetic air-quality data, with gaps)

Each data set is cut at rolling origins by the contract's backtest cut (``contract.backtest_cuts``,
``contract.backtest_window``): origin k trains on what precedes window k and is scored on window k.
Trained methods run the real training job (``sagemaker_deepar.training.job.run`` against a temporary
/opt/ml, the in-process equivalent of ``container/train``) with a hyperparameter dict each, and are
scored by the job's own test channel (GluonTS's Evaluator). The peers (statsforecast's SeasonalNaive,
AutoTheta, AutoETS) run directly on the same cut and are scored with ``metrics.score_forecasts`` (the
same aggregation). Per method it prints mean_wQuantileLoss per data set (mean over origins), the
geometric mean over data sets of wQL relative to seasonal naive (fev-bench's aggregate), the spread
over the seeds (max - min) and the fit and predict seconds. ``forecaster=ensemble`` is one more method
entry; its members' rows come from the job's leaderboard.json; a job that refuses it (not merged yet)
is printed as skipped with the trainer's error.

    .venv/bin/python -m bench.accuracy            # quick: 1 origin, 20 epochs, 3 seeds (minutes)
    .venv/bin/python -m bench.accuracy --full     # 3 origins, 100 epochs, 3 seeds
    .venv/bin/python -m bench.accuracy --methods deepar,seasonal_naive --datasets nile,sample
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import math
import os
import signal
import statistics
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np

from bench._paired import Paired, machine
from bench._results import JSON_HELP, Result
from sagemaker_deepar.contract import backtest_cuts, backtest_window

QUANTILES = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
LEVELS = [20, 40, 60, 80]  # central intervals whose ends are QUANTILES (the median is the point forecast)
BASELINE = "seasonal_naive"


@dataclass(frozen=True)
class DataSet:
    name: str
    time_freq: str  # the contract's spelling: yearly is 12M, quarterly 3M
    prediction_length: int
    context_length: int
    season: int
    records: list[dict[str, Any]]


def _filled(values: Any) -> list[float]:
    """A float series with gaps interpolated linearly (ends held): statsmodels' co2 has missing weeks."""
    y = np.asarray(values, dtype=np.float64)
    missing = np.isnan(y)
    if missing.any():
        y[missing] = np.interp(np.flatnonzero(missing), np.flatnonzero(~missing), y[~missing])
    return [round(float(v), 4) for v in y]


def load_datasets() -> list[DataSet]:
    import statsmodels.api as sm

    from sagemaker_deepar.training.sample_data import generate

    co2 = sm.datasets.co2.load_pandas().data["co2"]
    elnino = sm.datasets.elnino.load_pandas().data.drop(columns="YEAR").to_numpy().ravel()
    macro = sm.datasets.macrodata.load_pandas().data
    macro_columns = ["realgdp", "realcons", "realinv", "realgovt", "realdpi", "cpi", "m1", "pop"]
    sunspots = sm.datasets.sunspots.load_pandas().data["SUNACTIVITY"]
    nile = sm.datasets.nile.load_pandas().data["volume"]
    return [
        DataSet("co2", "W", 13, 26, 52, [{"start": str(co2.index[0].date()), "target": _filled(co2)}]),
        DataSet("elnino", "M", 12, 24, 12, [{"start": "1950-01-01", "target": _filled(elnino)}]),
        DataSet(
            "macrodata", "3M", 8, 16, 4, [{"start": "1959-01-01", "target": _filled(macro[c])} for c in macro_columns]
        ),
        DataSet("sunspots", "12M", 10, 20, 1, [{"start": "1700-01-01", "target": _filled(sunspots)}]),
        DataSet("nile", "12M", 10, 20, 1, [{"start": "1871-01-01", "target": _filled(nile)}]),
        DataSet("sample", "H", 24, 48, 24, [{k: r[k] for k in ("start", "target")} for r in generate()]),
    ]


@dataclass(frozen=True)
class Origin:
    """One rolling origin of a data set: histories (the train channel) and their full series up to the end
    of the window (the test channel: its last ``prediction_length`` points are scored)."""

    histories: list[dict[str, Any]]
    tests: list[dict[str, Any]]


def origins(data: DataSet, count: int) -> list[Origin]:
    """``count`` back-to-back windows ending where each series ends, oldest first (the contract's cut)."""
    result = []
    for k in range(count):
        histories, tests = [], []
        for record in data.records:
            cuts = backtest_cuts(len(record["target"]), data.prediction_length, count, data.context_length)
            if len(cuts) < count:
                continue  # too short for this many origins: left out of all of them, so origins compare
            history, truth = backtest_window(record, cuts[k], data.prediction_length)
            histories.append(history)
            tests.append({**history, "target": history["target"] + truth})
        result.append(Origin(histories, tests))
    return result


# ---------------------------------------------------------------- methods


@dataclass
class Score:
    wql: float
    rmse: float
    fit_seconds: float
    predict_seconds: Optional[float]  # None: included in fit_seconds (a training job scores its test channel)
    members: Optional[list[dict[str, Any]]] = None  # leaderboard.json rows, when the job wrote one


class Skipped(Exception):
    """The method could not run here (e.g. a hyperparameter the trainer refuses); the reason is printed."""


def deepar_hyperparameters(data: DataSet, epochs: int, seed: int, extra: dict[str, Any]) -> dict[str, str]:
    """The built-in's defaults: only the required names, plus ``seed`` (ours) and the method's settings."""
    hp = {
        "time_freq": data.time_freq,
        "prediction_length": data.prediction_length,
        "context_length": data.context_length,
        "epochs": epochs,
        "seed": seed,
        **extra,
    }
    return {k: json.dumps(v) if not isinstance(v, str) else v for k, v in hp.items()}


def _write_jsonl(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def run_training_job(hyperparameters: dict[str, str], origin: Origin) -> Score:
    """One training job on this origin, in process, against a temporary /opt/ml; its test channel scores it."""
    from sagemaker_deepar.errors import UserError
    from sagemaker_deepar.paths import SageMakerPaths
    from sagemaker_deepar.training import job

    with tempfile.TemporaryDirectory(prefix="bench-accuracy-") as tmp:
        root = Path(tmp)
        config = root / "input" / "config"
        config.mkdir(parents=True)
        (config / "hyperparameters.json").write_text(json.dumps(hyperparameters))
        channels = {"train": {"ContentType": "application/jsonlines"}, "test": {"ContentType": "application/jsonlines"}}
        (config / "inputdataconfig.json").write_text(json.dumps(channels))
        _write_jsonl(root / "input" / "data" / "train" / "train.json", origin.histories)
        _write_jsonl(root / "input" / "data" / "test" / "test.json", origin.tests)
        started = time.perf_counter()
        sigterm = signal.getsignal(signal.SIGTERM)  # the job installs its own; the bench must stay stoppable
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the job's metric lines
                job.run(SageMakerPaths(root))
        except UserError as error:
            raise Skipped(str(error).splitlines()[0]) from None
        finally:
            signal.signal(signal.SIGTERM, sigterm)
        seconds = time.perf_counter() - started
        output = root / "output" / "data"
        test = json.loads((output / "metrics.json").read_text())["test"]
        leaderboard = output / "leaderboard.json"
        members = json.loads(leaderboard.read_text()) if leaderboard.exists() else None
        return Score(test["mean_wQuantileLoss"], test["RMSE"], seconds, None, members)


def statsforecast_model(name: str, season: int) -> Any:
    from statsforecast.models import AutoETS, AutoTheta, SeasonalNaive

    if name == "seasonal_naive":
        return SeasonalNaive(season_length=season)
    if name == "auto_theta":
        return AutoTheta(season_length=season)
    return AutoETS(season_length=season)


def run_statsforecast(name: str, data: DataSet, origin: Origin) -> Score:
    """statsforecast's model fit per series on the same histories, scored like the test channel."""
    h = data.prediction_length
    means: list[np.ndarray] = []
    quantiles: dict[float, list[np.ndarray]] = {q: [] for q in QUANTILES}
    actuals: list[np.ndarray] = []
    fit = predict = 0.0
    for history, test in zip(origin.histories, origin.tests):
        y = np.asarray(_filled([np.nan if v in (None, "NaN") else v for v in history["target"]]))
        model = statsforecast_model(name, data.season)
        started = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(y)
            middle = time.perf_counter()
            out = model.predict(h, level=LEVELS)
        fit, predict = fit + middle - started, predict + time.perf_counter() - middle
        mean = np.asarray(out["mean"], dtype=np.float64)
        means.append(mean)
        for level in LEVELS:
            quantiles[round(0.5 - level / 200, 2)].append(np.asarray(out[f"lo-{level}"]))
            quantiles[round(0.5 + level / 200, 2)].append(np.asarray(out[f"hi-{level}"]))
        quantiles[0.5].append(mean)
        truth = [np.nan if v in (None, "NaN") else v for v in test["target"][-h:]]
        actuals.append(np.asarray(truth, dtype=np.float64))
    from sagemaker_deepar.training.metrics import score_forecasts

    scores = score_forecasts(np.stack(actuals), np.stack(means), {q: np.stack(v) for q, v in quantiles.items()})
    return Score(scores["mean_wQuantileLoss"], scores["RMSE"], fit, predict)


@dataclass(frozen=True)
class Method:
    name: str
    seeded: bool  # runs once per seed (a network); else once (deterministic)
    run: Callable[[DataSet, Origin, int, argparse.Namespace], Score]


def trained(extra: dict[str, Any]) -> Callable[[DataSet, Origin, int, argparse.Namespace], Score]:
    def run(data: DataSet, origin: Origin, seed: int, args: argparse.Namespace) -> Score:
        return run_training_job(deepar_hyperparameters(data, args.epochs, seed, extra), origin)

    return run


def peer(name: str) -> Callable[[DataSet, Origin, int, argparse.Namespace], Score]:
    def run(data: DataSet, origin: Origin, seed: int, args: argparse.Namespace) -> Score:
        return run_statsforecast(name, data, origin)

    return run


METHODS = [
    Method(BASELINE, False, peer(BASELINE)),
    Method("auto_theta", False, peer("auto_theta")),
    Method("auto_ets", False, peer("auto_ets")),
    Method("deepar", True, trained({})),
    Method("ensemble", True, trained({"forecaster": "ensemble"})),
]


# ---------------------------------------------------------------- aggregation and printing


def geometric_mean(values: list[float]) -> float:
    return math.exp(statistics.fmean(math.log(v) for v in values)) if values else float("nan")


def mean_over_origins(scores: list[Score]) -> Score:
    """wQL and RMSE averaged over the origins, seconds summed (predict None: inside the jobs' seconds)."""
    predict = [s.predict_seconds for s in scores if s.predict_seconds is not None]
    return Score(
        wql=statistics.fmean(s.wql for s in scores),
        rmse=statistics.fmean(s.rmse for s in scores),
        fit_seconds=sum(s.fit_seconds for s in scores),
        predict_seconds=sum(predict) if len(predict) == len(scores) else None,
    )


def member_rows(method: str, scores: list[Score]) -> dict[str, list[float]]:
    """The ensemble's members' test wQL per origin, from the jobs' leaderboard.json."""
    rows: dict[str, list[float]] = {}
    for score in scores:
        for row in score.members or []:
            value = row.get("test_mean_wQuantileLoss")
            if isinstance(value, (int, float)):
                rows.setdefault(f"{method}:{row.get('member')}", []).append(float(value))
    return rows


def run_bench(args: argparse.Namespace, result: Result) -> dict[str, dict[str, dict[int, float]]]:
    """Every method x data set x seed; returns wql[method][dataset][seed] (seed -1: deterministic)."""
    datasets = [d for d in load_datasets() if not args.datasets or d.name in args.datasets]
    methods = [m for m in METHODS if not args.methods or m.name in args.methods]
    wql: dict[str, dict[str, dict[int, float]]] = {}
    skipped: dict[str, str] = {}
    for data in datasets:
        cut = origins(data, args.origins)
        series = len(cut[0].histories)
        print(f"{data.name}: {series} series, {data.time_freq}, prediction_length {data.prediction_length}", flush=True)
        for method in methods:
            if method.name in skipped:
                continue
            for seed in args.seeds if method.seeded else [-1]:
                try:
                    scores = [method.run(data, origin, max(seed, 0), args) for origin in cut]
                except Skipped as refused:
                    skipped[method.name] = str(refused)
                    print(f"  {method.name}: skipped: {refused}", flush=True)
                    break
                summary = mean_over_origins(scores)
                wql.setdefault(method.name, {}).setdefault(data.name, {})[seed] = summary.wql
                for member, values in member_rows(method.name, scores).items():
                    wql.setdefault(member, {}).setdefault(data.name, {})[seed] = statistics.fmean(values)
                predict = summary.predict_seconds
                shown_seed = f" seed {seed}" if seed >= 0 else ""
                print(
                    f"  {method.name}{shown_seed}: wQL {summary.wql:.4f}, RMSE {summary.rmse:.4g}, "
                    f"fit {summary.fit_seconds:.1f} s"
                    + (f", predict {predict:.2f} s" if predict is not None else " (job: fit + test scoring)"),
                    flush=True,
                )
                result.row(
                    method=method.name,
                    dataset=data.name,
                    seed=seed if seed >= 0 else None,
                    origins=args.origins,
                    series=series,
                    mean_wQuantileLoss=summary.wql,
                    RMSE=summary.rmse,
                    fit_seconds=round(summary.fit_seconds, 3),
                    predict_seconds=None if predict is None else round(predict, 3),
                )
    for name, why in skipped.items():
        result.row(method=name, skipped=why)
    return wql


def relative_to_baseline(method: str, per_data: dict[str, dict[int, float]], base: dict[str, float]) -> Paired:
    """One paired round per seed: the method's geometric-mean wQL over the data sets over seasonal naive's
    (equal to the geometric mean of the per-data-set ratios); lower is better."""
    rounds = Paired(f"{method} / seasonal naive, geo-mean wQL over {len(base)} data sets", target="< 1")
    seeds = sorted({seed for values in per_data.values() for seed in values})
    for seed in seeds:
        if all(seed in per_data.get(d, {}) for d in base):
            with contextlib.redirect_stdout(io.StringIO()):  # the rounds are shown in the table's row
                rounds.add(
                    ours=geometric_mean([per_data[d][seed] for d in base]), base=geometric_mean(list(base.values()))
                )
    return rounds


def summarise(wql: dict[str, dict[str, dict[int, float]]], result: Result) -> None:
    """Per method: wQL per data set (median over seeds [spread max - min]), the geometric mean relative to
    seasonal naive (median over seeds [spread]), and the mean seed spread."""
    base = {d: values[-1] for d, values in wql.get(BASELINE, {}).items()}
    print("\nmean_wQuantileLoss per data set: median over seeds [max - min]; relative: geo-mean over seasonal naive")
    print(f"{'method':<26}" + "".join(f"{d:>18}" for d in base) + f"{'relative':>18}")
    headlines = []
    for method, per_data in wql.items():
        cells = []
        for d in base:
            values = list(per_data.get(d, {}).values())
            spread = f" [{max(values) - min(values):.4f}]" if len(values) > 1 else ""
            cells.append(f"{statistics.median(values):.4f}{spread}" if values else "-")
        rounds = relative_to_baseline(method, per_data, base)
        relative = "-"
        if rounds.rounds:
            ratios = rounds.ratios
            relative = f"{rounds.median:.3f}" + (f" [{max(ratios) - min(ratios):.3f}]" if len(ratios) > 1 else "")
            if method != BASELINE:
                headlines.append(rounds)
        print(f"{method:<26}" + "".join(f"{c:>18}" for c in cells) + f"{relative:>18}")
    print()
    for rounds in headlines:
        print(rounds.headline())
        result.headline(rounds)
    for method, per_data in wql.items():
        spreads = [max(v.values()) - min(v.values()) for v in per_data.values() if len(v) > 1]
        if spreads:
            line = (
                f"{method}: seed spread (max - min wQL over the seeds), mean over {len(spreads)} data sets "
                f"{statistics.fmean(spreads):.4f}, largest {max(spreads):.4f}"
            )
            print(line)
            result.figure(f"{method}: mean seed spread of wQL", statistics.fmean(spreads), "wQL", line)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="3 origins and 100 epochs (default: quick profile)")
    parser.add_argument("--origins", type=int, help="rolling origins per data set (quick 1, full 3)")
    parser.add_argument("--epochs", type=int, help="DeepAR epochs (quick 20, full 100)")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds of the trained methods")
    parser.add_argument("--methods", default="", help=f"comma-separated subset of {', '.join(m.name for m in METHODS)}")
    parser.add_argument("--datasets", default="", help="comma-separated subset (co2, elnino, macrodata, ...)")
    parser.add_argument("--json", type=Path, help=JSON_HELP)
    args = parser.parse_args(argv)
    args.origins = args.origins or (3 if args.full else 1)
    args.epochs = args.epochs or (100 if args.full else 20)
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.methods = [m for m in args.methods.split(",") if m]
    args.datasets = [d for d in args.datasets.split(",") if d]
    if args.methods and BASELINE not in args.methods:
        args.methods.append(BASELINE)  # every relative figure needs it
    return args


def main(argv: Optional[list[str]] = None) -> None:
    import sys

    args = parse_args(argv)
    result = Result("accuracy", list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore")  # pandas/torch deprecation notes, once per job
    os.environ.setdefault("TQDM_DISABLE", "1")  # GluonTS's evaluation progress bars
    for name in ("sagemaker_deepar", "lightning.pytorch", "lightning.fabric", "gluonts"):
        logging.getLogger(name).setLevel(logging.ERROR)
    print(machine())
    profile = "full" if args.full else "quick profile (fewer origins and epochs than --full)"
    print(
        f"{profile}: {args.origins} origin(s), DeepAR {args.epochs} epochs, seeds {args.seeds}; "
        "figures from a shared, loaded machine",
        flush=True,
    )
    started = time.perf_counter()
    wql = run_bench(args, result)
    summarise(wql, result)
    print(f"total {time.perf_counter() - started:.0f} s; {machine()}")
    result.write(args.json)


if __name__ == "__main__":
    main()
