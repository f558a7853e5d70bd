"""`python -m ingestion.simulator` against a real mosquitto broker with mutual TLS on 127.0.0.1
(tests/mqtt_broker.py): messages, schema and topics; a certificate from another CA is refused; a
device cannot publish to another device's topic; a broker restart is survived."""

from __future__ import annotations

import json
import re
import ssl
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from ingestion import glue_job

from .conftest import REPO
from .mqtt_broker import start_broker

PREFIX = "deepar-iot"
THINGS = [f"{PREFIX}-sensor-1", f"{PREFIX}-sensor-2"]
FIELDS = {
    "ozone",
    "particulate_matter",
    "carbon_monoxide",
    "sulfur_dioxide",
    "nitrogen_dioxide",
    "latitude",
    "longitude",
    "timestamp",
    "device_id",
}


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    broker = start_broker(tmp_path_factory.mktemp("mqtt"), PREFIX, THINGS)
    yield broker
    broker.stop()


class Subscriber:
    """The relay identity: reads every device topic; collects (topic, message)."""

    def __init__(self, broker):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, dict]] = []
        self.payloads: list[bytes] = []
        self.ready = threading.Event()
        cert, key = broker.client("relay")
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sub-{time.monotonic_ns()}")
        self.client.tls_set(
            ca_certs=str(broker.ca), certfile=str(cert), keyfile=str(key), tls_version=ssl.PROTOCOL_TLS_CLIENT
        )
        self.client.reconnect_delay_set(0.2, 1)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{PREFIX}/#", qos=1)
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = lambda c, u, m: (
            self.payloads.append(m.payload),
            self.messages.append((m.topic, json.loads(m.payload))),
        )
        self.client.connect("localhost", broker.port)
        self.client.loop_start()
        assert self.ready.wait(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def wait_for(self, count: int, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count and time.monotonic() < deadline:
            time.sleep(0.05)


def settings_file(broker, folder: Path, devices: list[dict] | None = None) -> Path:
    devices = devices or [
        {
            "thing": t,
            "topic": f"{PREFIX}/{t}/telemetry",
            "cert": str(broker.client(t)[0]),
            "key": str(broker.client(t)[1]),
        }
        for t in THINGS
    ]
    path = folder / "settings.json"
    path.write_text(
        json.dumps({"endpoint": "localhost", "port": broker.port, "ca": str(broker.ca), "devices": devices})
    )
    return path


def simulate(settings: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ingestion.simulator", "--settings", str(settings), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_devices_publish_readings_with_the_schema_on_their_topics(broker, tmp_path):
    subscriber = Subscriber(broker)
    try:
        result = simulate(settings_file(broker, tmp_path), "--rate", "20", "--count", "10", "--invalid-rate", "0")
        assert result.returncode == 0, result.stderr
        assert "sent 20, acked 20, failed 0" in result.stdout
        subscriber.wait_for(20)
    finally:
        subscriber.close()
    assert len(subscriber.messages) == 20
    for topic, message in subscriber.messages:
        assert set(message) == FIELDS
        assert topic == f"{PREFIX}/{message['device_id']}/telemetry"
        assert all(isinstance(message[k], float) for k in FIELDS - {"timestamp", "device_id"})
        assert message["timestamp"].endswith("Z") and datetime.fromisoformat(
            message["timestamp"].replace("Z", "+00:00")
        )
    assert {m["device_id"] for _, m in subscriber.messages} == set(THINGS)


def test_reference_payload_is_exactly_what_the_reference_kit_publishes(broker, tmp_path):
    """--payload reference: the kit's field names and order, integers 0-100, a JavaScript Date, no device
    id (the topic says which device), JSON.stringify's compact form; the Glue job reads it back."""
    subscriber = Subscriber(broker)
    try:
        result = simulate(
            settings_file(broker, tmp_path),
            "--payload",
            "reference",
            "--rate",
            "20",
            "--count",
            "5",
            "--invalid-rate",
            "0",
        )
        assert result.returncode == 0, result.stderr
        assert "sent 10, acked 10, failed 0" in result.stdout
        subscriber.wait_for(10)
    finally:
        subscriber.close()
    assert len(subscriber.messages) == 10
    kit_fields = [
        "ozone",
        "particullate_matter",
        "carbon_monoxide",
        "sulfure_dioxide",
        "nitrogen_dioxide",
        "longitude",
        "latitude",
        "timestamp",
    ]
    for payload, (topic, message) in zip(subscriber.payloads, subscriber.messages, strict=True):
        assert list(message) == kit_fields
        assert all(type(message[k]) is int and 0 <= message[k] <= 100 for k in kit_fields[:5])
        assert all(isinstance(message[k], float) for k in ("longitude", "latitude"))
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", message["timestamp"])
        assert payload == json.dumps(message, separators=(",", ":")).encode()
        device = topic.split("/")[1]
        row, reason = glue_job.check({**message, "topic": topic})
        assert reason is None and row[0] == device and None not in row[2:9]
    assert {topic for topic, _ in subscriber.messages} == {f"{PREFIX}/{t}/telemetry" for t in THINGS}


def test_replay_backfills_history_fast(broker, tmp_path):
    subscriber = Subscriber(broker)
    try:
        result = simulate(
            settings_file(broker, tmp_path),
            "--replay",
            "2024-01-01",
            "2024-01-03",
            "--step",
            "1h",
            "--invalid-rate",
            "0",
        )
        assert result.returncode == 0, result.stderr
        assert "48 round(s)" in result.stdout
        sent = int(result.stdout.split("sent ")[1].split(",")[0])
        subscriber.wait_for(sent)
    finally:
        subscriber.close()
    stamps = sorted({m["timestamp"] for _, m in subscriber.messages})
    assert (
        len(subscriber.messages) == sent
        and stamps[0] == "2024-01-01T00:00:00Z"
        and stamps[-1] == "2024-01-02T23:00:00Z"
    )


def test_certificate_from_another_ca_is_rejected(broker, tmp_path):
    cert, key = broker.client("rogue-device")
    settings = settings_file(
        broker,
        tmp_path,
        [{"thing": THINGS[0], "topic": f"{PREFIX}/{THINGS[0]}/telemetry", "cert": str(cert), "key": str(key)}],
    )
    result = simulate(settings, "--count", "1", "--connect-timeout", "10", timeout=60)
    assert result.returncode == 1
    assert f"error: {THINGS[0]}: cannot connect to localhost:{broker.port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_device_cannot_publish_to_another_devices_topic(broker, tmp_path):
    one, other = THINGS
    spoof = [
        {
            "thing": one,
            "topic": f"{PREFIX}/{other}/telemetry",
            "cert": str(broker.client(one)[0]),
            "key": str(broker.client(one)[1]),
        }
    ]
    subscriber = Subscriber(broker)
    try:
        denied = simulate(settings_file(broker, tmp_path, spoof), "--rate", "20", "--count", "5")
        allowed = simulate(settings_file(broker, tmp_path), "--rate", "20", "--count", "1", "--devices", "1")
        assert allowed.returncode == 0, allowed.stderr
        subscriber.wait_for(1)
        time.sleep(0.5)
    finally:
        subscriber.close()
    assert "sent 5" in denied.stdout  # MQTT 3.1.1 acknowledges, the broker drops: nothing reaches the topic
    assert [topic for topic, _ in subscriber.messages] == [f"{PREFIX}/{one}/telemetry"]


def test_simulator_reconnects_after_a_broker_restart(broker, tmp_path):
    subscriber = Subscriber(broker)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ingestion.simulator",
            "--settings",
            str(settings_file(broker, tmp_path)),
            "--rate",
            "5",
            "--duration",
            "9",
            "--devices",
            "1",
            "--invalid-rate",
            "0",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        subscriber.wait_for(1, timeout=60)  # connected and publishing (startup is slow on a loaded machine)
        assert subscriber.messages, "the simulator never published"
        broker.stop()
        stopped = time.time()
        time.sleep(2)
        broker.start()
        out, err = process.communicate(timeout=90)
        subscriber.wait_for(len(subscriber.messages) + 1, timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
        subscriber.close()
    assert process.returncode == 0, (out, err)
    assert "connection losses 1, reconnects 1" in out and "failed 0" in out
    after = [
        m
        for _, m in subscriber.messages
        if datetime.fromisoformat(m["timestamp"].replace("Z", "+00:00")).timestamp() > stopped + 2
    ]
    assert after  # readings made after the restart arrived
