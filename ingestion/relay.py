"""Stand-in for the IoT topic rule where there is no IoT Core (local runs, tests): subscribe to the
devices' topics on an MQTT broker and forward each message to Firehose as the rule would.

The rule is `SELECT *, topic(2) AS device_id, timestamp() AS received_at FROM '<prefix>/+/telemetry'`
with separator "\\n": the relay adds the same two fields, appends the separator and sends batches
with PutRecordBatch (retrying records Firehose reports as failed). --separator picks any other one
the rule's Firehose action allows (the reference device setup uses `comma`); --device-field topic
stands in for `SELECT *, topic() AS topic, timestamp() AS received_at` instead (the whole topic, for
the Glue job to take the device from).

    python -m ingestion.relay --host localhost --port 8883 --ca ca.pem --cert relay.pem --key relay.key \\
        --prefix deepar-iot --stream deepar-iot-stream --idle-exit 5
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import threading
import time
from typing import Optional

# The separators the IoT rule's Firehose action allows, by name; the action appends one to every record.
SEPARATORS = {"newline": "\n", "tab": "\t", "crlf": "\r\n", "comma": ",", "none": ""}


class Relay:
    def __init__(
        self, firehose, stream: str, batch_size: int = 500, separator: str = "\n", device_field: str = "device_id"
    ):
        self.firehose, self.stream, self.batch_size, self.separator = firehose, stream, batch_size, separator
        self.device_field = device_field
        self.pending: list[bytes] = []
        self.lock = threading.Lock()
        self.received = self.forwarded = 0
        self.last_message: Optional[float] = None  # the idle clock starts with the first message

    def on_message(self, topic: str, payload: bytes) -> None:
        """The rule's SELECT: the message's fields, device_id from the topic (or the topic), received_at in ms."""
        try:
            record = json.loads(payload)
            if not isinstance(record, dict):
                raise ValueError("not an object")
        except ValueError:
            record = {"raw": payload.decode(errors="replace")}  # IoT forwards what it cannot parse too
        if self.device_field == "topic":
            record["topic"] = topic
        else:
            parts = topic.split("/")
            record["device_id"] = parts[1] if len(parts) > 1 else None
        record["received_at"] = int(time.time() * 1000)
        with self.lock:
            self.received += 1
            self.last_message = time.monotonic()
            self.pending.append((json.dumps(record) + self.separator).encode())
            full = len(self.pending) >= self.batch_size
        if full:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            batch, self.pending = self.pending, []
        while batch:
            response = self.firehose.put_record_batch(
                DeliveryStreamName=self.stream, Records=[{"Data": data} for data in batch]
            )
            failed = [data for data, result in zip(batch, response["RequestResponses"]) if "ErrorCode" in result]
            self.forwarded += len(batch) - len(failed)
            batch = failed
            if failed:
                time.sleep(0.5)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ingestion.relay", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, default=8883)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--prefix", default="deepar-iot")
    parser.add_argument("--stream", required=True, help="Firehose delivery stream")
    parser.add_argument(
        "--separator",
        choices=SEPARATORS,
        default="newline",
        help="what the rule's Firehose action appends to each record",
    )
    parser.add_argument(
        "--device-field",
        choices=("device_id", "topic"),
        default="device_id",
        help="add topic(2) AS device_id (as `infra up`'s rule), or topic() AS topic",
    )
    parser.add_argument("--flush-seconds", type=float, default=1.0)
    parser.add_argument(
        "--idle-exit", type=float, help="once messages came, exit after this many seconds without another"
    )
    parser.add_argument("--max-seconds", type=float, default=3600.0)
    args = parser.parse_args(argv)
    import paho.mqtt.client as mqtt

    from awsinfra.clients import client as aws_client

    relay = Relay(
        aws_client("firehose"), args.stream, separator=SEPARATORS[args.separator], device_field=args.device_field
    )
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{args.prefix}-relay")
    client.tls_set(ca_certs=args.ca, certfile=args.cert, keyfile=args.key, tls_version=ssl.PROTOCOL_TLS_CLIENT)
    subscribed = threading.Event()
    client.on_connect = lambda c, userdata, flags, rc, props: c.subscribe(f"{args.prefix}/+/telemetry", qos=1)
    client.on_subscribe = lambda *a: subscribed.set()
    client.on_message = lambda c, userdata, message: relay.on_message(message.topic, message.payload)
    client.connect(args.host, args.port, keepalive=30)
    client.loop_start()
    if not subscribed.wait(30):
        print("error: relay could not subscribe", file=sys.stderr)
        return 1
    print(f"relay: subscribed to {args.prefix}/+/telemetry -> firehose {args.stream}", flush=True)
    started = time.monotonic()
    try:
        while time.monotonic() - started < args.max_seconds:
            time.sleep(args.flush_seconds)
            relay.flush()
            idle = time.monotonic() - relay.last_message if relay.last_message is not None else 0.0
            if args.idle_exit and idle > args.idle_exit:
                break
    except KeyboardInterrupt:
        pass
    client.loop_stop()
    client.disconnect()
    relay.flush()
    print(f"relay: received {relay.received}, forwarded {relay.forwarded}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
