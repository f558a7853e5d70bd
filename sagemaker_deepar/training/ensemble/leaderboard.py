"""The leaderboard: one row per member (and one for the served ensemble), logged as a table and written to
``/opt/ml/output/data/leaderboard.json`` (a JSON list of these rows; schema in docs/ensemble.md)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

log = logging.getLogger(__name__)

LEADERBOARD_FILE = "leaderboard.json"


@dataclass
class Row:
    member: str  # a member's name, or "ensemble"
    weight: Optional[float]  # the member's weight in the served model (None on the ensemble's own row)
    validation_mean_wQuantileLoss: Optional[float] = None
    test_mean_wQuantileLoss: Optional[float] = None
    test_RMSE: Optional[float] = None
    fit_seconds: Optional[float] = None  # training before any forecast (DeepAR's network; 0 for local members)
    predict_seconds: Optional[float] = None  # forecasting the validation windows (local members fit there)
    validation_windows: int = 0
    served: bool = False  # the row whose forecasts the endpoint answers (and the #quality_metric lines report)
    note: Optional[str] = None  # why a score is missing or a weight is 0

    def as_dict(self) -> dict[str, Any]:
        return {k: (round(v, 3) if k.endswith("_seconds") and v is not None else v) for k, v in asdict(self).items()}


def table(rows: Sequence[Row]) -> str:
    """The rows as a fixed-width text table (one line each, the note last)."""

    def number(value: Optional[float], digits: int = 4) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    header = (
        f"{'member':<15} {'val wQL':>8} {'test wQL':>9} {'test RMSE':>10} {'weight':>7} {'fit s':>7} {'predict s':>9}"
    )
    lines = [header]
    for row in rows:
        lines.append(
            f"{row.member + (' *' if row.served else ''):<15} {number(row.validation_mean_wQuantileLoss):>8} "
            f"{number(row.test_mean_wQuantileLoss):>9} {number(row.test_RMSE, 3):>10} {number(row.weight, 2):>7} "
            f"{number(row.fit_seconds, 2):>7} {number(row.predict_seconds, 2):>9}"
            + (f"  {row.note}" if row.note else "")
        )
    return "\n".join(lines)


def write(rows: Sequence[Row], output_dir: Path) -> Path:
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / LEADERBOARD_FILE
    partial = path.with_name(f".{path.name}.tmp")  # a reader never sees half a file
    partial.write_text(json.dumps([row.as_dict() for row in rows], indent=2))
    os.replace(partial, path)
    log.info("leaderboard (* = served; wQL = mean_wQuantileLoss), also in %s:\n%s", path, table(rows))
    return path
