"""The seed's whole pipeline on one machine, with the record count checked at every hop:

`ingestion.infra up` (moto server) -> simulator (--replay, the reference device kit's payloads) ->
mosquitto with mutual TLS -> relay (the IoT rule's stand-in: comma separator as in the reference
setup, the topic instead of a device id) -> Firehose PutRecordBatch (moto) -> raw S3 objects, copied
to a local folder -> the Glue job (local Spark) -> Parquet with all five pollutants -> DeepAR
converter -> the train entrypoint (--no-docker path, tiny epochs) -> the serve entrypoint -> a
forecast for one sensor.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pandas as pd
import requests

from ingestion.glue_job import POLLUTANTS, decode_object, split_records

from .conftest import REPO, OptMl, run_train, running_server
from .helpers import moto_client
from .mqtt_broker import start_broker

PREFIX = "e2e"
THINGS = [f"{PREFIX}-sensor-1", f"{PREFIX}-sensor-2"]
PREDICTION_LENGTH = 6


def module(name: str, *args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", f"ingestion.{name}", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, (name, result.stdout[-3000:], result.stderr[-3000:])
    return result


def number_after(text: str, label: str) -> int:
    return int(text.split(label, 1)[1].split(",")[0].split()[0])


def test_device_to_forecast(moto_env, tmp_path):

    env = {**moto_env, "PYTHONUNBUFFERED": "1"}
    state = tmp_path / "state"
    module("infra", "up", "--prefix", PREFIX, "--devices", "2", "--state-dir", str(state), env=env)
    settings = json.loads((state / "settings.json").read_text())

    # The devices' connection settings from `up`, pointed at the local broker and its certificates.
    broker = start_broker(tmp_path / "mqtt", PREFIX, THINGS)
    try:
        for device in settings["devices"]:
            device["cert"], device["key"] = (str(p) for p in broker.client(device["thing"]))
        settings.update(endpoint="localhost", port=broker.port, ca=str(broker.ca))
        (tmp_path / "settings.json").write_text(json.dumps(settings))
        relay_cert, relay_key = broker.client("relay")
        relay = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ingestion.relay",
                "--host",
                "localhost",
                "--port",
                str(broker.port),
                "--ca",
                str(broker.ca),
                "--cert",
                str(relay_cert),
                "--key",
                str(relay_key),
                "--prefix",
                PREFIX,
                "--stream",
                settings["resources"]["firehose_stream"],
                "--idle-exit",
                "4",
                "--flush-seconds",
                "0.5",
                "--max-seconds",
                "300",
                "--separator",
                "comma",
                "--device-field",
                "topic",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert "subscribed" in relay.stdout.readline()
            simulated = module(
                "simulator",
                "--settings",
                str(tmp_path / "settings.json"),
                "--replay",
                "2024-01-01",
                "2024-01-06",
                "--step",
                "1h",
                "--invalid-rate",
                "0.02",
                "--payload",
                "reference",
                env=env,
            ).stdout
            relay_out, relay_err = relay.communicate(timeout=120)
        finally:
            if relay.poll() is None:
                relay.kill()
    finally:
        broker.stop()
    sent, acked = number_after(simulated, "sent "), number_after(simulated, "acked ")
    assert sent == acked > 200
    assert f"relay: received {acked}, forwarded {acked}" in relay_out, relay_err

    # Firehose (moto) wrote the batches to the raw bucket; copy them down as a Glue job would read them.
    s3 = moto_client(env, "s3")
    raw_bucket = settings["resources"]["buckets"]["raw"]
    lake, records = tmp_path / "lake" / "raw", 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=raw_bucket, Prefix="raw/"):
        for item in page.get("Contents", []):
            target = lake / item["Key"]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(raw_bucket, item["Key"], str(target))
            text = decode_object(target.read_bytes())
            assert "\n" not in text and "},{" in text and "particullate_matter" in text and "device_id" not in text
            records += sum(1 for _ in split_records(text))
    assert records == acked

    etl = module(
        "glue_job",
        "--raw-path",
        str(lake),
        "--curated-path",
        str(tmp_path / "curated"),
        "--quarantine-path",
        str(tmp_path / "quarantine"),
        env=env,
    ).stdout
    counts = json.loads(etl.split("ETL_COUNTS ", 1)[1].splitlines()[0])
    assert counts["records_in"] == acked and counts["valid"] + counts["quarantined"] == acked
    assert counts["quarantined"] > 0 and counts["dates_touched"] == 5
    assert counts["curated_rows_in_touched_dates"] == counts["valid"]  # replay sends each reading once
    readings = pd.read_parquet(tmp_path / "curated")
    assert readings[list(POLLUTANTS)].notna().all().all() and set(readings["device_id"]) == set(THINGS)

    opt_ml = OptMl(tmp_path / "opt_ml")
    converted = module(
        "to_deepar",
        "--curated",
        str(tmp_path / "curated"),
        "--out",
        str(opt_ml.root / "input" / "data"),
        "--prediction-length",
        str(PREDICTION_LENGTH),
        "--cat",
        env=env,
    ).stdout
    assert f"10 series from {counts['valid']} readings" in converted
    test = [json.loads(line) for line in open(opt_ml.root / "input/data/test/test.json")]
    assert len(test) == 10 and all(len(r["target"]) == 120 for r in test)  # 5 days hourly per (device, pollutant)

    opt_ml.hyperparameters(prediction_length=str(PREDICTION_LENGTH), context_length="24")
    opt_ml.channels(train="application/jsonlines", test="application/jsonlines")
    trained = run_train(opt_ml)
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "test mean_wQuantileLoss <loss>=" in trained.stdout

    sensor = next(r for r in test if r["item_id"] == f"{PREFIX}-sensor-1/ozone")
    with running_server(opt_ml.root) as server:
        started = time.monotonic()
        answer = requests.post(
            server.url + "/invocations",
            timeout=60,
            json={
                "instances": [{"start": sensor["start"], "target": sensor["target"], "cat": sensor["cat"]}],
                "configuration": {
                    "num_samples": 50,
                    "output_types": ["mean", "quantiles"],
                    "quantiles": ["0.1", "0.9"],
                },
            },
        )
    assert answer.status_code == 200, answer.text
    [forecast] = answer.json()["predictions"]
    assert len(forecast["mean"]) == PREDICTION_LENGTH and len(forecast["quantiles"]["0.9"]) == PREDICTION_LENGTH
    assert all(low <= high for low, high in zip(forecast["quantiles"]["0.1"], forecast["quantiles"]["0.9"]))
    assert time.monotonic() - started < 60
    assert os.path.exists(opt_ml.root / "model" / "deepar-metadata.json")
    down = module(
        "infra", "down", "--prefix", PREFIX, "--devices", "2", "--state-dir", str(state), "--delete-data", env=env
    ).stdout
    assert "deleted    firehose stream" in down and "kept" not in down
