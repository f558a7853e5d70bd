"""Dynamic batching of forward passes, with deadlines and cancellation.

One thread per worker runs every forward pass. Requests queue jobs; each pass takes the queued jobs
in arrival order (those with the same ``num_samples`` as the oldest one) up to a budget of sample
paths, so concurrent single-series requests share a pass and no pass holds the model for long.
Large requests submit their series a slice at a time (see ``service.py``), so a small request
queued behind one waits for at most one slice.

A job whose deadline has passed, or that its request abandoned, is dropped at the next pass
boundary: abandoned work never delays the next request. ``drain`` moves every deadline forward
(SIGTERM), so all accepted requests get an answer inside the grace period.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

log = logging.getLogger(__name__)

SampleFn = Callable[..., np.ndarray]  # (entries, num_samples[, rng]) -> (series, num_samples, horizon)


class DeadlineExceeded(Exception):
    """The job's deadline passed before its forward pass could start."""


@dataclass(eq=False)
class Job:
    entries: list[dict]
    num_samples: int
    deadline: float
    future: Future = field(default_factory=Future)
    abandoned: bool = False
    rng: Optional[np.random.Generator] = None  # a seeded request's generator: the job gets a pass of its own

    @property
    def paths(self) -> int:
        return len(self.entries) * self.num_samples


class Batcher:
    def __init__(
        self,
        sample: SampleFn,
        max_pass_paths: int,
        max_pass_series: int,
        wait_ms: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        start: bool = True,
    ):
        self.sample = sample
        self.max_pass_paths = max_pass_paths
        self.max_pass_series = max_pass_series
        self.wait_s = wait_ms / 1000.0
        self.clock = clock
        self.drain_deadline = math.inf
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopped = False
        if start:
            threading.Thread(target=self._loop, name="deepar-batcher", daemon=True).start()

    # ------------------------------------------------------------ request side

    def slice_size(self, num_samples: int) -> int:
        """Series per job so that one job fits one pass."""
        return max(1, min(self.max_pass_series, self.max_pass_paths // num_samples))

    def submit(
        self, entries: list[dict], num_samples: int, deadline: float, rng: Optional[np.random.Generator] = None
    ) -> Job:
        """Queue a job; with ``rng`` (a seeded request) its draws come from that generator alone."""
        job = Job(entries, num_samples, deadline, rng=rng)
        with self._cond:
            self._queue.append(job)
            self._cond.notify()
        return job

    def deadline_of(self, job: Job) -> float:
        return min(job.deadline, self.drain_deadline)

    def wait(self, job: Job) -> np.ndarray:
        """The job's samples; raises DeadlineExceeded when its (possibly drained) deadline passes first."""
        while True:
            remaining = self.deadline_of(job) - self.clock()
            if remaining <= 0:
                self.abandon(job)
                if job.future.done() and not job.future.cancelled() and job.future.exception() is None:
                    return job.future.result()
                raise DeadlineExceeded()
            try:  # short waits: a drain can move the deadline forward while we wait
                return job.future.result(timeout=min(remaining, 0.25))
            except TimeoutError:
                continue

    def abandon(self, job: Job) -> None:
        job.abandoned = True
        job.future.cancel()

    def drain(self, deadline: float) -> None:
        """Every job, queued or future, must be answered by ``deadline`` (SIGTERM)."""
        self.drain_deadline = min(self.drain_deadline, deadline)
        with self._cond:
            self._cond.notify()

    def stop(self) -> None:
        """The forward-pass thread ends (a multi-model server unloads the model); queued jobs get DeadlineExceeded."""
        with self._cond:
            self._stopped = True
            for job in self._queue:
                if not job.future.cancelled():
                    job.future.set_exception(DeadlineExceeded())
            self._queue.clear()
            self._cond.notify()

    # ------------------------------------------------------------ batching side

    def _drop_dead(self) -> None:
        """Under the lock: remove abandoned and expired jobs from the queue."""
        now = self.clock()
        live: deque[Job] = deque()
        for job in self._queue:
            if job.abandoned or job.future.cancelled():
                continue
            if self.deadline_of(job) <= now:
                job.future.set_exception(DeadlineExceeded())
                continue
            live.append(job)
        self._queue = live

    def next_pass(self, block: bool = True) -> list[Job]:
        """The jobs of the next forward pass (oldest first), removed from the queue."""
        with self._cond:
            while True:
                self._drop_dead()
                if self._queue or not block or self._stopped:
                    break
                self._cond.wait(timeout=0.5)
            if not self._queue:
                return []
            if self.wait_s > 0:
                self._cond.wait(timeout=self.wait_s)
                self._drop_dead()
                if not self._queue:
                    return []
            first = self._queue[0]
            chosen: list = []
            paths, series = 0, 0
            for job in self._queue:
                if job.num_samples != first.num_samples:
                    continue
                if chosen and (job.rng is not None or first.rng is not None):
                    break  # a seeded job's draws must not depend on which requests share its pass
                if chosen and (
                    paths + job.paths > self.max_pass_paths or series + len(job.entries) > self.max_pass_series
                ):
                    break
                chosen.append(job)
                paths += job.paths
                series += len(job.entries)
            for job in chosen:
                self._queue.remove(job)
        return [job for job in chosen if job.future.set_running_or_notify_cancel()]

    def run_pass(self, jobs: list[Job]) -> None:
        if not jobs:
            return
        try:
            entries = [e for job in jobs for e in job.entries]
            if jobs[0].rng is None:
                samples = self.sample(entries, jobs[0].num_samples)
            else:  # alone in its pass (next_pass)
                samples = self.sample(entries, jobs[0].num_samples, jobs[0].rng)
        except Exception as error:
            if len(jobs) == 1:
                jobs[0].future.set_exception(error)
            else:  # isolate the failing job instead of failing its neighbours
                for job in jobs:
                    retry = Job(job.entries, job.num_samples, job.deadline)
                    retry.future.set_running_or_notify_cancel()
                    self.run_pass([retry])
                    _copy_outcome(retry.future, job.future)
            return
        start = 0
        for job in jobs:
            job.future.set_result(samples[start : start + len(job.entries)])
            start += len(job.entries)

    def _loop(self) -> None:
        while not self._stopped:
            try:
                self.run_pass(self.next_pass())
            except Exception:  # never let the only forward-pass thread die
                log.exception("batcher: unexpected error")


def _copy_outcome(source: Future, target: Future) -> None:
    error: Optional[BaseException] = source.exception()
    if error is not None:
        target.set_exception(error)
    else:
        target.set_result(source.result())
