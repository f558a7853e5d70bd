"""A small curated lake from the bundled sample data: the Parquet layout the Glue job writes
(``ingestion/glue_job.py``: one row per reading, a column per pollutant, partitioned by ``date``).

Needs pandas and pyarrow (the dev environment or the image; the SDK environment has no pyarrow).
"""

from __future__ import annotations

from pathlib import Path

from ingestion.glue_job import POLLUTANTS


def sample_frame(sensors: int = 1, days: int = 10, start: str = "2024-01-01 00:00:00", level_shift: float = 0.0):
    """Hourly readings of ``sensors`` devices from ``sagemaker_deepar.training.sample_data``; ``level_shift``
    adds a constant to every reading (a drift)."""
    import pandas as pd

    from sagemaker_deepar.training.sample_data import generate

    records = generate(num_sensors=sensors, days=days, start=start)
    hours = pd.date_range(start, periods=days * 24, freq="h")
    frames = []
    for sensor in range(sensors):
        columns = {}
        for record in records[sensor * len(POLLUTANTS) : (sensor + 1) * len(POLLUTANTS)]:
            name = POLLUTANTS[record["cat"][1]]
            columns[name] = [None if v in (None, "NaN") else float(v) + level_shift for v in record["target"]]
        frame = pd.DataFrame({"device_id": f"sensor-{sensor}", "timestamp": hours, **columns})
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True)
    frame["latitude"], frame["longitude"] = 40.4, -3.7
    frame["received_at"], frame["source"] = frame["timestamp"], "sample"
    frame["date"] = frame["timestamp"].dt.strftime("%Y-%m-%d")
    return frame


def write_sample_lake(folder: Path, sensors: int = 1, days: int = 10, **options) -> Path:
    """Write the sample lake as date-partitioned Parquet under ``folder``; returns it."""
    folder.mkdir(parents=True, exist_ok=True)
    sample_frame(sensors, days, **options).to_parquet(folder, partition_cols=["date"], index=False)
    return folder
