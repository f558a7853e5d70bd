"""The lightning-free torch loader draws exactly what GluonTS's own predictor draws."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from sagemaker_deepar.runtimes.model import Model
from sagemaker_deepar.serving.codec import parse_instance


def entries(model: Model) -> list[dict]:
    raw = [
        {"start": "2024-01-01 00:00:00", "target": [10.0 + (i % 7) for i in range(40)]},
        {"start": "2024-01-03 05:00:00", "target": []},  # cold start
        {"start": "2024-01-02", "target": [None, 3.0, "NaN", 4.0, 5.0]},
    ]
    pl = model.prediction_length
    out = []
    for i, r in enumerate(raw):
        r = {**r, "cat": [i % 2], "dynamic_feat": [[float(t) for t in range(len(r["target"]) + pl)]]}
        out.append(parse_instance(r, model, f"instances[{i}].").entry)
    return out


def test_same_samples_as_the_gluonts_predictor(feature_model: Path):
    from gluonts.model.predictor import Predictor

    ours = Model.load(feature_model / "model", runtime="torch")
    theirs = Predictor.deserialize(feature_model / "model" / "predictor")
    theirs.prediction_net.model.num_parallel_samples = 50
    data = entries(ours)
    torch.manual_seed(7)
    expected = np.stack([f.samples for f in theirs.predict(data)])
    torch.manual_seed(7)
    got = ours.sample(data, 50)
    assert got.shape == (3, 50, ours.prediction_length)
    # The served loop (fast_sampler) sums the same products in another order: float rounding only.
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_serving_does_not_import_lightning(feature_model: Path):
    code = (
        "import sys; from pathlib import Path; from sagemaker_deepar.runtimes.model import Model; "
        f"Model.load(Path({str(feature_model / 'model')!r}), runtime='torch'); "
        "print('lightning' in sys.modules or 'lightning.pytorch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"
