"""Results on disk for `python -m bench.report`: reading Result files, the dated history, the runs' names.

A run is one folder, ``bench/results/<YYYY-MM-DD>-<commit>/``, holding one ``<bench>.json`` per bench
(bench/_results.py's Result), the bench's printed output (``<bench>.log``) and ``run.json`` (which
benches ran, how long, and why any of them gave no result). ``bench/results/history.jsonl`` keeps
every Result ever recorded, one JSON object a line with the run's name added; the Performance page
shows the latest run, the history page every run.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable

from bench._results import Headline, Result

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
HISTORY = RESULTS / "history.jsonl"
MANIFEST = "run.json"


class ResultError(ValueError):
    """A file that is not a readable Result (names the file and what is wrong)."""


def result_from_dict(data: dict[str, Any], where: str) -> Result:
    """A Result back from its JSON form; ``where`` names the file (and line) in errors."""
    try:
        headlines = [Headline(**h) for h in data.get("headlines", [])]
        return Result(
            bench=data["bench"],
            argv=list(data["argv"]),
            date=data["date"],
            commit=data["commit"],
            machine=data["machine"],
            cpu=data.get("cpu", "unknown"),
            cores=int(data.get("cores", 0)),
            headlines=headlines,
            rows=list(data.get("rows", [])),
        )
    except KeyError as missing:
        raise ResultError(f"{where}: not a bench result, field {missing} is missing") from None
    except TypeError as error:
        raise ResultError(f"{where}: not a bench result ({error})") from None


def read_result(path: Path) -> Result:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ResultError(f"{path}:{error.lineno}: not JSON ({error.msg})") from None
    if not isinstance(data, dict):
        raise ResultError(f"{path}: not a bench result (a JSON {type(data).__name__}, not an object)")
    return result_from_dict(data, str(path))


def read_folder(folder: Path) -> list[Result]:
    """Every Result in ``folder`` (``run.json`` and other non-result files are left out), by bench name."""
    paths = sorted(p for p in folder.glob("*.json") if p.name != MANIFEST)
    return sorted((read_result(p) for p in paths), key=lambda r: r.bench)


def run_name(date: str, commit: str) -> str:
    """``2026-12-07-02a421a``: the folder of a run started on that day from that commit."""
    return f"{date[:10]}-{commit}"


def key(result: Result) -> tuple[str, str, str]:
    return (result.bench, result.date, result.commit)


def load_history(path: Path = HISTORY) -> list[tuple[str, Result]]:
    """(run name, Result) for every line of the history, oldest first."""
    if not path.exists():
        return []
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as error:
            raise ResultError(f"{path}:{number}: not JSON ({error.msg})") from None
        entries.append((str(data.get("run", "unknown")), result_from_dict(data, f"{path}:{number}")))
    return entries


def record(run: str, results: Iterable[Result], path: Path = HISTORY) -> int:
    """Appends the results not yet in the history (same bench, date and commit); returns how many."""
    known = {key(r) for _, r in load_history(path)}
    new = [r for r in results if key(r) not in known]
    if new:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as history:
            for result in new:
                history.write(json.dumps({"run": run, **asdict(result)}) + "\n")
    return len(new)


def latest_run(history: list[tuple[str, Result]]) -> str | None:
    """The run of the most recently dated result (ISO dates in UTC sort as text)."""
    if not history:
        return None
    return max(history, key=lambda entry: entry[1].date)[0]


def in_run(history: list[tuple[str, Result]], run: str) -> dict[str, Result]:
    """The run's results by bench; a bench measured twice in one run shows its later result."""
    results: dict[str, Result] = {}
    for name, result in sorted(history, key=lambda entry: entry[1].date):
        if name == run:
            results[result.bench] = result
    return results


def last_measured(history: list[tuple[str, Result]], bench: str, before_run: str) -> Result | None:
    """The newest result of ``bench`` from another run (to date a figure the latest run lacks)."""
    older = [r for name, r in history if r.bench == bench and name != before_run]
    return max(older, key=lambda r: r.date) if older else None


def read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}
