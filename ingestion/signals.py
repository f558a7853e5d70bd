"""The sensors' signal model: what a device publishes, and what the raw sample data is made of.

Each reading is the JSON a device sends: the five pollutants (same levels, daily cycles, weekday
traffic effect and noise as sagemaker_deepar.training.sample_data), latitude/longitude, an ISO-8601 UTC
timestamp and device_id. Outages drop readings, rare spikes are outliers, and a small share of
readings are broken the way field devices break them (a non-numeric value, a sentinel -999, a
missing timestamp) so the ETL's quarantine has something to catch.

``reference_payload`` turns a reading into what the reference device kit publishes instead
(README, *Ingestion*): its spellings, integer values, a JavaScript Date timestamp, no device id.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Iterator, Optional

import numpy as np

from sagemaker_deepar.training.sample_data import POLLUTANTS

from .glue_job import FIELD_ALIASES

CITY = (40.4168, -3.7038)  # sensors spread around one city centre
PAYLOAD_STYLES = ("project", "reference")
# The reference kit's field names (the ETL's aliases, read backwards), in the order its JavaScript
# object literal, hence JSON.stringify, has them.
_KIT_SPELLING = {canonical: alias for alias, canonical in FIELD_ALIASES.items()}
REFERENCE_FIELDS = {name: _KIT_SPELLING.get(name, name) for name in (*POLLUTANTS, "longitude", "latitude")}
REFERENCE_MAX = 100  # the kit's pollutant values are integers 0-100


def device_seed(device_id: str, seed: int) -> int:
    return (zlib.crc32(device_id.encode()) ^ seed) & 0xFFFFFFFF


@dataclass
class Device:
    """One sensor's fixed traits: location and a level multiplier."""

    device_id: str
    seed: int = 7
    invalid_rate: float = 0.002
    outage_rate: float = 0.002

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(device_seed(self.device_id, self.seed))
        self.latitude = round(CITY[0] + self.rng.uniform(-0.08, 0.08), 5)
        self.longitude = round(CITY[1] + self.rng.uniform(-0.08, 0.08), 5)
        self.level = self.rng.uniform(0.85, 1.3)
        self._outage_left = 0

    def value(self, pollutant: str, when: datetime) -> float:
        base, amplitude, peak, noise = POLLUTANTS[pollutant]
        base *= self.level
        hour = when.hour + when.minute / 60
        daily = amplitude * np.cos(2 * np.pi * (hour - peak) / 24)
        traffic = (
            0.15 * base
            if pollutant in ("nitrogen_dioxide", "carbon_monoxide", "particulate_matter") and when.weekday() < 5
            else 0.0
        )
        value = base + daily + traffic + self.rng.normal(0, noise)
        if self.rng.random() < 0.003:  # a short spike: real, not an error
            value *= self.rng.uniform(2, 4)
        return round(max(float(value), 0.0), 4)

    def reading(self, when: datetime) -> Optional[dict]:
        """The message for ``when``, or None while the sensor is in an outage."""
        if self._outage_left > 0:
            self._outage_left -= 1
            return None
        if self.rng.random() < self.outage_rate:
            self._outage_left = int(self.rng.integers(1, 12))
            return None
        message = {name: self.value(name, when) for name in POLLUTANTS}
        message.update(
            {
                "latitude": self.latitude,
                "longitude": self.longitude,
                "timestamp": when.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "device_id": self.device_id,
            }
        )
        if self.rng.random() < self.invalid_rate:
            self.break_reading(message)
        return message

    def break_reading(self, message: dict) -> None:
        kind = int(self.rng.integers(0, 3))
        pollutant = list(POLLUTANTS)[int(self.rng.integers(0, len(POLLUTANTS)))]
        if kind == 0:
            message[pollutant] = "n/a"
        elif kind == 1:
            message[pollutant] = -999.0
        else:
            del message["timestamp"]


def javascript_date(when: datetime) -> str:
    """``JSON.stringify(new Date(...))``: ISO 8601 in UTC with milliseconds and ``Z``."""
    when = when.astimezone(timezone.utc)
    return f"{when:%Y-%m-%dT%H:%M:%S}.{when.microsecond // 1000:03d}Z"


def reference_payload(message: dict, when: datetime) -> dict:
    """``message`` as the reference kit sends it: its field names and order, pollutants as integers
    (at most 100), longitude/latitude, the JavaScript Date of ``when``, and no device id. A value
    ``Device.break_reading`` broke stays broken (a negative sentinel stays negative, text stays text)."""
    payload: dict = {}
    for name, spelling in REFERENCE_FIELDS.items():
        value = message.get(name)
        if name in POLLUTANTS and isinstance(value, float):
            value = min(int(round(value)), REFERENCE_MAX)
        payload[spelling] = value
    if "timestamp" in message:
        payload["timestamp"] = javascript_date(when)
    return payload


def history(
    device_ids: list[str], start: datetime, end: datetime, step: timedelta, seed: int = 7, invalid_rate: float = 0.002
) -> Iterator[dict]:
    """Readings of every device from ``start`` to ``end`` (exclusive), in time order."""
    devices = [Device(d, seed=seed, invalid_rate=invalid_rate) for d in device_ids]
    when = start
    while when < end:
        for device in devices:
            message = device.reading(when)
            if message is not None:
                yield message
        when += step


def parse_time(text: str) -> datetime:
    """ISO-8601 (``2024-01-01``, ``2024-01-01T06:00``, with or without Z) as an aware UTC datetime."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)
