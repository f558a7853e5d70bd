"""The SageMaker Python SDK v2 in local mode trains on two hosts (``instance_count=2``): one docker
network, host names ``algo-<i>-<random>``, one shared ``/opt/ml/model``. Prints the containers' output
and a JSON summary for tests/test_sagemaker_local.py.

    .venv-sdk/bin/python -m tests.sdk.v2_multihost --image sagemaker-deepar:multihost --workdir DIR

No AWS traffic: fake credentials, telemetry opted out, the loopback-only connection guard.
"""

from __future__ import annotations

import argparse
import json
import tarfile
from pathlib import Path

from sagemaker_deepar.contract import METADATA_FILE, ModelArtifact

from .offline import ROLE, VIOLATIONS, guard_network, offline_environment
from .v2_local_mode import series, write_lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image", required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args()
    offline_environment(args.workdir)
    guard_network()

    from sagemaker.estimator import Estimator
    from sagemaker.local import LocalSession

    session = LocalSession()
    session.config = {"local": {"local_code": True}}
    data = args.workdir / "data"
    full = [series(i, 60) for i in range(6)]
    write_lines(data / "test" / "test.json", full)
    write_lines(data / "train" / "train.json", [{**r, "target": r["target"][:-6]} for r in full])
    estimator = Estimator(
        image_uri=args.image,
        role=ROLE,
        instance_count=2,
        instance_type="local",
        sagemaker_session=session,
        output_path=f"file://{args.workdir / 'output'}",
        hyperparameters={
            "time_freq": "H",
            "prediction_length": 6,
            "context_length": 12,
            "epochs": 2,
            "num_cells": 8,
            "num_layers": 1,
            "num_batches_per_epoch": 4,
            "mini_batch_size": 16,
            "seed": 1,
        },
    )
    estimator.fit({"train": f"file://{data / 'train'}", "test": f"file://{data / 'test'}"}, logs=True)
    summary: dict = {}
    with tarfile.open(estimator.model_data.removeprefix("file://")) as tar:
        summary["model_files"] = sorted(tar.getnames())
        artifact = ModelArtifact.from_bytes(tar.extractfile(METADATA_FILE).read())
    summary["train"] = artifact.train
    summary["test_metrics"] = artifact.test_metrics
    summary["network_violations"] = VIOLATIONS
    print("SUMMARY " + json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
