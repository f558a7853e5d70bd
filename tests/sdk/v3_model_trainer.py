"""SageMaker Python SDK v3: `ModelTrainer` in local-container mode trains with the image.

v3 starts the training container with no command at all; the image's entrypoint trains because
SageMaker wrote resourceconfig.json. Runs in .venv-sdk3 and prints a JSON summary for
tests/test_sagemaker_local.py.

    .venv-sdk3/bin/python tests/sdk/v3_model_trainer.py --image sagemaker-deepar:latest --workdir DIR
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from offline import ROLE, VIOLATIONS, guard_network, offline_environment


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image", required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args()
    offline_environment(args.workdir)
    guard_network()

    from sagemaker.core.local import LocalSession
    from sagemaker.core.training.configs import Compute, InputData
    from sagemaker.train.model_trainer import Mode, ModelTrainer

    train = args.workdir / "data" / "train"
    train.mkdir(parents=True)
    import math

    train.joinpath("train.json").write_text("".join(
        json.dumps({"start": "2024-01-01 00:00:00", "target": [20 + 5 * math.sin(t / 4) + i for t in range(60)]}) + "\n"
        for i in range(3)))
    trainer = ModelTrainer(
        training_image=args.image, training_mode=Mode.LOCAL_CONTAINER, role=ROLE, sagemaker_session=LocalSession(),
        compute=Compute(instance_type="local_cpu", instance_count=1), base_job_name="deepar-v3",
        local_container_root=str(args.workdir / "root"),
        hyperparameters={"time_freq": "H", "prediction_length": 6, "context_length": 12, "epochs": 1,
                         "num_batches_per_epoch": 2, "num_cells": 8, "num_layers": 1, "backend": "mxnet",
                         "test_quantiles": [0.1, 0.9]})
    trainer.train(input_data_config=[InputData(channel_name="train", data_source=str(train))], wait=True, logs=False)
    metadata = json.loads((args.workdir / "root" / "model" / "deepar-metadata.json").read_text())
    print("SUMMARY " + json.dumps({"metadata": metadata, "network_violations": VIOLATIONS,
                                   "model_tar": (args.workdir / "root/compressed_artifacts/model.tar.gz").exists()}))


if __name__ == "__main__":
    sys.exit(main())
