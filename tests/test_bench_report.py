"""`python -m bench.report` renders the Performance page from Result files (issue #27): no bench runs here.

Each test writes small Result files the way a bench does (bench/_results.py), then calls the report's
CLI in-process with its own results, history and docs folders under tmp_path.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import report
from bench._paired import Paired
from bench._results import Result

pytestmark = pytest.mark.unit

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MACHINE = "machine: 2 cores, load average 0.50 0.40 0.30"


def fake(bench: str, argv: list[str], date: str, commit: str, machine: str = MACHINE) -> Result:
    """A Result as the bench would write it, without asking git or the machine."""
    return Result(bench, argv, date=date, commit=commit, machine=machine, cpu="Test CPU", cores=2)


def paired(what: str, pairs: list[tuple[float, float]], target: str = "") -> Paired:
    rounds = Paired(what, target=target)
    for ours, base in pairs:
        rounds.rounds.append((ours, base))  # not .add(): no printed round lines in the test output
    return rounds


def serve_result(date: str, commit: str) -> Result:
    result = fake("serve_throughput", ["--seconds", "5", "--json", "/tmp/x/serve_throughput.json"], date, commit)
    result.headline(paired("c=8 one-series, ours / gluonts.shell+torch req/s", [(120, 10), (130, 11)], ">= 10x"))
    for side, rate in (("ours", 60.0), ("gluonts.shell+torch", 6.0), ("gluonts.shell+mxnet", 5.0)):
        for concurrency in (1, 4, 8):
            result.row(
                side=side,
                concurrency=concurrency,
                series_per_request=1,
                req_per_s=rate * concurrency**0.5,
                p50_ms=10.0 * concurrency,
                p99_ms=30.0 * concurrency,
            )
        result.row(side=side, concurrency=8, series_per_request=1, latencies_ms=[5.0, 7.5, 9.0, 40.0])
    return result


def train_result(date: str, commit: str, ours: float = 2.0) -> Result:
    result = fake("train_speed", ["--repeats", "2", "--backends", "torch"], date, commit)
    result.headline(
        paired("torch training ours / plain GluonTS batches/s", [(ours, 1.0), (ours * 1.1, 1.0)], ">= 1.5x")
    )
    for round_ in (1, 2):
        result.row(kind="speed", backend="torch", round=round_, side="ours", batches_per_second=ours)
        result.row(kind="speed", backend="torch", round=round_, side="plain GluonTS", batches_per_second=1.0)
    for side in ("ours", "plain GluonTS"):
        result.row(kind="accuracy", backend="torch", seed=1, side=side, mean_wQuantileLoss=0.05)
    return result


def accuracy_result(date: str, commit: str) -> Result:
    result = fake("accuracy", [], date, commit)
    for method, wql in (("deepar", 0.08), ("seasonal_naive", 0.10), ("AutoETS", 0.09)):
        for dataset in ("co2", "sample"):
            for seed in (1, 2):
                result.row(method=method, dataset=dataset, seed=seed, mean_wQuantileLoss=wql + 0.001 * seed)
    return result


def query_result(date: str, commit: str, ratio: float = 2.41) -> Result:
    result = fake("query", ["--readings", "2000000"], date, commit)
    result.headline(paired("daily_stats duckdb / pandas speed", [(ratio, 1.0), (ratio * 0.9, 1.0)], ">= 5x"))
    return result


def write(folder: Path, *results: Result) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for result in results:
        result.write(folder / f"{result.bench}.json")
    return folder


def run_report(tmp_path: Path, *arguments: str) -> int:
    return report.main(
        [
            *arguments,
            "--results",
            str(tmp_path / "results"),
            "--history",
            str(tmp_path / "results" / "history.jsonl"),
            "--docs",
            str(tmp_path / "docs"),
        ]
    )


def test_rendering_a_folder_of_results_names_each_figures_command_date_and_commit(tmp_path, capsys):
    date = "2026-12-08T00:10:00+00:00"
    query = query_result(date, "aaa1111")
    folder = write(
        tmp_path / "incoming",
        serve_result(date, "aaa1111"),
        train_result(date, "aaa1111"),
        accuracy_result(date, "aaa1111"),
        query,
    )

    assert run_report(tmp_path, "--from-results", str(folder)) == 0

    page = (tmp_path / "docs" / "performance.md").read_text()
    for command in (
        ".venv/bin/python -m bench.serve_throughput --seconds 5",
        ".venv/bin/python -m bench.train_speed --repeats 2 --backends torch",
        ".venv/bin/python -m bench.query --readings 2000000",
    ):
        assert f"Command: `{command}`" in page
    assert "/tmp/x/serve_throughput.json" not in page  # where a result went is not how it was measured
    assert page.count(f"Measured {date}, commit `aaa1111`") == 4
    assert query.headlines[0].line.startswith("daily_stats duckdb / pandas speed: 2.29x, median of 2 paired round(s)")
    assert f"| daily_stats duckdb / pandas speed | `{query.headlines[0].line}` | >= 5x |" in page
    images = tmp_path / "docs" / "img" / "performance"
    for name in ("serving", "latency", "training", "accuracy", "ratios-query", "ratios-serve_throughput"):
        assert f"(img/performance/{name}.png)" in page
        assert (images / f"{name}.png").read_bytes().startswith(PNG_MAGIC)
    # benches without a result say so, with no number
    ecs = page.split("### ECS: a second local replica", 1)[1].split("###", 1)[0]
    assert ecs.strip() == (
        "**Not measured in this run**. No earlier result either. "
        "To measure it: `.venv/bin/python -m bench.report --only ecs_local`."
    )
    # the run's files were archived under results/<date>-<commit>/ and recorded in the history
    assert sorted(p.name for p in (tmp_path / "results" / "2026-12-08-aaa1111").glob("*.json")) == [
        "accuracy.json",
        "query.json",
        "serve_throughput.json",
        "train_speed.json",
    ]
    assert "not measured in this run: image_cold_start" in capsys.readouterr().out


def test_the_accuracy_leaderboard_ranks_methods_against_seasonal_naive():
    from bench._plots import leaderboard

    board = leaderboard(accuracy_result("2026-12-08T00:00:00+00:00", "c"))

    assert [method for method, _, _ in board] == ["deepar", "AutoETS", "seasonal_naive"]
    assert board[-1][1] == pytest.approx(1.0)
    assert board[0][1] == pytest.approx(0.0815 / 0.1015)


def test_history_keeps_both_runs_and_the_page_shows_the_latest(tmp_path):
    first_date, second_date = "2026-12-07T10:00:00+00:00", "2026-12-08T09:00:00+00:00"
    old_query, new_query = query_result(first_date, "aaa1111", 2.41), query_result(second_date, "bbb2222", 3.50)
    training_result = train_result(first_date, "aaa1111")
    first = write(tmp_path / "first", old_query, training_result)
    second = write(tmp_path / "second", new_query)

    assert run_report(tmp_path, "--from-results", str(first)) == 0
    assert (tmp_path / "docs" / "img" / "performance" / "training.png").exists()
    assert run_report(tmp_path, "--from-results", str(second)) == 0
    assert run_report(tmp_path, "--from-results", str(second)) == 0  # rendering twice adds nothing

    lines = (tmp_path / "results" / "history.jsonl").read_text().splitlines()
    assert [(json.loads(line)["run"], json.loads(line)["bench"]) for line in lines] == [
        ("2026-12-07-aaa1111", "query"),
        ("2026-12-07-aaa1111", "train_speed"),
        ("2026-12-08-bbb2222", "query"),
    ]
    page = (tmp_path / "docs" / "performance.md").read_text()
    assert "## Run `2026-12-08-bbb2222`" in page
    assert new_query.headlines[0].line in page and old_query.headlines[0].line not in page
    training = page.split("### Training:", 1)[1].split("###", 1)[0]
    assert "**Not measured in this run**" in training
    assert f"Last measured {first_date} at commit `aaa1111`" in training
    assert training_result.headlines[0].line not in page  # the older number is only in the history, dated
    assert not (tmp_path / "docs" / "img" / "performance" / "training.png").exists()

    history = (tmp_path / "docs" / "performance-history.md").read_text()
    assert history.index("## `2026-12-08-bbb2222`") < history.index("## `2026-12-07-aaa1111`")
    assert old_query.headlines[0].line in history and new_query.headlines[0].line in history
    assert training_result.headlines[0].line in history
    assert f"{first_date}, `aaa1111`" in history


def test_rendering_keeps_the_hand_written_parts_of_the_page(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "performance.md").write_text("# Performance\n\nHand-written intro.\n\n## How figures are made\n\nText.\n")
    folder = write(tmp_path / "run", query_result("2026-12-08T00:00:00+00:00", "ccc3333"))

    assert run_report(tmp_path, "--from-results", str(folder)) == 0
    assert run_report(tmp_path, "--from-results", str(folder)) == 0

    page = (docs / "performance.md").read_text()
    assert page.startswith("# Performance\n\n<!-- bench.report: begin")
    assert page.count("<!-- bench.report: begin") == 1 and page.count("## Run `") == 1
    assert page.index("<!-- bench.report: end -->") < page.index("Hand-written intro.") < page.index("## How figures")


def test_from_results_on_an_empty_folder_says_what_is_missing_and_renders_nothing(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()

    assert run_report(tmp_path, "--from-results", str(empty)) == 1

    err = capsys.readouterr().err
    assert f"{empty}: no bench results, so nothing rendered" in err
    for bench in report.BENCHES:
        assert f"  {bench.name}: .venv/bin/python -m bench.{bench.name}" in err
    assert f"--json {empty / 'train_speed.json'}" in err
    assert not (tmp_path / "docs" / "performance.md").exists()


def test_a_file_that_is_not_a_result_is_named(tmp_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "query.json").write_text(json.dumps({"bench": "query", "argv": []}))

    assert run_report(tmp_path, "--from-results", str(folder)) == 2
    assert f"{folder / 'query.json'}: not a bench result, field 'date' is missing" in capsys.readouterr().err


def test_only_refuses_an_unknown_bench(capsys):
    with pytest.raises(SystemExit) as stop:
        report.main(["--only", "nope"])
    assert stop.value.code == 2
    assert "--only nope: no such bench; the benches are serve_throughput, train_speed" in capsys.readouterr().err


def test_the_quick_profile_is_bounded_by_its_budget():
    quick = [bench for bench in report.BENCHES if bench.quick is not None]
    assert {"serve_throughput", "train_speed", "image_cold_start", "accuracy"} <= {b.name for b in quick}
    train = report.BY_NAME["train_speed"]
    assert report.limit_minutes(train, full=False, spent_minutes=0) == train.quick_minutes
    assert report.limit_minutes(train, full=False, spent_minutes=report.QUICK_BUDGET_MINUTES - 2) == 2
    assert report.limit_minutes(train, full=False, spent_minutes=report.QUICK_BUDGET_MINUTES + 5) == 0
    assert report.limit_minutes(train, full=True, spent_minutes=500) == train.full_minutes


def test_a_bench_the_run_could_not_measure_shows_why(tmp_path):
    run = tmp_path / "results" / "2026-12-08-ddd4444"
    write(run, query_result("2026-12-08T01:00:00+00:00", "ddd4444"))
    (run / "run.json").write_text(
        json.dumps(
            {
                "run": run.name,
                "benches": {
                    "query": {"status": "ok", "reason": ""},
                    "train_speed": {"status": "timeout", "reason": "over its 4-minute limit, stopped"},
                    "image_cold_start": {"status": "skipped", "reason": "no Docker engine answered `docker info`"},
                },
            }
        )
    )

    assert run_report(tmp_path, "--from-results", str(run)) == 0

    page = (tmp_path / "docs" / "performance.md").read_text()
    assert "## Run `2026-12-08-ddd4444`" in page
    assert "**Not measured in this run** (timeout: over its 4-minute limit, stopped)." in page
    assert "**Not measured in this run** (skipped: no Docker engine answered `docker info`)." in page
    assert sorted(p.name for p in run.iterdir()) == ["query.json", "run.json"]  # rendered in place, not copied


def test_the_serving_figure_reads_wide_per_round_rows(tmp_path):
    from bench._plots import _serving_rows, serving

    result = fake("serve_throughput", [], "2026-12-08T02:00:00+00:00", "eee5555")
    result.row(round=1, ours_c8_rps=100.0, **{"gluonts.shell+torch_c8_rps": 9.0, "ours_c8_p99_ms": 80.0})
    result.row(round=2, ours_c8_rps=120.0, **{"gluonts.shell+torch_c8_rps": 11.0, "ours_c8_p99_ms": 90.0})

    rows = sorted(_serving_rows(result), key=lambda row: row["side"])
    assert rows == [
        {"side": "gluonts.shell+torch", "concurrency": 8, "req_per_s": 10.0},
        {"side": "ours", "concurrency": 8, "req_per_s": 110.0, "p99_ms": 85.0},
    ]
    assert serving(result, tmp_path / "serving.png")
    assert (tmp_path / "serving.png").read_bytes().startswith(PNG_MAGIC)
    assert not serving(fake("serve_throughput", [], "2026-12-08T02:00:00+00:00", "e"), tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()
