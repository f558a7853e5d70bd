"""The ensemble's part of a training job: windows before any epoch, then every member scored, the weights
chosen (forecaster=ensemble) and the leaderboard written.

DeepAR's validation score (forecaster=ensemble): the network trains on the training series without their
validation region (each series ends at its oldest window's cut) and forecasts every window conditioning on
the history before it; the served model is that network, conditioning on the full history of each request.
Refitting it per window would multiply the training time; training it twice (once without the region for
its score, once on everything to serve) would double it, against the goal of at most 1.5x a DeepAR-only job.
With forecaster=deepar the network trains on everything (today's model), so it has no validation score.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from ...ensemble import combine
from ...ensemble.members import DEEPAR, MEMBERS, LocalMember, local_members
from ..hyperparameters import DeepARHyperparameters
from .backtest import (
    MAX_BACKTEST_SERIES,
    MemberRun,
    Window,
    as_forecasts,
    evaluate,
    run_deepar,
    run_local,
    test_windows,
    training_view,
)
from .backtest import validation_windows as carve_windows
from .leaderboard import Row
from .selection import greedy_weights

log = logging.getLogger(__name__)

ENSEMBLE = "ensemble"
COMBINATION = "quantile_average"


def min_history(params: DeepARHyperparameters) -> int:
    """Points a window's history keeps: one DeepAR training window (the truncated series still trains)."""
    return params.context_length + params.prediction_length


def prepare(params: DeepARHyperparameters, entries: Sequence[dict[str, Any]]) -> list[Window]:
    """The validation windows, carved before any epoch (a ClientError now when forecaster=ensemble has none).

    forecaster=deepar carves none: its network trains on the validation region, so no score there would compare
    with the members'; its leaderboard compares everyone on the test channel instead."""
    if params.forecaster != ENSEMBLE:
        return []
    return carve_windows(entries, params.prediction_length, params.backtest_windows, min_history(params), True)


def deepar_entries(params: DeepARHyperparameters, entries: list[dict[str, Any]], windows: Sequence[Window]) -> list:
    """What the network trains on: the series without their validation region in ensemble mode."""
    if params.forecaster != ENSEMBLE:
        return entries
    log.info(
        "forecaster=ensemble: DeepAR trains on the training series without their %d validation window(s) "
        "(scored there, served on the full history)",
        len(windows),
    )
    return training_view(entries, windows)


def local_runs(
    time_freq: str, prediction_length: int, seed: Optional[int], windows: Sequence[Window], tests: Sequence[Window]
) -> tuple[dict[str, MemberRun], dict[str, MemberRun]]:
    """Every local member on the validation windows and on the test windows: (validation runs, test runs)."""
    rng = np.random.default_rng(seed)
    locals_ = local_members(time_freq)
    validation = {m.name: run_local(m, windows, prediction_length, rng) for m in locals_} if windows else {}
    test = {m.name: run_local(m, tests, prediction_length, rng) for m in locals_} if tests else {}
    return validation, test


def _exit_with_parent(parent: int) -> None:
    """In the members' process: end when the job's process is gone (even SIGKILLed), never outlive it."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _local_runs_to_file(args: tuple, path: str, parent: int) -> None:
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    runs = local_runs(*args)
    partial = f"{path}.partial"
    with open(partial, "wb") as out:
        pickle.dump(runs, out)
    os.replace(partial, path)


class BackgroundLocalRuns:
    """``local_runs`` in one spawned process while DeepAR trains: the members' fits cost little wall time where
    the network leaves a core idle (small batches). If the process cannot start or fails, the same work runs
    in this process after training.

    Spawned, not forked: the parent has torch's thread pools; the child imports only numpy, statsforecast and
    GluonTS's NPTS. A plain daemon process (no executor threads in the job): a job that stops terminates it,
    and it ends by itself if the job's process disappears."""

    def __init__(self, params: DeepARHyperparameters, windows: Sequence[Window], tests: Sequence[Window]):
        self.args = (params.time_freq, params.prediction_length, params.seed, list(windows), list(tests))
        self.process: Any = None
        self.folder: Optional[str] = None
        if not windows and not tests:
            return
        try:
            import multiprocessing

            self.folder = tempfile.mkdtemp(prefix="deepar-members-")
            self.process = multiprocessing.get_context("spawn").Process(
                target=_local_runs_to_file,
                args=(self.args, os.path.join(self.folder, "runs.pickle"), os.getpid()),
                name="deepar-members",
                daemon=True,
            )
            self.process.start()
        except Exception as error:  # e.g. no semaphores: the same work runs in this process after training
            log.warning("the members' backtests could not start beside training (%s): they run after it", error)
            self.close()

    def result(self) -> tuple[dict[str, MemberRun], dict[str, MemberRun]]:
        started = time.perf_counter()
        if self.process is not None and self.folder is not None:
            self.process.join()
            path = os.path.join(self.folder, "runs.pickle")
            if self.process.exitcode == 0 and os.path.exists(path):
                with open(path, "rb") as source:
                    runs = pickle.load(source)  # written by our own child process, never input
                log.info(
                    "the local members' forecasts ran beside training; %.1f s waited for them after it",
                    time.perf_counter() - started,
                )
                self.close()
                return runs
            log.warning("the members' process failed (exit code %s): running them here", self.process.exitcode)
        self.close()
        return local_runs(*self.args)

    def close(self) -> None:
        """Stop the process if it still runs (a job that ends early must not wait for the members); clean up."""
        if self.process is not None and self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
            if self.process.is_alive():
                self.process.kill()
        self.process = None
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)
            self.folder = None


def start_local_runs(
    params: DeepARHyperparameters, windows: Sequence[Window], test_entries: Optional[Sequence[dict[str, Any]]]
) -> BackgroundLocalRuns:
    """Before training: the local members' work that does not depend on the network, in the background."""
    tests = test_windows(test_entries, params.prediction_length) if test_entries else []
    if len(tests) > MAX_BACKTEST_SERIES:
        tests = []  # scored after selection (weighted members only), see score_members
    return BackgroundLocalRuns(params, windows, tests)


@dataclass
class Outcome:
    rows: list[Row]
    weights: dict[str, float]
    ensemble: Optional[dict[str, Any]]  # ModelArtifact.ensemble (forecaster=ensemble), else None
    test_metrics: Optional[dict[str, float]] = None  # the served ensemble's (forecaster=ensemble)
    test_forecasts: list[Any] = field(default_factory=list)  # GluonTS forecasts of the test channel, if scored


def _score(windows: Sequence[Window], run: MemberRun, levels: Sequence[float]) -> Optional[dict[str, float]]:
    if not windows or not run.complete:
        return None
    return evaluate(windows, run.quantiles, levels)


def score_members(
    params: DeepARHyperparameters,
    predictor: Any,
    windows: Sequence[Window],
    test_entries: Optional[Sequence[dict[str, Any]]],
    local: BackgroundLocalRuns,
    deepar_fit_seconds: float,
    deepar_test_metrics: Optional[dict[str, float]] = None,
) -> Outcome:
    """Every member on the validation windows (forecaster=ensemble) and the test channel, the weights, the
    leaderboard rows. ``local``: the local members' runs started before training.

    ``deepar_test_metrics``: forecaster=deepar's test metrics, computed as today (``training.evaluate_test``).
    """
    levels = list(params.test_quantiles)
    ensemble_mode = params.forecaster == ENSEMBLE
    locals_ = {m.name: m for m in local_members(params.time_freq)}
    validation, test_runs = local.result()
    notes: dict[str, str] = {}
    if ensemble_mode:
        validation[DEEPAR] = run_deepar(predictor, windows, params.num_eval_samples)
    else:
        notes[DEEPAR] = "no validation score: forecaster=deepar trains on the validation region"
    for name, run in validation.items():
        if not run.complete:
            notes[name] = f"weight 0: {run.failure}"
            log.warning("member %s: %s; it gets weight 0 in this job", name, run.failure)
    val_scores = {name: _score(windows, run, levels) for name, run in validation.items()}
    if ensemble_mode:
        candidates = {name: validation[name].quantiles for name in MEMBERS if val_scores.get(name)}
        if not candidates:
            raise RuntimeError("every ensemble member failed on the validation windows")  # DeepAR never fails here
        truth = np.stack([w.truth for w in windows])
        chosen, losses = greedy_weights(candidates, truth, levels)
        log.info("greedy ensemble selection: validation mean_wQuantileLoss by round %s", [round(x, 4) for x in losses])
        weights = {name: chosen.get(name, 0.0) for name in MEMBERS}
    else:
        weights = {name: (1.0 if name == DEEPAR else 0.0) for name in MEMBERS}

    test_scores: dict[str, Optional[dict[str, float]]] = {}
    outcome_metrics, outcome_forecasts = None, []
    if test_entries:
        tests = test_windows(test_entries, params.prediction_length)
        if not test_runs:  # more test series than the backtests take: the weighted local members only, now
            for name, member in locals_.items():
                if ensemble_mode and weights[name] > 0:
                    test_runs[name] = run_local(
                        member, tests, params.prediction_length, np.random.default_rng(params.seed)
                    )
                else:
                    notes.setdefault(name, f"not scored on the test channel (more than {MAX_BACKTEST_SERIES} series)")
        if ensemble_mode:
            test_runs[DEEPAR] = run_deepar(predictor, tests, params.num_eval_samples)
        for name, run in test_runs.items():
            test_scores[name] = evaluate(tests, run.quantiles, levels) if run.complete else None
            if not run.complete:
                notes.setdefault(name, f"test channel: {run.failure}")
        if not ensemble_mode:
            test_scores[DEEPAR] = deepar_test_metrics
        else:
            used = [name for name in MEMBERS if weights[name] > 0]
            stacked = np.stack([test_runs[name].quantiles for name in used])
            combined, available = combine.weighted_average_available(stacked, [weights[n] for n in used])
            fell_back = np.flatnonzero(~available.all(axis=1))
            if len(fell_back):
                log.warning(
                    "test channel: %d series forecast without a failed member (the others reweighted), e.g. series %d",
                    len(fell_back),
                    int(tests[fell_back[0]].series),
                )
            alone = np.flatnonzero(~available.any(axis=1))
            if len(alone):  # every weighted member failed there: DeepAR answers, as the server does
                combined[alone] = run_deepar(predictor, [tests[i] for i in alone], params.num_eval_samples).quantiles
            outcome_metrics = evaluate(tests, combined, levels)
            outcome_forecasts = as_forecasts(tests, combined, levels)

    rows = []
    for name in MEMBERS:
        val = val_scores.get(name)
        test = test_scores.get(name)
        member_run = validation.get(name)
        rows.append(
            Row(
                member=name,
                weight=weights[name],
                validation_mean_wQuantileLoss=val["mean_wQuantileLoss"] if val else None,
                test_mean_wQuantileLoss=test["mean_wQuantileLoss"] if test else None,
                test_RMSE=test["RMSE"] if test else None,
                fit_seconds=round(deepar_fit_seconds, 3) if name == DEEPAR else 0.0,
                predict_seconds=member_run.seconds if member_run else None,
                validation_windows=len(windows) if val else 0,
                served=not ensemble_mode and name == DEEPAR,
                note=notes.get(name),
            )
        )
    artifact_ensemble = None
    if ensemble_mode:
        rows.append(
            Row(
                member=ENSEMBLE,
                weight=None,
                validation_mean_wQuantileLoss=_ensemble_validation(validation, weights, windows, levels),
                test_mean_wQuantileLoss=outcome_metrics["mean_wQuantileLoss"] if outcome_metrics else None,
                test_RMSE=outcome_metrics["RMSE"] if outcome_metrics else None,
                validation_windows=len(windows),
                served=True,
                note="weights: " + ", ".join(f"{n} {w:.2f}" for n, w in weights.items() if w > 0),
            )
        )
        artifact_ensemble = artifact_section(weights, locals_, params)
    return Outcome(rows, weights, artifact_ensemble, outcome_metrics, outcome_forecasts)


def _ensemble_validation(
    validation: dict[str, MemberRun], weights: dict[str, float], windows: Sequence[Window], levels: Sequence[float]
) -> Optional[float]:
    used = [name for name, w in weights.items() if w > 0]
    combined = combine.weighted_average(np.stack([validation[n].quantiles for n in used]), [weights[n] for n in used])
    return evaluate(windows, combined, levels)["mean_wQuantileLoss"]


def artifact_section(weights: dict[str, float], locals_: dict[str, LocalMember], params: DeepARHyperparameters) -> dict:
    """``ModelArtifact.ensemble``: how the served model combines its members (weight-0 members listed, not run)."""
    members = []
    for name in MEMBERS:
        settings = locals_[name].settings if name in locals_ else {"num_samples": params.num_eval_samples}
        members.append({"name": name, "weight": round(weights[name], 6), "settings": settings})
    return {"combination": COMBINATION, "grid_steps": combine.GRID_STEPS, "members": members}


def timed(seconds_since: float) -> float:
    return round(time.perf_counter() - seconds_since, 3)


def deepar_only_rows(training_seconds: float, test_metrics: Optional[dict[str, float]]) -> list[Row]:
    """The leaderboard of a job stopped before its members were scored: the network alone."""
    return [
        Row(
            member=DEEPAR,
            weight=1.0,
            test_mean_wQuantileLoss=(test_metrics or {}).get("mean_wQuantileLoss"),
            test_RMSE=(test_metrics or {}).get("RMSE"),
            fit_seconds=round(training_seconds, 3),
            served=True,
            note="the job was stopped before the members were scored",
        )
    ]


def artifact_fields(params: DeepARHyperparameters, outcome: Optional[Outcome]) -> dict[str, Any]:
    """``forecaster`` and ``ensemble`` of the ModelArtifact (an ensemble stopped before selection: DeepAR alone)."""
    if params.forecaster != ENSEMBLE:
        return {"forecaster": "deepar"}
    if outcome is None or outcome.ensemble is None:
        weights = {name: float(name == DEEPAR) for name in MEMBERS}
        return {
            "forecaster": ENSEMBLE,
            "ensemble": artifact_section(weights, {m.name: m for m in local_members(params.time_freq)}, params),
        }
    return {"forecaster": ENSEMBLE, "ensemble": outcome.ensemble}
