"""Training speed: our `container/train` vs plain GluonTS, same data, hyperparameters, network and seed.

Both run as fresh subprocesses, in paired rounds (ours, plain, ours, plain, ...) per backend. Each
measures the same thing the same way: the wall time of every training epoch (Lightning / GluonTS
trainer epoch start to end; ours from its `#throughput_metric` lines), so batches/s = batches run /
summed epoch seconds. Prints each round's ratio ours / plain and, as the headline, the median of the
per-round ratios with its range (target for torch: >= 1.5; bench._paired), each side's last-epoch
train loss and whole-process wall time. Both sides may use every core (the libraries' own threads,
or OMP_NUM_THREADS=N with --threads). With `--accuracy-seeds`, both also train
with a held-out test channel per seed (torch) and report `mean_wQuantileLoss` on it.

    .venv/bin/python -m bench.train_speed [--repeats 3] [--backends torch mxnet] [--accuracy-seeds 1 2 3]
        [--epochs 5] [--batches-per-epoch 50] [--threads N]

`--threads N` sets OMP_NUM_THREADS for both sides: on a machine shared with other jobs, torch's
spinning worker threads otherwise measure the contention more than the training.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench._paired import Paired, machine
from bench.serve_throughput import BENCH_MODEL
from sagemaker_deepar.training import sample_data

REPO = Path(__file__).resolve().parent.parent

HYPERPARAMETERS = {
    **BENCH_MODEL,
    "epochs": "5",
    "mini_batch_size": "64",
    "num_batches_per_epoch": "50",
    "likelihood": "student-T",
}

# The same job written against GluonTS directly: its own JSON reader, the estimator, serialize;
# seeded like our job; epoch times and losses measured as our job measures them.
PLAIN_GLUONTS = r"""
import sys, json, pathlib, random, time
import numpy as np
from gluonts.dataset.common import FileDataset
train_dir, out, hp = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), json.loads(sys.argv[3])
result_file = sys.argv[4]
test_dir = pathlib.Path(sys.argv[5]) if len(sys.argv) > 5 else None
seed = int(hp["seed"])
random.seed(seed); np.random.seed(seed)
read = lambda d: [dict(e, feat_static_cat=e.pop("cat")) for e in FileDataset(d, freq="h")]
ds = read(train_dir)
out.mkdir(parents=True, exist_ok=True)
epoch_seconds, losses = [], []
common = dict(freq="h", prediction_length=int(hp["prediction_length"]), context_length=int(hp["context_length"]),
              num_layers=int(hp["num_layers"]), batch_size=int(hp["mini_batch_size"]), use_feat_static_cat=True,
              cardinality=[20, 5], embedding_dimension=[10, 10], num_parallel_samples=100)
if hp["backend"] == "torch":
    import torch, lightning.pytorch as pl
    from gluonts.torch.model.deepar import DeepAREstimator
    torch.manual_seed(seed)
    class Timer(pl.Callback):
        def on_train_epoch_start(self, trainer, module): self.started = time.perf_counter()
        def on_train_epoch_end(self, trainer, module):
            epoch_seconds.append(time.perf_counter() - self.started)
            losses.append(float(trainer.callback_metrics["train_loss"]))
    common.pop("use_feat_static_cat")
    est = DeepAREstimator(**common, num_feat_static_cat=2, hidden_size=int(hp["num_cells"]), lr=0.001,
                          num_batches_per_epoch=int(hp["num_batches_per_epoch"]),
                          trainer_kwargs=dict(max_epochs=int(hp["epochs"]), accelerator="cpu", logger=False,
                                              enable_progress_bar=False, enable_model_summary=False, deterministic=True,
                                              callbacks=[Timer()], default_root_dir=str(out)))
else:
    import mxnet as mx
    from gluonts.mx.model.deepar import DeepAREstimator
    from gluonts.mx.trainer import Trainer
    from gluonts.mx.trainer.callback import Callback
    mx.random.seed(seed)
    class Timer(Callback):
        def on_train_epoch_start(self, training_network): self.started = time.perf_counter()
        def on_epoch_end(self, epoch_no, epoch_loss, training_network, trainer, best_epoch_info, ctx):
            epoch_seconds.append(time.perf_counter() - self.started)
            losses.append(float(epoch_loss))
            return True
    est = DeepAREstimator(**common, num_cells=int(hp["num_cells"]),
                          trainer=Trainer(epochs=int(hp["epochs"]), learning_rate=0.001, hybridize=True,
                                          num_batches_per_epoch=int(hp["num_batches_per_epoch"]), callbacks=[Timer()]))
predictor = est.train(ds)
predictor.serialize(out)
result = {"epoch_seconds": epoch_seconds, "losses": losses}
if test_dir is not None:
    from gluonts.evaluation import make_evaluation_predictions
    from sagemaker_deepar.training.metrics import evaluate_forecasts
    test = read(test_dir)
    forecasts = list(make_evaluation_predictions(test, predictor, num_samples=100)[0])
    quantiles = [round(0.1 * i, 1) for i in range(1, 10)]
    result["mean_wQuantileLoss"] = evaluate_forecasts(test, forecasts, quantiles)["mean_wQuantileLoss"]
pathlib.Path(result_file).write_text(json.dumps(result))
"""

RUN_TIMEOUT_SECONDS = 1800  # one training process, even on a loaded machine

LOSS_LINE = re.compile(r"#quality_metric: host=\S+, epoch=\S+, train loss <loss>=(\S+)")
THROUGHPUT_LINE = re.compile(r"#throughput_metric: host=\S+, train throughput=(\S+) records/second")


@dataclass
class Run:
    batches_per_second: float
    final_loss: float
    wall_seconds: float
    mean_wql: float = float("nan")


def run_ours(root: Path, env: dict, batches_per_epoch: int, batch_size: int) -> Run:
    for d in ("model", "output", "checkpoints"):
        subprocess.run(["rm", "-rf", str(root / d)], check=True)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(REPO / "container/train")],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_SECONDS,
    )
    wall = time.perf_counter() - start
    log = proc.stdout + proc.stderr
    epoch_seconds = [batches_per_epoch * batch_size / float(x) for x in THROUGHPUT_LINE.findall(log)]
    losses = [float(x) for x in LOSS_LINE.findall(log)]
    metrics = json.loads((root / "output/data/metrics.json").read_text())
    wql = (metrics.get("test") or {}).get("mean_wQuantileLoss", float("nan"))
    return Run(len(epoch_seconds) * batches_per_epoch / sum(epoch_seconds), losses[-1], wall, wql)


def run_plain(root: Path, env: dict, hp: dict, batches_per_epoch: int, with_test: bool) -> Run:
    result_file = root / "plain-result.json"
    cmd = [
        sys.executable,
        "-c",
        PLAIN_GLUONTS,
        str(root / "input/data/train"),
        str(root / "plain"),
        json.dumps(hp),
        str(result_file),
    ] + ([str(root / "input/data/test")] if with_test else [])
    start = time.perf_counter()
    subprocess.run(
        cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=RUN_TIMEOUT_SECONDS
    )
    wall = time.perf_counter() - start
    result = json.loads(result_file.read_text())
    return Run(
        len(result["epoch_seconds"]) * batches_per_epoch / sum(result["epoch_seconds"]),
        result["losses"][-1],
        wall,
        result.get("mean_wQuantileLoss", float("nan")),
    )


def prepare(root: Path, hp: dict, with_test: bool) -> dict:
    (root / "input/config").mkdir(parents=True, exist_ok=True)
    (root / "input/config/hyperparameters.json").write_text(json.dumps(hp))
    if with_test:
        (root / "input/config/inputdataconfig.json").write_text(json.dumps({"train": {}, "test": {}}))
    else:
        (root / "input/config/inputdataconfig.json").write_text(json.dumps({"train": {}}))
    return {**os.environ, "SAGEMAKER_BASE_DIR": str(root), "TRAINING_JOB_NAME": "bench", "PYTHONPATH": str(REPO)}


def median(runs: list[Run], attribute: str) -> float:
    return statistics.median(getattr(r, attribute) for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=["torch", "mxnet"])
    parser.add_argument(
        "--accuracy-seeds",
        nargs="*",
        type=int,
        default=[],
        help="torch: train both per seed with a held-out test channel, compare mean_wQuantileLoss",
    )
    parser.add_argument("--epochs", type=int, default=int(HYPERPARAMETERS["epochs"]))
    parser.add_argument("--batches-per-epoch", type=int, default=int(HYPERPARAMETERS["num_batches_per_epoch"]))
    parser.add_argument("--threads", type=int, help="OMP_NUM_THREADS for both sides (default: the libraries' own)")
    args = parser.parse_args()
    HYPERPARAMETERS.update(epochs=str(args.epochs), num_batches_per_epoch=str(args.batches_per_epoch))
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    batches, batch_size = int(HYPERPARAMETERS["num_batches_per_epoch"]), int(HYPERPARAMETERS["mini_batch_size"])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prediction_length = int(HYPERPARAMETERS["prediction_length"])
        train, test = sample_data.split_train_test(sample_data.generate(num_sensors=20, days=60), prediction_length)
        sample_data.write_jsonl(train, root / "input/data/train/train.json")
        sample_data.write_jsonl(test, root / "input/data/test/test.json")
        print(
            f"data: {len(train)} series x {len(train[0]['target'])} hourly points; "
            f"{HYPERPARAMETERS['epochs']} epochs x {batches} batches of {batch_size}; "
            f"{HYPERPARAMETERS['num_layers']} x {HYPERPARAMETERS['num_cells']} LSTM; median of {args.repeats}; "
            f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')} (both sides: every core)",
            flush=True,
        )
        print(machine(), flush=True)
        for backend in args.backends:
            hp = {**HYPERPARAMETERS, "backend": backend}
            env = prepare(root, hp, with_test=False)
            ours, plain = [], []
            rounds = Paired(
                f"{backend} training ours / plain GluonTS batches/s", ">= 1.5x" if backend == "torch" else ""
            )
            for _ in range(args.repeats):
                ours.append(run_ours(root, env, batches, batch_size))
                plain.append(run_plain(root, env, hp, batches, with_test=False))
                rounds.add(
                    ours[-1].batches_per_second,
                    plain[-1].batches_per_second,
                    f"{ours[-1].batches_per_second:.2f} vs {plain[-1].batches_per_second:.2f} batches/s",
                )
            print(
                f"{backend:6s} final loss ours {median(ours, 'final_loss'):.4f} plain {median(plain, 'final_loss'):.4f}  "
                f"process wall ours {median(ours, 'wall_seconds'):.1f} s plain {median(plain, 'wall_seconds'):.1f} s"
            )
            print(rounds.headline(), flush=True)
        if args.accuracy_seeds:
            ours_wql, plain_wql = [], []
            for seed in args.accuracy_seeds:
                hp = {**HYPERPARAMETERS, "backend": "torch", "seed": str(seed)}
                env = prepare(root, hp, with_test=True)
                o = run_ours(root, env, batches, batch_size)
                p = run_plain(root, env, hp, batches, with_test=True)
                ours_wql.append(o.mean_wql)
                plain_wql.append(p.mean_wql)
                print(
                    f"torch  seed {seed}: test mean_wQuantileLoss ours {o.mean_wql:.4f} plain {p.mean_wql:.4f}; "
                    f"final loss ours {o.final_loss:.4f} plain {p.final_loss:.4f}",
                    flush=True,
                )
            spread = max(plain_wql) - min(plain_wql)
            difference = abs(statistics.mean(ours_wql) - statistics.mean(plain_wql))
            print(
                f"torch  mean_wQuantileLoss mean ours {statistics.mean(ours_wql):.4f} plain "
                f"{statistics.mean(plain_wql):.4f}; |difference| {difference:.4f} vs plain seed-to-seed spread "
                f"{spread:.4f}"
            )


if __name__ == "__main__":
    main()
