"""The Performance page's figures (matplotlib, Agg backend), each drawn from one bench's Result.

Every plotter takes a Result and a PNG path, draws only from the Result's rows and headlines, and
returns False without writing anything when the Result lacks the rows it needs (the page then says
so). Every figure carries its provenance in a footer: the command, date, commit and machine stored
in the Result, so a PNG separated from the page still says how it was measured.

Rows each plotter reads (what a bench passes to ``Result.row``):

- serving: ``side``, ``concurrency``, ``req_per_s``, ``p50_ms``, ``p99_ms`` (optional ``series_per_request``:
  only 1-series rows are drawn when present); or wide per-round rows with keys ``<side>_c<N>_rps`` and
  ``<side>_c<N>_p50_ms`` / ``_p99_ms`` (their median over rounds is drawn);
- latency: ``side`` and ``latencies_ms`` (a list of request latencies), or else ``side``, ``concurrency`` and
  any of ``p50_ms``, ``p90_ms``, ``p95_ms``, ``p99_ms``, ``max_ms`` (the highest concurrency is drawn);
- training: ``kind="speed"`` rows (``round``, ``side``, ``batches_per_second``) and ``kind="accuracy"`` rows
  (``seed``, ``side``, ``mean_wQuantileLoss``), as bench.train_speed writes them;
- image: bench.image_cold_start's ``kind="cold_start"`` (``seconds_to_ping``) and ``kind="layer"``
  (``megabytes``, ``layer``) rows;
- accuracy: ``method``, ``dataset`` and ``mean_wQuantileLoss`` (``seed`` optional), as bench.accuracy writes them;
- ratios: no rows, the Result's paired headlines (unit ``x``: median, min-max, target).
"""

from __future__ import annotations

import math
import re
import statistics
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import matplotlib

matplotlib.use("Agg")  # files only: never a display, also when a DISPLAY is set
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from bench._results import Result  # noqa: E402

Plotter = Callable[[Result, Path], bool]
SEASONAL_NAIVE = re.compile(r"seasonal[ _-]?naive", re.IGNORECASE)
TARGET_NUMBER = re.compile(r"([<>]=?)\s*([0-9.]+)")
WIDE_SERVING_KEY = re.compile(r"^(?P<side>.+)_c(?P<concurrency>\d+)_(?P<metric>rps|p50_ms|p99_ms)$")


def shown_command(result: Result) -> str:
    """The bench's command without its ``--json PATH`` (where the result went is not how it was measured)."""
    argv, shown = list(result.argv), []
    while argv:
        argument = argv.pop(0)
        if argument == "--json":
            argv = argv[1:]
        elif not argument.startswith("--json="):
            shown.append(argument)
    return " ".join([".venv/bin/python -m bench." + result.bench, *shown])


def provenance(result: Result) -> str:
    """The footer every figure carries: how the figure was measured."""
    return f"{shown_command(result)}\n{result.date}, commit {result.commit}; {result.machine}; {result.cpu}"


def _save(fig: Figure, result: Result, path: Path) -> bool:
    footer = "\n".join(textwrap.fill(line, 150) for line in provenance(result).splitlines())
    fig.text(0.01, 0.01, footer, fontsize=7, va="bottom", ha="left", family="monospace", color="0.3")
    lines = footer.count("\n") + 1
    fig.tight_layout(rect=(0, 0.025 * lines + 0.02, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _rows(result: Result, *fields: str, **equal: Any) -> list[dict[str, Any]]:
    """Rows that have every field (not None) and match every ``equal`` value."""
    return [
        row
        for row in result.rows
        if all(row.get(f) is not None for f in fields) and all(row.get(k) == v for k, v in equal.items())
    ]


def _by(rows: Iterable[dict[str, Any]], field: str) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[str(row.get(field, "?"))].append(row)
    return dict(groups)


def _target_value(target: str) -> Optional[float]:
    match = TARGET_NUMBER.search(target or "")
    return float(match.group(2)) if match else None


def _serving_rows(result: Result) -> list[dict[str, Any]]:
    """Long rows (side, concurrency, req_per_s, p50_ms, p99_ms) as written, or made from wide per-round rows."""
    rows = _rows(result, "side", "concurrency", "req_per_s")
    if rows:
        return rows
    values: dict[tuple[str, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for row in result.rows:
        for name, value in row.items():
            match = WIDE_SERVING_KEY.match(name)
            if match and isinstance(value, (int, float)):
                point = (match["side"], int(match["concurrency"]))
                values[point]["req_per_s" if match["metric"] == "rps" else match["metric"]].append(float(value))
    return [
        {"side": side, "concurrency": concurrency, **{k: statistics.median(v) for k, v in metrics.items()}}
        for (side, concurrency), metrics in values.items()
        if metrics.get("req_per_s")
    ]


def serving(result: Result, path: Path) -> bool:
    """Throughput and p50/p99 against concurrency, one line per side (ours, each peer, a baseline)."""
    rows = _serving_rows(result)
    if any("series_per_request" in row for row in rows):
        rows = [row for row in rows if row.get("series_per_request") == 1]
    if not rows:
        return False
    fig, (rate, latency) = plt.subplots(1, 2, figsize=(11, 4.6))
    for side, group in _by(rows, "side").items():
        group = sorted(group, key=lambda row: row["concurrency"])
        x = [row["concurrency"] for row in group]
        (line,) = rate.plot(x, [row["req_per_s"] for row in group], marker="o", label=side)
        for field, style in (("p50_ms", "-"), ("p99_ms", "--")):
            points = [(row["concurrency"], row[field]) for row in group if row.get(field) is not None]
            if points:
                latency.plot(*zip(*points), style, marker="o", color=line.get_color(), label=f"{side} {field[:3]}")
    rate.set(title="one-series requests: throughput", xlabel="concurrency", ylabel="requests/s")
    latency.set(title="latency (solid p50, dashed p99)", xlabel="concurrency", ylabel="ms", yscale="log")
    for axes in (rate, latency):
        axes.set_xticks(sorted({row["concurrency"] for row in rows}))
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    return _save(fig, result, path)


def latency_distribution(result: Result, path: Path) -> bool:
    """Each side's request latencies (an empirical CDF), or its percentiles when only those were kept."""
    samples = _rows(result, "side", "latencies_ms")
    fig, axes = plt.subplots(figsize=(8, 4.4))
    if samples:
        for side, group in _by(samples, "side").items():
            values = sorted(v for row in group for v in row["latencies_ms"])
            if values:
                axes.plot(
                    values, [(i + 1) / len(values) for i in range(len(values))], label=f"{side} (n={len(values)})"
                )
        axes.set(xlabel="latency, ms", ylabel="fraction of requests at or below", xscale="log")
    else:
        names = ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "max_ms")
        rows = [row for row in _rows(result, "side", "concurrency") if any(row.get(n) is not None for n in names)]
        if any("series_per_request" in row for row in rows):
            rows = [row for row in rows if row.get("series_per_request") == 1]
        if not rows:
            plt.close(fig)
            return False
        top = max(row["concurrency"] for row in rows)
        for side, group in _by([row for row in rows if row["concurrency"] == top], "side").items():
            row = group[-1]
            points = [(n.removesuffix("_ms"), row[n]) for n in names if row.get(n) is not None]
            axes.plot(*zip(*points), marker="o", label=side)
        axes.set(xlabel=f"percentile at concurrency {top}", ylabel="latency, ms", yscale="log")
    axes.set_title("latency distribution")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return _save(fig, result, path)


def training(result: Result, path: Path) -> bool:
    """Batches/s of ours and plain GluonTS per paired round; held-out mean_wQuantileLoss per seed."""
    speed = _rows(result, "round", "side", "batches_per_second", kind="speed")
    accuracy = _rows(result, "seed", "side", "mean_wQuantileLoss", kind="accuracy")
    if not speed:
        return False
    panels = 2 if accuracy else 1
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4.4), squeeze=False)
    _grouped_bars(axes[0][0], speed, "round", "batches_per_second")
    axes[0][0].set(title="training speed, paired rounds", xlabel="round", ylabel="batches/s")
    if accuracy:
        _grouped_bars(axes[0][1], accuracy, "seed", "mean_wQuantileLoss")
        axes[0][1].set(title="held-out mean_wQuantileLoss (lower is better)", xlabel="seed", ylabel="wQL")
    return _save(fig, result, path)


def _grouped_bars(axes: Any, rows: list[dict[str, Any]], group_field: str, value_field: str) -> None:
    groups = sorted({row[group_field] for row in rows})
    sides = list(dict.fromkeys(str(row["side"]) for row in rows))
    width = 0.8 / len(sides)
    for n, side in enumerate(sides):
        values = {row[group_field]: row[value_field] for row in rows if str(row["side"]) == side}
        xs = [i + n * width for i, g in enumerate(groups) if g in values]
        axes.bar(xs, [values[g] for g in groups if g in values], width, label=side)
    axes.set_xticks([i + 0.4 - width / 2 for i in range(len(groups))], [str(g) for g in groups])
    axes.grid(axis="y", alpha=0.3)
    axes.legend(fontsize=8)


def image(result: Result, path: Path) -> bool:
    """The image's layers by size against the size target; each cold start's seconds to /ping 200."""
    layers = _rows(result, "megabytes", "layer", kind="layer")
    starts = _rows(result, "seconds_to_ping", kind="cold_start")
    if not layers and not starts:
        return False
    if layers and starts:
        fig, (sizes, pings) = plt.subplots(1, 2, figsize=(12, 4.6), gridspec_kw={"width_ratios": [3, 2]})
    else:  # one panel: the layers alone, or the cold starts alone (bench.serverless_cold_start)
        fig, only = plt.subplots(figsize=(8, 4.6))
        sizes = pings = only
    if layers:
        shown = sorted((row for row in layers if row["megabytes"] >= 1), key=lambda row: row["megabytes"])
        labels = [textwrap.shorten(str(row["layer"]), 45) for row in shown]
        sizes.barh(labels, [row["megabytes"] for row in shown])
        total = sum(row["megabytes"] for row in layers)
        target = next((h.target for h in result.headlines if h.unit == "GB" and h.target), "")
        sizes.set(
            title=f"layers, {total / 1000:.2f} GB in all" + (f" [target {target}]" if target else ""), xlabel="MB"
        )
        sizes.tick_params(axis="y", labelsize=7)
    if starts:
        for image_name, group in _by(starts, "image").items():
            runs = [row.get("run", i + 1) for i, row in enumerate(group)]
            pings.plot(runs, [row["seconds_to_ping"] for row in group], "o-", label=image_name)
            pings.set_xticks(runs)
        ping_target = next((_target_value(h.target) for h in result.headlines if h.unit == "s"), None)
        if ping_target is not None:
            pings.axhline(ping_target, color="red", linestyle=":", label=f"target {ping_target:g} s")
        pings.set(title="docker run ... serve -> /ping 200", xlabel="run", ylabel="seconds", ylim=(0, None))
        pings.legend(fontsize=7)
        pings.grid(alpha=0.3)
    return _save(fig, result, path)


def _wql(row: dict[str, Any]) -> Optional[float]:
    value = row.get("mean_wQuantileLoss")
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def leaderboard(result: Result) -> list[tuple[str, float, str]]:
    """(method, score, what the score is) best first: the geometric mean over data sets of the method's
    wQL relative to seasonal naive on the same data set when seasonal naive ran, else the mean wQL."""
    rows = [row for row in _rows(result, "method", "dataset") if _wql(row) is not None]
    per: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in rows:
        per[(str(row["method"]), str(row["dataset"]))].append(_wql(row) or 0.0)
    mean = {k: statistics.mean(v) for k, v in per.items()}
    methods = sorted({m for m, _ in mean})
    naive = next((m for m in methods if SEASONAL_NAIVE.search(m)), None)
    board = []
    for method in methods:
        datasets = [d for m, d in mean if m == method]
        if naive:
            ratios = [mean[(method, d)] / mean[(naive, d)] for d in datasets if mean.get((naive, d))]
            if ratios:
                board.append((method, math.exp(statistics.mean(math.log(r) for r in ratios)), "x seasonal naive"))
        else:
            board.append((method, statistics.mean(mean[(method, d)] for d in datasets), "mean wQL"))
    return sorted(board, key=lambda entry: entry[1])


def accuracy(result: Result, path: Path) -> bool:
    """The accuracy leaderboard: one bar per method, best at the top."""
    board = leaderboard(result)
    if not board:
        return False
    fig, axes = plt.subplots(figsize=(8, 0.45 * len(board) + 1.8))
    names = [entry[0] for entry in reversed(board)]
    axes.barh(names, [entry[1] for entry in reversed(board)])
    what = board[0][2]
    if what == "x seasonal naive":
        axes.axvline(1.0, color="0.4", linestyle=":")
        axes.set_xlabel("geometric mean over data sets of wQL / seasonal naive's (lower is better)")
    else:
        axes.set_xlabel("mean wQL over data sets (lower is better)")
    axes.set_title("accuracy leaderboard")
    axes.grid(axis="x", alpha=0.3)
    return _save(fig, result, path)


def ratios(result: Result, path: Path) -> bool:
    """Every paired headline of the Result, first at the top: median of per-round ratios, min-max bar,
    target line; on a log scale when the ratios span more than 20x (a 0.6x beside a 290x)."""
    paired = [h for h in result.headlines if h.unit == "x"]
    if not paired or any(h.value <= 0 for h in paired):
        return False
    fig, axes = plt.subplots(figsize=(9, 0.8 * len(paired) + 1.8))
    top = len(paired) - 1
    for n, headline in enumerate(paired):
        y = top - n
        low = headline.low if headline.low is not None else headline.value
        high = headline.high if headline.high is not None else headline.value
        axes.errorbar(
            headline.value, y, xerr=[[headline.value - low], [high - headline.value]], fmt="o", capsize=4, color="C0"
        )
        rounds = f" ({headline.rounds} rounds)" if headline.low is not None else ""  # a paired ratio, not a figure()
        axes.annotate(f"{headline.value:.2f}x{rounds}", (headline.value, y), xytext=(6, 6),
                      textcoords="offset points", fontsize=8)  # fmt: skip
        target = _target_value(headline.target)
        if target is not None:
            axes.plot([target, target], [y - 0.3, y + 0.3], color="red", linestyle=":")
    axes.set_yticks([top - n for n in range(len(paired))], [textwrap.fill(h.what, 45) for h in paired], fontsize=8)
    axes.set_ylim(-0.7, top + 0.7)
    axes.set_xlabel("ratio (median of paired rounds; bar: min-max; red: target)")
    reach = [h.high if h.high is not None else h.value for h in paired]
    reach += [t for t in (_target_value(h.target) for h in paired) if t is not None]
    lowest = min(min(h.low if h.low is not None else h.value for h in paired), *reach)
    if lowest > 0 and max(reach) / lowest > 20:
        axes.set_xscale("log")
        axes.set_xlim(lowest / 2, max(reach) * 3)
        axes.axvline(1.0, color="0.5", linewidth=0.8)
    else:
        axes.set_xlim(0, max(reach) * 1.25)  # room for the labels right of the highest point
    axes.grid(axis="x", alpha=0.3)
    return _save(fig, result, path)
