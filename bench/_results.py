"""What every bench writes for `python -m bench.report` (issue #27): one JSON result per run.

    parser.add_argument("--json", type=Path, help=JSON_HELP)
    ...
    result = Result("query", argv)                 # command, date, commit and machine recorded now
    result.headline(rounds)                        # a Paired: its printed line, median, range, target
    result.row(method="duckdb", seconds=0.71)      # any rows the report plots
    result.write(args.json)                        # no-op when --json was not given

The report renders the docs' Performance page from these files; each figure there names the
``command``, ``date``, ``commit`` and ``machine`` stored here, so a figure is never separated from
how it was measured.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from bench._paired import Paired, machine

JSON_HELP = "also write this run's result as JSON (bench.report reads it)"
REPO = Path(__file__).resolve().parent.parent


def commit() -> str:
    """The measured checkout's commit, with "+dirty" when it has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty.strip() else "")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


@dataclass
class Headline:
    what: str
    value: float
    unit: str = "x"
    low: Optional[float] = None
    high: Optional[float] = None
    rounds: int = 1
    target: str = ""
    line: str = ""  # the bench's own printed line, quoted verbatim by docs


@dataclass
class Result:
    bench: str  # e.g. "query" for bench/query.py
    argv: list[str]
    date: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"))
    commit: str = field(default_factory=commit)
    machine: str = field(default_factory=machine)
    cpu: str = field(default_factory=cpu_model)
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    headlines: list[Headline] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def command(self) -> str:
        return " ".join([".venv/bin/python -m bench." + self.bench, *self.argv])

    def headline(self, paired: Paired, line: Optional[str] = None) -> Headline:
        """Record a paired comparison's headline (its printed line unless ``line`` is given)."""
        ratios = paired.ratios
        entry = Headline(
            what=paired.what,
            value=paired.median,
            low=min(ratios),
            high=max(ratios),
            rounds=len(ratios),
            target=paired.target,
            line=line or paired.headline(),
        )
        self.headlines.append(entry)
        return entry

    def figure(self, what: str, value: float, unit: str, line: str, target: str = "") -> Headline:
        """A headline that is not a paired ratio (a size, a latency, a loss)."""
        entry = Headline(what=what, value=value, unit=unit, target=target, line=line)
        self.headlines.append(entry)
        return entry

    def row(self, **values: Any) -> None:
        self.rows.append(values)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["command"] = self.command
        return data

    def write(self, path: Optional[Path]) -> None:
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        print(f"result: {path}", file=sys.stderr)
