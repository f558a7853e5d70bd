"""The forward-pass batcher in-process: ordering, pass budget, deadlines, cancellation, drain, isolation."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from sagemaker_deepar.serving.batcher import Batcher, DeadlineExceeded

pytestmark = pytest.mark.unit  # in-process: the fast tier (scripts/test.sh --fast)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def fake_sample(calls: list):
    """Each series' samples are filled with its entry's id, so results can be traced back to their job."""

    def sample(entries: list[dict], num_samples: int) -> np.ndarray:
        calls.append(([e["id"] for e in entries], num_samples))
        if any(e.get("fail") for e in entries):
            raise ValueError("bad series")
        return np.stack([np.full((num_samples, 2), e["id"], dtype=np.float32) for e in entries])

    return sample


def entries(*ids: int, **extra) -> list[dict]:
    return [{"id": i, **extra} for i in ids]


def test_queued_jobs_share_a_pass_in_arrival_order_and_get_their_own_rows():
    calls: list = []
    b = Batcher(fake_sample(calls), max_pass_paths=1000, max_pass_series=100, start=False)
    jobs = [
        b.submit(entries(1, 2), 10, deadline=1e12),
        b.submit(entries(3), 10, deadline=1e12),
        b.submit(entries(4, 5, 6), 10, deadline=1e12),
    ]
    b.run_pass(b.next_pass(block=False))
    assert calls == [([1, 2, 3, 4, 5, 6], 10)]
    assert [job.future.result()[:, 0, 0].tolist() for job in jobs] == [[1, 2], [3], [4, 5, 6]]


def test_a_seeded_job_gets_a_pass_of_its_own_and_its_generator():
    """configuration.seed: the draws must not depend on which other requests are queued beside it."""
    calls: list = []
    seen: list = []

    def sample(entries: list[dict], num_samples: int, rng=None) -> np.ndarray:
        seen.append(rng)
        return fake_sample(calls)(entries, num_samples)

    b = Batcher(sample, max_pass_paths=1000, max_pass_series=100, start=False)
    generator = np.random.default_rng(3)
    b.submit(entries(1), 10, 1e12)
    b.submit(entries(2, 3), 10, 1e12, rng=generator)
    b.submit(entries(4), 10, 1e12)
    b.submit(entries(5), 10, 1e12)
    while True:
        jobs = b.next_pass(block=False)
        if not jobs:
            break
        b.run_pass(jobs)
    assert calls == [([1], 10), ([2, 3], 10), ([4, 5], 10)]
    assert seen == [None, generator, None]


def test_a_pass_respects_the_sample_path_budget_and_num_samples():
    calls: list = []
    b = Batcher(fake_sample(calls), max_pass_paths=30, max_pass_series=100, start=False)
    b.submit(entries(1, 2), 10, 1e12)  # 20 paths
    b.submit(entries(3), 5, 1e12)  # other num_samples: a pass of its own
    b.submit(entries(4), 10, 1e12)  # 30 paths in all: fits
    b.submit(entries(5), 10, 1e12)  # over the budget: next pass
    while True:
        jobs = b.next_pass(block=False)
        if not jobs:
            break
        b.run_pass(jobs)
    assert calls == [([1, 2, 4], 10), ([3], 5), ([5], 10)]
    assert b.slice_size(10) == 3 and b.slice_size(1000) == 1


def test_expired_and_abandoned_jobs_are_dropped_before_the_next_pass():
    calls: list = []
    clock = FakeClock()
    b = Batcher(fake_sample(calls), 1000, 100, clock=clock, start=False)
    late = b.submit(entries(1), 10, deadline=clock.now + 1)
    gone = b.submit(entries(2), 10, deadline=clock.now + 100)
    kept = b.submit(entries(3), 10, deadline=clock.now + 100)
    b.abandon(gone)
    clock.now += 2
    b.run_pass(b.next_pass(block=False))
    assert calls == [([3], 10)]  # neither the expired nor the abandoned series were computed
    with pytest.raises(DeadlineExceeded):
        late.future.result(timeout=0)
    assert gone.future.cancelled() and kept.future.result().shape == (1, 10, 2)


def test_wait_gives_up_at_the_deadline_and_the_work_is_never_run():
    calls: list = []
    b = Batcher(fake_sample(calls), 1000, 100, start=False)  # no thread: nothing runs the pass
    job = b.submit(entries(1), 10, deadline=time.monotonic() + 0.2)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        b.wait(job)
    assert 0.15 < time.monotonic() - started < 1.0
    assert b.next_pass(block=False) == [] and calls == []


def test_drain_moves_every_deadline_forward():
    b = Batcher(fake_sample([]), 1000, 100, start=False)
    job = b.submit(entries(1), 10, deadline=time.monotonic() + 60)
    threading.Timer(0.1, b.drain, args=(time.monotonic() + 0.2,)).start()
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        b.wait(job)  # waits in short steps, so it sees the drain deadline
    assert time.monotonic() - started < 1.0
    assert b.deadline_of(b.submit(entries(2), 10, deadline=1e12)) == b.drain_deadline


def test_a_failing_series_fails_only_its_own_job():
    calls: list = []
    b = Batcher(fake_sample(calls), 1000, 100, start=False)
    good = b.submit(entries(1), 10, 1e12)
    bad = b.submit(entries(2, fail=True), 10, 1e12)
    b.run_pass(b.next_pass(block=False))
    assert good.future.result()[0, 0, 0] == 1
    with pytest.raises(ValueError, match="bad series"):
        bad.future.result(timeout=0)


def test_the_thread_serves_a_small_request_between_slices_of_a_large_one():
    """Head-of-line: a large request submitted a slice at a time lets a small request in after one slice."""
    order: list = []

    def slow_sample(batch: list[dict], num_samples: int) -> np.ndarray:
        order.append(batch[0]["id"])
        time.sleep(0.05)
        return np.zeros((len(batch), num_samples, 2), dtype=np.float32)

    b = Batcher(slow_sample, max_pass_paths=10, max_pass_series=10)
    big_done = threading.Event()

    def big_request():
        for part in range(10):
            b.wait(b.submit(entries(*range(100 + 10 * part, 110 + 10 * part)), 1, time.monotonic() + 30))
        big_done.set()

    threading.Thread(target=big_request).start()
    time.sleep(0.12)
    started = time.monotonic()
    b.wait(b.submit(entries(1), 1, time.monotonic() + 30))
    waited = time.monotonic() - started
    assert not big_done.is_set() and waited < 0.3  # at most the slice in progress, then its own pass
    assert big_done.wait(5) and order.index(1) < len(order) - 1
