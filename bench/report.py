"""Runs the headline benches and renders the docs' Performance page from their results (issue #27).

    .venv/bin/python -m bench.report                    # the quick profile (a 20-minute budget)
    .venv/bin/python -m bench.report --full             # every bench, long profiles (hours)
    .venv/bin/python -m bench.report --only train_speed [--only query]   # just these (quick unless --full)
    .venv/bin/python -m bench.report --from-results DIR # render from Result files already there, run nothing
    .venv/bin/python -m bench.report --list             # the benches, their profiles and commands

Each bench runs as a subprocess (``python -m bench.NAME ... --json FILE``), one after the other (never
two at once: they would measure each other), each bounded by its time limit (then interrupted, so
its own clean-up runs, and killed if it does not stop). The results go to
``bench/results/<date>-<commit>/``: ``<bench>.json`` (bench/_results.py's Result), ``<bench>.log`` (what
it printed) and ``run.json`` (status, seconds and, for a bench without a result, why). Every result
is added to ``bench/results/history.jsonl``; ``docs/performance.md`` (between its markers) shows the
run just made or rendered, with its figures (PNG under ``docs/img/performance/``), and
``docs/performance-history.md`` every run. Runs started the same day from the same commit share a
folder (``--only a`` then ``--only b`` make one run). A bench that needs Docker is skipped, and said
so, when no engine answers; in the quick profile, a bench left without time by the budget is skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from bench._history import (
    HISTORY,
    MANIFEST,
    RESULTS,
    ResultError,
    load_history,
    read_folder,
    read_manifest,
    record,
    run_name,
)
from bench._page import manifest_reasons, render_block, render_history, write_page
from bench._paired import machine
from bench._results import Result, commit

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
STOP_GRACE_SECONDS = 60  # after the interrupt, for the bench's own clean-up (containers, servers)


@dataclass(frozen=True)
class Bench:
    """One bench as the report runs it: its quick and full arguments and their time limits."""

    name: str
    quick: Optional[tuple[str, ...]]  # None: too long for the quick profile (runs with --full or --only)
    full: tuple[str, ...]
    quick_minutes: float  # the quick run's time limit on a 2-core machine
    full_minutes: float
    docker: bool = False

    def arguments(self, full: bool) -> tuple[str, ...]:
        return self.full if full or self.quick is None else self.quick

    def minutes(self, full: bool) -> float:
        return self.full_minutes if full or self.quick is None else self.quick_minutes

    def command(self, full: bool, json_path: str = "FILE") -> list[str]:
        return ["-m", f"bench.{self.name}", *self.arguments(full), "--json", json_path]


def args(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# Each limit bounds one bench on a loaded 2-core machine (most finish well inside it); the quick profile
# as a whole is also bounded by QUICK_BUDGET_MINUTES, in this order: the headline benches first.
QUICK_BUDGET_MINUTES = 20.0
BENCHES = (
    # serve_throughput's and accuracy's arguments are those of their issue #27 / #22 versions (--rounds, --full)
    Bench("serve_throughput", args("--rounds 2 --seconds 5"), args("--full --soak-seconds 600"), 6, 40),
    Bench(
        "train_speed",
        args("--repeats 2 --backends torch --epochs 1 --batches-per-epoch 20 --accuracy-seeds 1"),
        args("--repeats 3 --backends torch --accuracy-seeds 1 2"),
        6,
        60,
    ),
    Bench("accuracy", (), args("--full"), 5, 120),
    Bench("image_cold_start", args("--runs 3"), args("--runs 5"), 2, 5, docker=True),
    Bench("ecs_local", args("--rounds 2 --seconds 8"), args("--rounds 3"), 4, 10, docker=True),
    Bench("serverless_batch", args("--series 2000 --direct-series 500"), (), 3, 20),
    Bench("etl_throughput", args("--devices 20 --days 30 --rounds 1"), args("--rounds 3"), 3, 30),
    Bench("query", args("--readings 2000000 --rounds 2"), (), 2, 10),
    Bench("multi_model", None, (), 0, 15),
    Bench("train_scaling", None, args("--repeats 2"), 0, 60, docker=True),
    Bench("warm_start", None, (), 0, 120),
    Bench("train_stop", None, (), 0, 20),
    Bench("serverless_cold_start", None, (), 0, 10, docker=True),
    Bench("onnx_predict", None, (), 0, 15),
    Bench("mlflow_formats", None, (), 0, 15),
)
BY_NAME = {bench.name: bench for bench in BENCHES}


def docker_answers() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def limit_minutes(bench: Bench, full: bool, spent_minutes: float) -> float:
    """The bench's own limit, capped in the quick profile by what is left of its budget (0: none left)."""
    if full:
        return bench.minutes(full)
    return max(0.0, min(bench.minutes(full), QUICK_BUDGET_MINUTES - spent_minutes))


def run_bench(bench: Bench, full: bool, folder: Path, minutes: float) -> dict[str, object]:
    """Runs one bench into ``folder`` for at most ``minutes``; returns its run.json entry (ok, failed, timeout)."""
    json_path = folder / f"{bench.name}.json"
    json_path.unlink(missing_ok=True)  # a result left by an earlier attempt must not pass for this one
    command = [sys.executable, *bench.command(full, str(json_path))]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    limit = minutes * 60
    started = time.monotonic()
    with (folder / f"{bench.name}.log").open("w") as log:
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: stop() reaches its servers and trainers too
            preexec_fn=interruptible,
        )
        try:
            code = process.wait(timeout=limit)
            status, reason = ("ok", "") if code == 0 else ("failed", f"exit status {code}, see {bench.name}.log")
        except subprocess.TimeoutExpired:
            stop(process)
            status, reason = "timeout", f"over its {minutes:.1f}-minute limit, stopped"
    if status == "ok" and not json_path.exists():
        status, reason = "failed", f"exited 0 without writing {json_path.name}"
    return {
        "status": status,
        "reason": reason,
        "seconds": round(time.monotonic() - started, 1),
        "command": " ".join([".venv/bin/python", *bench.command(full, json_path.name)]),
    }


def interruptible() -> None:
    """In the bench's process before exec: SIGINT back to its default. A shell starts background jobs with
    SIGINT ignored, and an ignored signal stays ignored across exec, so a bench started from one would
    ignore stop()'s interrupt; with the default, its Python turns it into KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def stop(process: subprocess.Popen[bytes]) -> None:
    """Interrupts the bench's process group (its finally blocks remove containers), then kills it."""
    try:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def selected(only: list[str], full: bool) -> list[Bench]:
    if only:
        return [BY_NAME[name] for name in only]
    return [bench for bench in BENCHES if full or bench.quick is not None]


def render(history_path: Path, docs: Path, run: str, reasons: dict[str, str]) -> list[str]:
    """Writes the Performance page (for ``run``) and the history page; returns the benches ``run`` lacks."""
    history = load_history(history_path)
    block, missing = render_block(history, docs, run, reasons)
    write_page(docs / "performance.md", block)
    (docs / "performance-history.md").write_text(render_history(history))
    return missing


def measure(benches: list[Bench], full: bool, results_root: Path, history_path: Path, docs: Path) -> int:
    print(machine(), flush=True)
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1):
        print(f"the machine is loaded (load {load:.1f}): figures measured now measure a shared machine", flush=True)
    run = run_name(Result("report", []).date, commit())
    folder = results_root / run
    folder.mkdir(parents=True, exist_ok=True)
    manifest = read_manifest(folder)
    entries = manifest.setdefault("benches", {})
    manifest.update(run=run, profile="full" if full else "quick")
    have_docker = any(b.docker for b in benches) and docker_answers()
    started = time.monotonic()
    for bench in benches:
        minutes = limit_minutes(bench, full, (time.monotonic() - started) / 60)
        if bench.docker and not have_docker:
            entries[bench.name] = {"status": "skipped", "reason": "no Docker engine answered `docker info`"}
        elif minutes < 0.5:
            reason = f"the quick profile's {QUICK_BUDGET_MINUTES:g}-minute budget was spent"
            entries[bench.name] = {"status": "skipped", "reason": reason}
        else:
            print(f"{bench.name}: running (limit {minutes:.1f} min)", flush=True)
            entries[bench.name] = run_bench(bench, full, folder, minutes)
        entry = entries[bench.name]
        took = f" in {entry['seconds']} s" if "seconds" in entry else ""
        print(f"{bench.name}: {entry['status']}{took} {entry['reason']}".rstrip(), flush=True)
        (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    results = read_folder(folder)
    record(run, results, history_path)
    missing = render(history_path, docs, run, manifest_reasons(manifest))
    say_done(folder, results, missing, docs)
    return 0 if all(entries[b.name]["status"] == "ok" for b in benches) else 1


def from_results(source: Path, results_root: Path, history_path: Path, docs: Path) -> int:
    """Renders from Result files already in ``source`` (copied into bench/results/ when elsewhere)."""
    results = read_folder(source) if source.is_dir() else []
    if not results:
        print(f"{source}: no bench results, so nothing rendered. Missing (one command each):", file=sys.stderr)
        for bench in BENCHES:
            print(
                f"  {bench.name}: .venv/bin/python {' '.join(bench.command(False, str(source / (bench.name + '.json'))))}",
                file=sys.stderr,
            )
        return 1
    if source.resolve().parent == results_root.resolve():
        run, folder = source.name, source
    else:
        first = min(results, key=lambda r: r.date)
        run = run_name(first.date, first.commit)
        folder = results_root / run
        folder.mkdir(parents=True, exist_ok=True)
        for path in [*source.glob("*.json"), *source.glob("*.log")]:
            shutil.copy2(path, folder / path.name)
    added = record(run, results, history_path)
    print(f"{len(results)} result(s) from {source}, {added} new in {history_path}", flush=True)
    missing = render(history_path, docs, run, manifest_reasons(read_manifest(folder)))
    say_done(folder, results, missing, docs)
    return 0


def say_done(folder: Path, results: list[Result], missing: list[str], docs: Path) -> None:
    for result in results:
        for headline in result.headlines:
            print(f"  {result.bench}: {headline.line or headline.what}")
    print(f"results: {folder}; page: {docs / 'performance.md'}")
    if missing:
        print(f"not measured in this run: {', '.join(missing)}")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help="every bench with its long profile")
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="run this bench (repeatable)")
    parser.add_argument("--from-results", type=Path, metavar="DIR", help="render from Result files in DIR; run nothing")
    parser.add_argument("--list", action="store_true", help="print the benches and their commands, run nothing")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where run folders go (default: %(default)s)")
    parser.add_argument("--history", type=Path, default=HISTORY, help="the history file (default: %(default)s)")
    parser.add_argument("--docs", type=Path, default=DOCS, help="the docs folder rendered into (default: %(default)s)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.only if name not in BY_NAME]
    if unknown:
        parser.error(f"--only {', '.join(unknown)}: no such bench; the benches are {', '.join(BY_NAME)}")
    if args.from_results and (args.only or args.full):
        parser.error("--from-results runs nothing: it takes neither --only nor --full")
    if args.list:
        for bench in BENCHES:
            for full in (False, True):
                if full or bench.quick is not None:
                    profile = "full " if full else "quick"
                    print(
                        f"{bench.name:22s} {profile} <= {bench.minutes(full):>5g} min  .venv/bin/python {' '.join(bench.command(full))}"
                    )
        return 0
    try:
        if args.from_results:
            return from_results(args.from_results, args.results, args.history, args.docs)
        return measure(selected(args.only, args.full), args.full, args.results, args.history, args.docs)
    except ResultError as error:
        print(f"bench.report: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
