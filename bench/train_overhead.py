"""Training overhead: our `container/train` vs plain GluonTS on the same data and hyperparameters.

Both run as fresh subprocesses (imports included), alternating, per backend; prints the median wall
times and the ratio (target: ours / plain <= 1.05).

    .venv/bin/python -m bench.train_overhead [--repeats 3] [--backends torch mxnet]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sagemaker_deepar import sample_data
from sagemaker_deepar.contract import split_train_test, write_jsonl

REPO = Path(__file__).resolve().parent.parent

HYPERPARAMETERS = {
    "time_freq": "H",
    "prediction_length": "24",
    "context_length": "72",
    "epochs": "5",
    "num_cells": "40",
    "num_layers": "3",
    "mini_batch_size": "64",
    "num_batches_per_epoch": "50",
    "likelihood": "student-T",
    "seed": "1",
}

# The same job written against GluonTS directly: its own JSON reader, the estimator, serialize.
PLAIN_GLUONTS = r"""
import sys, json, pathlib
from gluonts.dataset.common import FileDataset
hp = json.loads(sys.argv[3])
ds = [dict(e, feat_static_cat=e.pop("cat")) for e in FileDataset(pathlib.Path(sys.argv[1]), freq="h")]
out = pathlib.Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
common = dict(freq="h", prediction_length=int(hp["prediction_length"]), context_length=int(hp["context_length"]),
              num_layers=int(hp["num_layers"]), batch_size=int(hp["mini_batch_size"]), use_feat_static_cat=True,
              cardinality=[20, 5], embedding_dimension=[10, 10])
if hp["backend"] == "torch":
    from gluonts.torch.model.deepar import DeepAREstimator
    common.pop("use_feat_static_cat")
    est = DeepAREstimator(**common, num_feat_static_cat=2, hidden_size=int(hp["num_cells"]), lr=0.001,
                          num_batches_per_epoch=int(hp["num_batches_per_epoch"]),
                          trainer_kwargs=dict(max_epochs=int(hp["epochs"]), accelerator="cpu", logger=False,
                                              enable_progress_bar=False, enable_model_summary=False,
                                              default_root_dir=str(out)))
else:
    from gluonts.mx.model.deepar import DeepAREstimator
    from gluonts.mx.trainer import Trainer
    est = DeepAREstimator(**common, num_cells=int(hp["num_cells"]),
                          trainer=Trainer(epochs=int(hp["epochs"]), num_batches_per_epoch=int(hp["num_batches_per_epoch"]),
                                          learning_rate=0.001, hybridize=True))
est.train(ds).serialize(out)
"""


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--backends", nargs="+", default=["torch", "mxnet"])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        train, _ = split_train_test(sample_data.generate(num_sensors=20, days=60), 24)
        write_jsonl(train, root / "input/data/train/train.json")
        print(
            f"data: {len(train)} series x {len(train[0]['target'])} hourly points; "
            f"{HYPERPARAMETERS['epochs']} epochs x {HYPERPARAMETERS['num_batches_per_epoch']} batches "
            f"of {HYPERPARAMETERS['mini_batch_size']}"
        )
        for backend in args.backends:
            hp = {**HYPERPARAMETERS, "backend": backend}
            (root / "input/config").mkdir(parents=True, exist_ok=True)
            (root / "input/config/hyperparameters.json").write_text(json.dumps(hp))
            env = {**os.environ, "SAGEMAKER_BASE_DIR": str(root), "TRAINING_JOB_NAME": "bench"}
            ours, plain = [], []
            for _ in range(args.repeats):
                for d in ("model", "output", "checkpoints"):
                    subprocess.run(["rm", "-rf", str(root / d)], check=True)
                ours.append(timed([sys.executable, str(REPO / "container/train")], env))
                plain.append(
                    timed(
                        [
                            sys.executable,
                            "-c",
                            PLAIN_GLUONTS,
                            str(root / "input/data/train"),
                            str(root / "plain"),
                            json.dumps(hp),
                        ],
                        env,
                    )
                )
            o, p = statistics.median(ours), statistics.median(plain)
            print(
                f"{backend:6s} ours {o:6.2f} s  plain GluonTS {p:6.2f} s  ratio {o / p:.3f}  "
                f"(runs ours {[round(x, 2) for x in ours]}, plain {[round(x, 2) for x in plain]})"
            )


if __name__ == "__main__":
    main()
