"""Air-pollution device simulator: N devices publish JSON readings to AWS IoT Core over MQTT with
mutual TLS (AWS IoT Device SDK v2, `awsiotsdk`), QoS 1.

    python -m ingestion.simulator --settings ingestion-state/deepar-iot/settings.json --rate 1 --duration 60
    python -m ingestion.simulator --settings ... --replay 2024-01-01 2024-02-01 --step 1h     backfill history fast
    python -m ingestion.simulator --settings ... --payload reference     publish as the reference device kit does

Settings come from `python -m ingestion.infra up` (endpoint, one certificate/key per device, topics)
or from flags for one device (--endpoint --cert --key --thing). Each device connects with client id
= its thing name and publishes to <prefix>/<thing>/telemetry (the topic the settings give it). With
--payload reference each message is exactly what the reference device kit sends: its spellings
(`particullate_matter`, `sulfure_dioxide`), integers, a JavaScript Date timestamp with milliseconds, no
device id, serialised compactly as JSON.stringify does. Lost connections are retried with
exponential backoff (1 s to 32 s) and QoS 1 messages queued meanwhile are sent after reconnecting.
Prints a summary: sent, acknowledged, failed (exit status 1 if any failed or a device never connected).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Optional

from sagemaker_deepar.cli import run_command
from sagemaker_deepar.errors import UserError

from .signals import PAYLOAD_STYLES, Device, parse_time, reference_payload


@dataclass
class DeviceSettings:
    thing: str
    topic: str
    cert: str
    key: str


@dataclass
class Counters:
    sent: int = 0
    acked: int = 0
    failed: int = 0
    interruptions: int = 0
    resumptions: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, detail: str = "") -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + 1)
            if detail and len(self.errors) < 5:
                self.errors.append(detail)


def load_devices(args: argparse.Namespace) -> tuple[str, int, Optional[str], list[DeviceSettings]]:
    if args.settings:
        try:
            settings = json.loads(Path(args.settings).read_text())
        except (OSError, ValueError) as error:
            raise UserError(f"--settings {args.settings}: {error}") from None
        devices = [DeviceSettings(d["thing"], d["topic"], d["cert"], d["key"]) for d in settings["devices"]]
        endpoint, port, ca = settings["endpoint"], int(settings.get("port", 8883)), settings.get("ca")
    else:
        if not (args.endpoint and args.cert and args.key and args.thing):
            raise UserError("pass --settings FILE, or --endpoint, --cert, --key and --thing")
        devices = [
            DeviceSettings(args.thing, args.topic or f"{args.prefix}/{args.thing}/telemetry", args.cert, args.key)
        ]
        endpoint, port, ca = args.endpoint, 8883, None
    endpoint = args.endpoint or endpoint
    port = args.port or port
    ca = args.ca or ca
    if args.devices:
        devices = devices[: args.devices]
    for device in devices:
        for path in (device.cert, device.key):
            if not Path(path).exists():
                raise UserError(f"{device.thing}: {path} does not exist (run `python -m ingestion.infra up`)")
    return endpoint, port, ca, devices


def connect(endpoint: str, port: int, ca: Optional[str], device: DeviceSettings, counters: Counters, timeout: float):
    from awscrt import mqtt
    from awsiot import mqtt_connection_builder

    def interrupted(connection, error, **_):
        counters.add("interruptions")
        print(f"{device.thing}: connection lost ({error}); reconnecting", file=sys.stderr, flush=True)

    def resumed(connection, return_code, session_present, **_):
        counters.add("resumptions")
        print(f"{device.thing}: reconnected", file=sys.stderr, flush=True)

    connection = mqtt_connection_builder.mtls_from_path(
        endpoint=endpoint,
        port=port,
        cert_filepath=device.cert,
        pri_key_filepath=device.key,
        **({"ca_filepath": ca} if ca else {}),
        client_id=device.thing,
        clean_session=False,
        keep_alive_secs=30,
        on_connection_interrupted=interrupted,
        on_connection_resumed=resumed,
        reconnect_min_timeout_secs=1,
        reconnect_max_timeout_secs=32,
        ping_timeout_ms=5000,
    )
    connection.connect().result(timeout)
    return connection, mqtt


def payload_of(message: dict, when: datetime, style: str) -> str:
    if style == "reference":  # JSON.stringify: no blanks after ',' and ':'
        return json.dumps(reference_payload(message, when), separators=(",", ":"))
    return json.dumps(message)


def publish(connection, mqtt, device: DeviceSettings, payload: str, counters: Counters) -> None:
    future, _ = connection.publish(topic=device.topic, payload=payload, qos=mqtt.QoS.AT_LEAST_ONCE)
    counters.add("sent")

    def done(f):
        error = f.exception()
        if error:
            counters.add("failed", f"{device.thing}: {error}")
        else:
            counters.add("acked")

    future.add_done_callback(done)


def schedule(args: argparse.Namespace) -> tuple[datetime, Optional[datetime], timedelta, float]:
    """(first timestamp, last (exclusive) or None, timestamp step, seconds between rounds)."""
    if args.replay:
        start, end = parse_time(args.replay[0]), parse_time(args.replay[1])
        if end <= start:
            raise UserError("--replay END must be after START")
        return start, end, parse_step(args.step), 1.0 / args.replay_rate if args.replay_rate else 0.0
    interval = 1.0 / args.rate
    return datetime.now(timezone.utc), None, timedelta(seconds=interval), interval


def parse_step(text: str) -> timedelta:
    units = {"s": "seconds", "min": "minutes", "m": "minutes", "h": "hours", "d": "days"}
    for suffix, unit in sorted(units.items(), key=lambda u: -len(u[0])):
        if text.endswith(suffix) and text[: -len(suffix)].isdigit():
            return timedelta(**{unit: int(text[: -len(suffix)])})
    raise UserError(f"--step {text!r}: expected e.g. 30s, 5min, 1h, 1d")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ingestion.simulator", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--settings", help="settings.json written by `python -m ingestion.infra up`")
    parser.add_argument("--endpoint", help="IoT data endpoint (overrides the settings)")
    parser.add_argument("--port", type=int)
    parser.add_argument("--ca", help="CA bundle for the endpoint (default: the system trust store)")
    parser.add_argument("--cert"), parser.add_argument("--key"), parser.add_argument("--thing")
    parser.add_argument("--topic"), parser.add_argument("--prefix", default="deepar-iot")
    parser.add_argument("--devices", type=int, help="only the first N devices of the settings")
    parser.add_argument("--rate", type=float, default=1.0, help="readings per second per device (live mode)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds to run (live mode)")
    parser.add_argument("--count", type=int, help="stop after this many readings per device")
    parser.add_argument("--replay", nargs=2, metavar=("START", "END"), help="publish this historical period")
    parser.add_argument("--step", default="1h", help="--replay: time between readings (30s, 5min, 1h)")
    parser.add_argument(
        "--replay-rate", type=float, default=0.0, help="--replay: rounds per second (0: as fast as acks allow)"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--invalid-rate", type=float, default=0.002, help="share of deliberately broken readings")
    parser.add_argument(
        "--payload",
        choices=PAYLOAD_STYLES,
        default="project",
        help="message format: this project's devices, or the reference device kit's",
    )
    parser.add_argument("--connect-timeout", type=float, default=30.0)
    parser.add_argument("--drain-timeout", type=float, default=60.0, help="seconds to wait for outstanding acks")
    args = parser.parse_args(argv)
    if args.rate <= 0:
        raise UserError("--rate must be positive")
    endpoint, port, ca, devices = load_devices(args)
    counters = Counters()
    connections = []
    for device in devices:
        try:
            connections.append((device, *connect(endpoint, port, ca, device, counters, args.connect_timeout)))
        except Exception as error:  # noqa: BLE001 - a device that cannot connect is reported, not a traceback
            print(f"error: {device.thing}: cannot connect to {endpoint}:{port}: {error}", file=sys.stderr)
            for _, connection, _ in connections:
                connection.disconnect().result(10)
            return 1
    print(f"{len(connections)} device(s) connected to {endpoint}:{port}", flush=True)
    models = {device.thing: Device(device.thing, seed=args.seed, invalid_rate=args.invalid_rate) for device in devices}
    when, end, step, pause = schedule(args)
    deadline = time.monotonic() + args.duration
    rounds = 0
    try:
        while (end is None and time.monotonic() < deadline) or (end is not None and when < end):
            if args.count is not None and rounds >= args.count:
                break
            started = time.monotonic()
            for device, connection, mqtt in connections:
                message = models[device.thing].reading(when)
                if message is not None:
                    publish(connection, mqtt, device, payload_of(message, when, args.payload), counters)
            rounds += 1
            when = when + step if end is not None else datetime.now(timezone.utc)
            if args.replay and not args.replay_rate:
                wait_for_backlog(counters, limit=500)
            time.sleep(max(0.0, pause - (time.monotonic() - started)))
    except KeyboardInterrupt:
        print("interrupted: draining", file=sys.stderr)
    drain(counters, args.drain_timeout)
    for _, connection, _ in connections:
        connection.disconnect().result(10)
    print(
        f"summary: {len(connections)} device(s), {rounds} round(s), sent {counters.sent}, acked {counters.acked}, "
        f"failed {counters.failed}, connection losses {counters.interruptions}, reconnects {counters.resumptions}",
        flush=True,
    )
    for error in counters.errors:
        print(f"  {error}", file=sys.stderr)
    return 0 if counters.failed == 0 and counters.acked == counters.sent else 1


def wait_for_backlog(counters: Counters, limit: int) -> None:
    """Replay publishes as fast as the broker acknowledges, with at most ``limit`` in flight."""
    while counters.sent - counters.acked - counters.failed > limit:
        time.sleep(0.005)


def drain(counters: Counters, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while counters.acked + counters.failed < counters.sent and time.monotonic() < deadline:
        time.sleep(0.05)


if __name__ == "__main__":
    sys.exit(run_command(main, debug_env="INGESTION_DEBUG"))
