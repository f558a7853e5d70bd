"""Helpers that build temporary /opt/ml trees and run the real entrypoints in subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Optional

import pytest

REPO = Path(__file__).resolve().parent.parent
TRAIN = REPO / "container" / "train"

TINY = {  # a few seconds per run on 2 cores
    "time_freq": "H", "prediction_length": "6", "context_length": "12", "epochs": "2",
    "num_cells": "8", "num_layers": "1", "mini_batch_size": "16", "num_batches_per_epoch": "3",
    "num_eval_samples": "20", "seed": "1",
}


def series(n: int = 60, start: str = "2024-01-01 00:00:00", offset: float = 10.0, **extra: Any) -> dict:
    import math

    return {"start": start, "target": [round(offset + 5 * math.sin(i / 4) + (i % 3), 3) for i in range(n)], **extra}


def write_jsonl(path: Path, records: Iterable[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


@dataclass
class OptMl:
    root: Path

    def config(self, name: str, payload: Any) -> None:
        path = self.root / "input" / "config" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(payload if isinstance(payload, str) else json.dumps(payload))

    def hyperparameters(self, **overrides: Any) -> dict:
        params = {**TINY, **{k: v for k, v in overrides.items() if v is not None}}
        for k in [k for k, v in overrides.items() if v is None]:
            params.pop(k, None)
        self.config("hyperparameters.json", params)
        return params

    def channel(self, name: str, records: Iterable[Any], filename: str = "data.json") -> Path:
        return write_jsonl(self.root / "input" / "data" / name / filename, records)

    def channels(self, **content_types: Optional[str]) -> None:
        self.config("inputdataconfig.json", {
            name: ({"ContentType": ct} if ct else {}) | {"TrainingInputMode": "File"} for name, ct in content_types.items()})

    @property
    def failure(self) -> Optional[str]:
        path = self.root / "output" / "failure"
        return path.read_text() if path.exists() else None

    @property
    def metrics(self) -> dict:
        return json.loads((self.root / "output" / "data" / "metrics.json").read_text())

    @property
    def metadata(self) -> dict:
        return json.loads((self.root / "model" / "deepar-metadata.json").read_text())


@pytest.fixture
def opt_ml(tmp_path: Path) -> OptMl:
    root = tmp_path / "opt_ml"
    root.mkdir()
    return OptMl(root)


def entrypoint_env(root: Path, **extra: str) -> dict:
    env = {**os.environ, "SAGEMAKER_BASE_DIR": str(root), "PYTHONUNBUFFERED": "1", **extra}
    env.pop("TRAINING_JOB_NAME", None)
    return env


def run_train(opt_ml: OptMl, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TRAIN)], env=entrypoint_env(opt_ml.root, **env),
                          capture_output=True, text=True, timeout=timeout)


def standard_job(opt_ml: OptMl, with_test: bool = True, n_series: int = 4, **hyperparameters: Any) -> None:
    opt_ml.hyperparameters(**hyperparameters)
    records = [series(offset=10 + 3 * i, cat=[i % 2]) for i in range(n_series)]
    opt_ml.channel("train", [{**r, "target": r["target"][:-6]} for r in records])
    if with_test:
        opt_ml.channel("test", records)
    opt_ml.channels(train="application/jsonlines", **({"test": "application/jsonlines"} if with_test else {}))
