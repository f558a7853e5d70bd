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

from .offline import VIOLATIONS, guard_network, offline_environment
from .v2_local_mode import local_estimator, write_channels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image", required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    args = parser.parse_args()
    offline_environment(args.workdir)
    guard_network()

    from sagemaker.local import LocalSession

    session = LocalSession()
    session.config = {"local": {"local_code": True}}
    _, channels = write_channels(args.workdir / "data", 6)
    estimator = local_estimator(args, session, 2, num_batches_per_epoch=4)
    estimator.fit(channels, logs=True)
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
