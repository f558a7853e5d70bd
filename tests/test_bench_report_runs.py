"""bench.report's runner on real subprocesses (no bench measures anything here: each is stopped or empty)."""

from __future__ import annotations

import signal

from bench import report


def test_a_bench_over_its_limit_is_interrupted_and_said_so(tmp_path):
    # Started with SIGINT ignored, as from a background shell: the bench must still take the interrupt.
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        slow = report.Bench("train_stop", None, (), 0, 0.05)  # a real training job, stopped after 3 s
        entry = report.run_bench(slow, full=True, folder=tmp_path, minutes=0.05)
    finally:
        signal.signal(signal.SIGINT, previous)

    assert entry["status"] == "timeout"
    assert entry["reason"] == "over its 0.1-minute limit, stopped"
    assert entry["seconds"] < 3 + report.STOP_GRACE_SECONDS / 2  # the interrupt stopped it, not the kill
    assert "KeyboardInterrupt" in (tmp_path / "train_stop.log").read_text()
    assert not (tmp_path / "train_stop.json").exists()


def test_a_bench_that_writes_no_result_has_failed(tmp_path):
    (tmp_path / "_paired.json").write_text("{}")  # left by an earlier attempt: must not pass for this one
    silent = report.Bench("_paired", None, (), 0, 1)  # `python -m bench._paired` defines and exits 0

    entry = report.run_bench(silent, full=True, folder=tmp_path, minutes=1)

    assert entry["status"] == "failed"
    assert entry["reason"] == "exited 0 without writing _paired.json"
    assert entry["command"] == ".venv/bin/python -m bench._paired --json _paired.json"
