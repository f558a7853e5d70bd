"""`container/train` end to end: data formats, features, likelihoods x backends, metrics, seed, stop/resume."""

from __future__ import annotations

import gzip
import json
import math
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sagemaker_deepar.training.metrics import METRIC_DEFINITIONS

from .conftest import TINY, TRAIN, OptMl, entrypoint_env, run_train, series, standard_job


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-3000:]


def write_parquet(path, records) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(records), path)


def test_every_format_and_the_discovery_rules(opt_ml: OptMl):
    opt_ml.hyperparameters(epochs="1")
    train = opt_ml.root / "input/data/train"
    opt_ml.channel("train", [series()], "a.json")
    opt_ml.channel("train", [series(), series()], "b.jsonl")
    train.joinpath("nested/deeper").mkdir(parents=True)
    train.joinpath("nested/deeper/c.json.gz").write_bytes(gzip.compress((json.dumps(series()) + "\n").encode()))
    write_parquet(train / "nested/d.parquet", [series(), series()])
    write_parquet(train / "part-00000", [series()])  # no extension: Parquet by magic bytes
    train.joinpath("part-00001").write_bytes(gzip.compress((json.dumps(series()) + "\n").encode()))  # gzip magic
    opt_ml.channel("train", [series()], "part-00002")  # plain JSON Lines
    train.joinpath(".hidden.json").write_text("not json")
    train.joinpath("_SUCCESS").write_text("")
    train.joinpath(".tmp").mkdir()
    train.joinpath(".tmp/e.json").write_text("not json")
    opt_ml.channels(train=None)
    assert_ok(run_train(opt_ml))
    assert opt_ml.metadata["training_statistics"]["train"]["num_series"] == 9


def test_content_type_decides_for_unknown_extensions(opt_ml: OptMl):
    opt_ml.hyperparameters(epochs="1")
    write_parquet(opt_ml.root / "input/data/train/export.dat", [series(), series()])
    opt_ml.channels(train="application/x-parquet")
    assert_ok(run_train(opt_ml))
    assert opt_ml.metadata["training_statistics"]["train"]["num_series"] == 2


def test_missing_values_and_statistics(opt_ml: OptMl):
    opt_ml.hyperparameters(epochs="1")
    target = series(n=40)["target"]
    target[3], target[7], target[8] = None, "NaN", None
    opt_ml.channel("train", [{"start": "2024-01-01", "target": target}, series(n=20)])
    opt_ml.channels(train="application/jsonlines")
    result = run_train(opt_ml)
    assert_ok(result)
    stats = opt_ml.metadata["training_statistics"]["train"]
    assert (stats["num_series"], stats["num_observations"], stats["num_missing"]) == (2, 60, 3)
    assert stats["target_min"] == pytest.approx(min(v for v in series(n=40)["target"]), rel=1e-6)
    assert "[train] number of observations: 60, missing values: 3" in result.stderr


def test_auto_cardinality_is_max_plus_one_and_dynamic_feat_is_used(opt_ml: OptMl):
    opt_ml.hyperparameters(epochs="1")
    records = [series(n=40, cat=[c, 1], dynamic_feat=[[float(i % 24) for i in range(40)]]) for c in (0, 5)]
    opt_ml.channel("train", records)
    test = [series(n=46, cat=[5, 0], dynamic_feat=[[float(i % 24) for i in range(46)]])]
    opt_ml.channel("test", test)
    opt_ml.channels(train=None, test=None)
    assert_ok(run_train(opt_ml))
    meta = opt_ml.metadata
    assert meta["cardinality"] == [6, 2] and meta["num_dynamic_feat"] == 1  # ids 0 and 5: six embeddings


def test_ignore_drops_cat_and_dynamic_feat(opt_ml: OptMl):
    opt_ml.hyperparameters(epochs="1", cardinality="ignore", num_dynamic_feat="")
    opt_ml.channel("train", [series(n=30, cat=[3], dynamic_feat=[[1.0] * 30])])
    opt_ml.channels(train=None)
    assert_ok(run_train(opt_ml))
    assert opt_ml.metadata["cardinality"] == [] and opt_ml.metadata["num_dynamic_feat"] == 0


def likelihood_data(likelihood: str) -> list[dict]:
    rng = np.random.default_rng(0)
    if likelihood == "beta":
        targets = [np.clip(0.5 + 0.3 * np.sin(np.arange(60) / 4) + rng.normal(0, 0.05, 60), 0, 1) for _ in range(3)]
    elif likelihood == "negative-binomial":
        targets = [rng.poisson(5 + 3 * np.sin(np.arange(60) / 4) + 3) for _ in range(3)]
    else:
        targets = [10 + 5 * np.sin(np.arange(60) / 4) + rng.normal(0, 1, 60) for _ in range(3)]
    return [{"start": "2024-01-01 00:00:00", "target": [float(v) for v in t]} for t in targets]


@pytest.mark.parametrize("backend", ["torch", "mxnet"])
@pytest.mark.parametrize("likelihood", ["gaussian", "beta", "negative-binomial", "student-T", "deterministic-L1"])
def test_each_likelihood_on_each_backend(opt_ml: OptMl, backend: str, likelihood: str):
    opt_ml.hyperparameters(backend=backend, likelihood=likelihood)
    records = likelihood_data(likelihood)
    opt_ml.channel("train", [{**r, "target": r["target"][:-6]} for r in records])
    opt_ml.channel("test", records)
    opt_ml.channels(train=None, test=None)
    result = run_train(opt_ml)
    assert_ok(result)
    meta = opt_ml.metadata
    assert meta["backend"] == backend and meta["likelihood"] == likelihood
    test_metrics = opt_ml.metrics["test"]
    assert math.isfinite(test_metrics["RMSE"]) and math.isfinite(test_metrics["mean_wQuantileLoss"])
    forecasts = [
        json.loads(line) for line in (opt_ml.root / "output/data/test-forecasts.jsonl").read_text().splitlines()
    ]
    assert len(forecasts) == 3 and all(len(f["mean"]) == 6 for f in forecasts)
    assert_served_distribution(opt_ml, backend, likelihood, [r["target"][:-6] for r in records])


# Laplace's fixed scale in the network's scaled space: ours (torch) is 1, GluonTS mxnet's LaplaceFixedVarianceOutput 0.01.
L1_SCALE = {"torch": 1.0, "mxnet": 0.01}


def assert_served_distribution(opt_ml: OptMl, backend: str, likelihood: str, targets: list[list[float]]) -> None:
    """#23 "Also": the likelihoods told apart by what the served model draws, not by the hyperparameter read
    back from the metadata: each check fails if training ignored ``likelihood`` (the default is student-T).

    First-step draws are exactly the likelihood (later steps mix the sampled past): negative-binomial draws
    are non-negative integers, beta draws lie in [0, 1], deterministic-L1 is a Laplace of fixed scale (its
    interquartile range is 2 ln 2 x that scale x the series' mean |value| over the context), and Gaussian
    tails are light: (q99.5 - q0.5) / IQR is 3.8 for a Gaussian, 6.6 for a Laplace and more for a student-T.
    """
    from sagemaker_deepar.runtimes.model import Model
    from sagemaker_deepar.serving.codec import parse_instance

    model = Model.load(opt_ml.root / "model")
    entries = [
        parse_instance({"start": "2024-01-01 00:00:00", "target": t}, model, f"instances[{i}].").entry
        for i, t in enumerate(targets)
    ]
    draws = model.sample(entries, 4000)[:, :, 0].astype(float)  # (series, samples) at the first step
    q005, q25, q75, q995 = np.quantile(draws, [0.005, 0.25, 0.75, 0.995], axis=1)
    iqr = q75 - q25
    tails = float(np.median((q995 - q005) / np.maximum(iqr, 1e-12)))
    integers = bool(np.all(draws == np.round(draws)))
    context = int(TINY["context_length"])
    scales = np.array([np.mean(np.abs(t[-context:])) for t in targets])
    print(f"{backend} {likelihood}: tails {tails:.2f}, iqr/scale {np.round(iqr / scales, 4)}, integers {integers}")
    if likelihood == "negative-binomial":
        assert integers and draws.min() >= 0
        return
    assert not integers
    if likelihood == "beta":
        assert draws.min() >= 0 and draws.max() <= 1
    elif likelihood == "deterministic-L1":
        expected = 2 * math.log(2) * L1_SCALE[backend]  # the IQR's Monte-Carlo error at 4000 draws: ~3 %
        assert np.allclose(iqr / scales, expected, rtol=0.08), (iqr / scales, expected)
        assert tails > 5.0, tails
    elif likelihood == "gaussian":
        assert tails < 4.6, tails
    elif likelihood == "student-T":
        assert tails > 5.0, tails
        assert draws.min() < 0 or draws.max() > 1, "student-T draws stay in [0, 1] like a beta's"


def independent_scores(test_records: list[dict], forecasts: list[dict], quantiles: list[float], pl: int) -> dict:
    """The built-in's definitions computed by hand from the saved forecasts."""
    actual = np.array([r["target"][-pl:] for r in test_records], dtype=float)
    mean = np.array([f["mean"] for f in forecasts])
    scores = {"RMSE": float(np.sqrt(np.mean((actual - mean) ** 2)))}
    for q in quantiles:
        pred = np.array([f["quantiles"][str(q)] for f in forecasts])
        pinball = np.where(actual >= pred, q * (actual - pred), (1 - q) * (pred - actual))
        scores[f"wQuantileLoss[{q}]"] = float(2 * pinball.sum() / np.abs(actual).sum())
    scores["mean_wQuantileLoss"] = float(np.mean([scores[f"wQuantileLoss[{q}]"] for q in quantiles]))
    return scores


def gluonts_scores(test_records, forecasts, quantiles, pl) -> dict:
    from gluonts.evaluation import Evaluator
    from gluonts.model.forecast import QuantileForecast

    keys = ["mean"] + [str(q) for q in quantiles]
    qf = [
        QuantileForecast(
            np.array([f["mean"]] + [f["quantiles"][str(q)] for q in quantiles]),
            start_date=pd.Period(f["start"], "h"),
            forecast_keys=keys,
        )
        for f in forecasts
    ]
    actuals = [
        pd.DataFrame(
            np.array(r["target"], dtype=float),
            index=pd.period_range(pd.Period(r["start"], "h"), periods=len(r["target"])),
        )
        for r in test_records
    ]
    aggregate, _ = Evaluator(quantiles=quantiles, num_workers=0)(iter(actuals), iter(qf), num_series=len(qf))
    return aggregate


def test_test_metrics_match_an_independent_computation_and_the_regexes(opt_ml: OptMl):
    quantiles = [0.1, 0.5, 0.9]
    opt_ml.hyperparameters(test_quantiles=json.dumps(quantiles))
    records = [series(offset=10 + 3 * i) for i in range(4)]
    opt_ml.channel("train", [{**r, "target": r["target"][:-6]} for r in records])
    opt_ml.channel("test", records)
    opt_ml.channels(train=None, test=None)
    result = run_train(opt_ml)
    assert_ok(result)
    reported = opt_ml.metrics["test"]
    forecasts = [
        json.loads(line) for line in (opt_ml.root / "output/data/test-forecasts.jsonl").read_text().splitlines()
    ]
    by_hand = independent_scores(records, forecasts, quantiles, 6)
    by_gluonts = gluonts_scores(records, forecasts, quantiles, 6)
    for name, value in by_hand.items():
        assert reported[name] == pytest.approx(value, rel=1e-4), name
        assert by_gluonts[name] == pytest.approx(value, rel=1e-4), name

    regexes = {d["Name"]: re.compile(d["Regex"]) for d in METRIC_DEFINITIONS}
    found = {name: [m.group(1) for m in rx.finditer(result.stdout)] for name, rx in regexes.items()}
    assert float(found["test:RMSE"][0]) == pytest.approx(reported["RMSE"])
    assert float(found["test:mean_wQuantileLoss"][0]) == pytest.approx(reported["mean_wQuantileLoss"])
    assert len(found["train:loss"]) == 2 and [float(p) for p in found["train:progress"]] == [50.0, 100.0]
    assert float(found["train:final_loss"][0]) == pytest.approx(min(float(v) for v in found["train:loss"]))
    assert len(found["train:throughput"]) == 2 and all(float(v) > 0 for v in found["train:throughput"])
    assert "#test_score (algo-1, wQuantileLoss[0.5]): " in result.stdout


def test_host_comes_from_resourceconfig_and_job_logs_have_no_readable_lines(opt_ml: OptMl):
    standard_job(opt_ml, with_test=False)
    opt_ml.config("resourceconfig.json", {"current_host": "algo-1-xyz", "hosts": ["algo-1-xyz"]})
    result = subprocess.run(
        [sys.executable, str(TRAIN)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**entrypoint_env(opt_ml.root), "TRAINING_JOB_NAME": "job-1"},
    )
    assert_ok(result)
    assert "#quality_metric: host=algo-1-xyz, epoch=0, train loss <loss>=" in result.stdout
    assert "epoch 1/2" not in result.stderr and "it/s" not in result.stderr
    plain = run_train(opt_ml)
    assert "epoch 1/2: train loss" in plain.stderr


@pytest.mark.parametrize("backend", ["torch", "mxnet"])
def test_seed_makes_runs_reproducible(tmp_path, backend):
    results = []
    for run in ("a", "b"):
        m = OptMl(tmp_path / run)
        standard_job(m, backend=backend, seed="123")
        assert_ok(run_train(m))
        results.append(m.metrics)
    assert results[0]["test"] == results[1]["test"]
    assert results[0]["train"]["final_loss"] == results[1]["train"]["final_loss"]


def test_early_stopping_keeps_the_best_epoch(opt_ml: OptMl):
    # Series too short to hold out a validation window: the train loss picks the epoch (with a window
    # the validation loss does: tests/test_train_validation.py).
    opt_ml.hyperparameters(epochs="40", early_stopping_patience="2", learning_rate="1e-6")
    opt_ml.channel("train", [series(n=20, offset=10 + 3 * i) for i in range(4)])
    opt_ml.channels(train=None)
    result = run_train(opt_ml)
    assert_ok(result)
    train = opt_ml.metrics["train"]
    assert train["epochs_run"] < 40 and train["epochs_run"] - 1 - train["best_epoch"] == 2
    losses = [float(v) for v in re.findall(r"epoch=\d+, train loss <loss>=(\S+)", result.stdout)]
    assert train["final_loss"] == pytest.approx(min(losses))


def read_until(process: subprocess.Popen, pattern: str, timeout: float) -> str:
    seen, deadline = "", time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen += line
        if re.search(pattern, line):
            return seen
    raise AssertionError(f"{pattern!r} not seen in {seen[-2000:]!r}")


@pytest.mark.parametrize("backend", ["torch", "mxnet"])
def test_sigterm_saves_a_model_and_a_rerun_resumes(opt_ml: OptMl, backend: str):
    standard_job(opt_ml, backend=backend, epochs="12", num_batches_per_epoch="20")
    process = subprocess.Popen(
        [sys.executable, str(TRAIN)],
        env=entrypoint_env(opt_ml.root),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        read_until(process, r"epoch=1, train loss", timeout=240)
        sent = time.monotonic()
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=110)
        assert time.monotonic() - sent < 60
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0
    first = opt_ml.metrics["train"]
    assert first["interrupted"] and first["epochs_run"] < 12
    assert (opt_ml.root / "model" / "predictor").is_dir() and opt_ml.metrics["test"] is None
    state = json.loads((opt_ml.root / "checkpoints" / "deepar-checkpoint.json").read_text())
    done = state["epochs_done"]
    assert 1 <= done < 12

    shutil.rmtree(opt_ml.root / "model")
    second = run_train(opt_ml)
    assert_ok(second)
    assert "resuming from checkpoint" in second.stderr
    epochs_logged = [int(e) for e in re.findall(r"epoch=(\d+), train loss", second.stdout)]
    assert epochs_logged[0] == done and epochs_logged[-1] == 11  # continues where it stopped, ends at the last
    assert opt_ml.metrics["test"]["RMSE"] > 0 and not opt_ml.metrics["train"]["interrupted"]


def test_bundled_sample_data_trains(tmp_path):
    from sagemaker_deepar.training import sample_data

    m = OptMl(tmp_path / "opt_ml")
    records = sample_data.generate(num_sensors=2, days=10, with_dynamic_feat=True)
    train, test = sample_data.split_train_test(records, 24)
    m.channel("train", train)
    m.channel("test", test)
    m.channels(train="application/jsonlines", test="application/jsonlines")
    m.hyperparameters(prediction_length="24", context_length="48", epochs="1")
    assert_ok(run_train(m))
    assert m.metadata["cardinality"] == [2, 5] and m.metadata["num_dynamic_feat"] == 1
    assert m.metadata["training_statistics"]["train"]["num_missing"] > 0  # the generator leaves gaps
