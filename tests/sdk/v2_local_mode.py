"""The SageMaker Python SDK v2 in local mode drives the image: fit -> deploy -> predict -> invoke_endpoint
-> batch transform -> delete. Runs in its own environment (.venv-sdk: the SDK needs numpy >= 1.26,
the container's stack pins 1.23) and prints a JSON summary for tests/test_sagemaker_local.py.

    .venv-sdk/bin/python -m tests.sdk.v2_local_mode --image sagemaker-deepar:latest --workdir DIR

No AWS traffic: fake credentials, telemetry opted out, and a guard that fails on any connection
that is not to loopback or a unix socket.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

from sagemaker_deepar.contract import METADATA_FILE, ModelArtifact

from .offline import ROLE, VIOLATIONS, guard_network, offline_environment


def write_lines(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def series(i: int, n: int) -> dict:
    import math

    return {
        "start": "2024-01-01 00:00:00",
        "target": [round(20 + 5 * math.sin(t / 4) + i, 3) for t in range(n)],
        "item_id": f"s{i}",
    }


# The small network both local-mode scripts train (seconds per epoch); each adds its own settings.
SMALL_NETWORK = {
    "time_freq": "H",
    "prediction_length": 6,
    "context_length": 12,
    "epochs": 2,
    "num_cells": 8,
    "num_layers": 1,
    "mini_batch_size": 16,
    "seed": 1,
}


def write_channels(data: Path, num_series: int) -> tuple[list[dict], dict[str, str]]:
    """The series, and fit()'s channels: test holds them whole, train without the last 6 points."""
    full = [series(i, 60) for i in range(num_series)]
    write_lines(data / "test" / "test.json", full)
    write_lines(data / "train" / "train.json", [{**r, "target": r["target"][:-6]} for r in full])
    return full, {"train": f"file://{data / 'train'}", "test": f"file://{data / 'test'}"}


def local_estimator(args: argparse.Namespace, session: Any, instance_count: int, **hyperparameters: Any) -> Any:
    """An SDK v2 Estimator of ``args.image`` in local mode, writing under ``args.workdir``."""
    from sagemaker.estimator import Estimator

    return Estimator(
        image_uri=args.image,
        role=ROLE,
        instance_count=instance_count,
        instance_type="local",
        sagemaker_session=session,
        output_path=f"file://{args.workdir / 'output'}",
        hyperparameters={**SMALL_NETWORK, **hyperparameters},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image", required=True)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    offline_environment(args.workdir)
    guard_network()

    from sagemaker.deserializers import JSONDeserializer
    from sagemaker.local import LocalSession
    from sagemaker.serializers import JSONSerializer

    session = LocalSession()
    session.config = {"local": {"local_code": True, "serving_port": args.port}}
    full, channels = write_channels(args.workdir / "data", 4)
    summary: dict = {}
    estimator = local_estimator(
        args, session, 1, num_batches_per_epoch=3, test_quantiles=[0.1, 0.5, 0.9], early_stopping_patience=5
    )
    estimator.fit(channels, logs=False)
    model_data = estimator.model_data.removeprefix("file://")
    with tarfile.open(model_data) as tar:
        summary["model_files"] = sorted(tar.getnames())
        artifact = ModelArtifact.from_bytes(tar.extractfile(METADATA_FILE).read())
    summary["test_metrics"] = artifact.test_metrics
    summary["hyperparameters"] = artifact.hyperparameters

    predictor = estimator.deploy(1, "local", serializer=JSONSerializer(), deserializer=JSONDeserializer(), wait=False)
    try:
        deadline = time.monotonic() + 180
        import urllib.request

        while time.monotonic() < deadline:
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{args.port}/ping", timeout=2).status == 200:
                    break
            except OSError:
                time.sleep(0.5)
        body = {
            "instances": [{"start": r["start"], "target": r["target"]} for r in full[:2]],
            "configuration": {"num_samples": 20, "output_types": ["mean", "quantiles"], "quantiles": ["0.5"]},
        }
        summary["predict"] = predictor.predict(body)
        response = session.sagemaker_runtime_client.invoke_endpoint(
            EndpointName=predictor.endpoint_name,
            Body=json.dumps(body),
            ContentType="application/json",
            Accept="application/json",
        )
        summary["invoke_endpoint"] = json.loads(response["Body"].read())
    finally:
        predictor.delete_endpoint()

    batch_input = write_lines(
        args.workdir / "batch" / "input.json", full + [{"start": "2024-01-01", "target": [1, "x"]}]
    )
    transformer = estimator.transformer(
        1,
        "local",
        strategy="MultiRecord",
        assemble_with="Line",
        accept="application/jsonlines",
        output_path=f"file://{args.workdir / 'batch-output'}",
        env={
            "DEEPAR_INFERENCE_CONFIG": json.dumps({"num_samples": 20, "output_types": ["mean"]}),
            "DEEPAR_FORWARD_FIELDS": "item_id",
        },
    )
    transformer.transform(
        f"file://{batch_input.parent}", content_type="application/jsonlines", split_type="Line", logs=False, wait=True
    )
    out = args.workdir / "batch-output" / "input.json.out"
    summary["batch_input_lines"] = len(batch_input.read_text().splitlines())
    summary["batch_output"] = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    summary["network_violations"] = VIOLATIONS
    print("SUMMARY " + json.dumps(summary))


if __name__ == "__main__":
    sys.exit(main())
