"""The docs' Performance page and its history page, written from the results history (bench/_history.py).

``docs/performance.md`` keeps its hand-written parts: the rendered figures go between the two marker
lines below (added after the page's title the first time), so a hand-written section stays until a
rendered one replaces it. ``docs/performance-history.md`` is written whole: every run, newest first.
A bench the latest run lacks is shown as "not measured in this run", with the date of its last
result when there is one (its figures are then only in the history), never an undated number.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from bench import _plots
from bench._history import in_run, last_measured, latest_run
from bench._results import Result

BEGIN = "<!-- bench.report: begin (rendered by `python -m bench.report`; edits here are overwritten) -->"
END = "<!-- bench.report: end -->"
IMAGES = Path("img") / "performance"  # relative to docs/
HISTORY_PAGE = "performance-history.md"


@dataclass(frozen=True)
class Section:
    bench: str
    title: str
    figures: tuple[tuple[str, _plots.Plotter], ...]  # (PNG name, plotter); ratios is the fallback

    def command_hint(self) -> str:
        return f".venv/bin/python -m bench.report --only {self.bench}"


SECTIONS = (
    Section(
        "serve_throughput",
        "Serving: throughput and latency against concurrency",
        (("serving", _plots.serving), ("latency", _plots.latency_distribution)),
    ),
    Section(
        "train_speed", "Training: batches/s and held-out loss against plain GluonTS", (("training", _plots.training),)
    ),
    Section("image_cold_start", "The image: size and cold start", (("image", _plots.image),)),
    Section("accuracy", "Accuracy leaderboard", (("accuracy", _plots.accuracy),)),
    Section("serverless_batch", "Serverless: event-driven batch against a direct batch request", ()),
    Section("etl_throughput", "ETL: the Glue job against plain Spark", ()),
    Section("query", "SQL over the lake: DuckDB against pandas", ()),
    Section("multi_model", "Multi-model endpoints", ()),
    Section("ecs_local", "ECS: a second local replica", ()),
    Section(
        "serverless_cold_start",
        "Serverless cold start against the real-time start",
        (("serverless-cold-start", _plots.image),),
    ),
    Section("train_scaling", "Multi-host training", ()),
    Section("warm_start", "Warm start against cold start", ()),
)


# Benches that only --full runs: shown when the run has their result, never listed as missing.
EXTRA_TITLES = {
    "onnx_predict": "The ONNX runtime against torch, in-process",
    "mlflow_formats": "mlflow's dataframe_split against DeepAR's request",
    "train_stop": "How fast training stops and fails",
}


def _section_for(bench: str) -> Section:
    known = {s.bench: s for s in SECTIONS}
    return known.get(bench) or Section(bench, EXTRA_TITLES.get(bench, f"bench.{bench}"), ())


def _quote(line: str) -> str:
    """A printed line as inline code (a backtick would end the span; a bar inside one does not split a cell)."""
    return "`" + line.replace("`", "'") + "`"


def _figures(section: Section, result: Result, docs: Path) -> list[str]:
    """Draws the section's figures; returns the page's image lines (empty when there is nothing to draw)."""
    drawn = []
    for name, plotter in section.figures:
        if plotter(result, docs / IMAGES / f"{name}.png"):
            drawn.append(f"![{name}: {_plots.shown_command(result)}]({(IMAGES / f'{name}.png').as_posix()})")
        else:
            drawn.append(f"*The {name} figure needs rows this result does not have (see bench/_plots.py).*")
    name = f"ratios-{section.bench}"
    if _plots.ratios(result, docs / IMAGES / f"{name}.png"):
        drawn.append(f"![{name}: {_plots.shown_command(result)}]({(IMAGES / f'{name}.png').as_posix()})")
    return drawn


def _measured(section: Section, result: Result, docs: Path) -> list[str]:
    lines = [
        f"Command: {_quote(_plots.shown_command(result))}  ",
        f"Measured {result.date}, commit `{result.commit}`, {result.cores} cores ({result.cpu}); "
        f"at the start, {result.machine.removeprefix('machine: ')}.",
        "",
    ]
    if result.headlines:
        lines += ["| what | printed | target |", "|---|---|---|"]
        for headline in result.headlines:
            printed = _quote(headline.line) if headline.line else f"{headline.value:g} {headline.unit}"
            lines.append(f"| {headline.what} | {printed} | {headline.target or '—'} |")
        lines.append("")
    else:
        lines += ["This result has no headline (the bench printed none).", ""]
    for figure in _figures(section, result, docs):
        lines += [figure, ""]
    return lines


def _missing(section: Section, run: str, reason: Optional[str], older: Optional[Result]) -> list[str]:
    why = f" ({reason})" if reason else ""
    when = (
        f" Last measured {older.date} at commit `{older.commit}`: see the [history]({HISTORY_PAGE})."
        if older
        else " No earlier result either."
    )
    return [f"**Not measured in this run**{why}.{when} To measure it: `{section.command_hint()}`.", ""]


def render_block(
    history: list[tuple[str, Result]], docs: Path, run: Optional[str] = None, reasons: Optional[dict[str, str]] = None
) -> tuple[str, list[str]]:
    """The page's rendered part for ``run`` (default: the latest in the history) and the benches it
    lacks (``reasons``: why, from its run.json); draws the figures."""
    reasons = reasons or {}
    run = run or latest_run(history)
    results = in_run(history, run) if run else {}
    images = docs / IMAGES
    if images.exists():  # a figure of an earlier run must not outlive its number on the page
        for old in images.glob("*.png"):
            old.unlink()
    loaded = [r for r in results.values() if _load(r) > r.cores]
    out = [BEGIN, "", f"## Run `{run or 'none'}`", ""]
    if run:
        out += [
            f"Rendered by `python -m bench.report` from `bench/results/{run}/` "
            f"({len(results)} of {len(SECTIONS)} benches measured); every earlier run is in the "
            f"[history]({HISTORY_PAGE}).",
            "",
        ]
    if loaded:
        out += [
            '!!! note "Measured on a loaded machine"',
            "    "
            + ", ".join(f"`{r.bench}` (load {_load(r):.1f} on {r.cores} cores)" for r in loaded)
            + ": the load average was above the core count when the bench started, so its figures measure a "
            "shared machine. Ratios are paired (both sides in interleaved rounds); absolute rates and seconds "
            "are not comparable across runs. Only the load at each start is recorded here: a load that rose "
            "during a run shows in that bench's log in the run's folder.",
            "",
        ]
    missing = []
    extra = sorted(set(results) - {s.bench for s in SECTIONS})
    for section in [*SECTIONS, *(_section_for(b) for b in extra)]:
        out += [f"### {section.title}", ""]
        result = results.get(section.bench)
        if result is None:
            missing.append(section.bench)
            out += _missing(
                section, run or "", reasons.get(section.bench), last_measured(history, section.bench, run or "")
            )
        else:
            out += _measured(section, result, docs)
    out.append(END)
    return "\n".join(out) + "\n", missing


def _load(result: Result) -> float:
    """The one-minute load average in the Result's machine line (0 when it cannot be read)."""
    match = re.search(r"load average ([0-9.]+)", result.machine)
    return float(match.group(1)) if match else 0.0


def write_page(page: Path, block: str) -> None:
    """Puts ``block`` between the markers of ``page`` (after its title the first time); the rest stays."""
    text = page.read_text() if page.exists() else "# Performance\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1].lstrip("\n")
        text = head + block + ("\n" + tail if tail else "")
    else:
        title, _, body = text.partition("\n")
        text = f"{title}\n\n{block}\n{body.lstrip()}"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text(text.rstrip("\n") + "\n")


def render_history(history: list[tuple[str, Result]]) -> str:
    """The history page: every run, newest first, each result's printed headlines with its provenance."""
    runs: dict[str, list[Result]] = {}
    for run, result in sorted(history, key=lambda entry: entry[1].date, reverse=True):
        runs.setdefault(run, []).append(result)
    out = [
        "# Performance history",
        "",
        "Every run `python -m bench.report` recorded (`bench/results/history.jsonl`), newest first; the "
        "[Performance](performance.md) page shows the latest. Figures measured by hand before the report "
        "existed are in the [figures history](changelog-figures.md).",
        "",
    ]
    if not runs:
        out += ["No run recorded yet.", ""]
    for run, results in runs.items():
        out += [f"## `{run}`", "", "| bench | printed | command | date, commit | machine |", "|---|---|---|---|---|"]
        for result in sorted(results, key=lambda r: r.bench):
            printed = "<br>".join(_quote(h.line or f"{h.what}: {h.value:g} {h.unit}") for h in result.headlines)
            out.append(
                f"| {result.bench} | {printed or 'no headline'} | {_quote(_plots.shown_command(result))} | "
                f"{result.date}, `{result.commit}` | {result.machine.removeprefix('machine: ')}, {result.cpu} |"
            )
        out.append("")
    return "\n".join(out)


def manifest_reasons(manifest: dict[str, Any]) -> dict[str, str]:
    """Why each bench of a run gave no result, from its run.json (status and reason)."""
    reasons = {}
    for bench, entry in (manifest.get("benches") or {}).items():
        if entry.get("status") != "ok":
            reasons[bench] = f"{entry.get('status')}: {entry.get('reason', '')}".rstrip(": ")
    return reasons
