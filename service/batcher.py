"""Micro-batching: a bounded queue of window jobs, each with a future, drained by one worker thread per model.

The worker takes whatever is queued (greedy drain), waits at most ``max_wait_ms`` for more while the batch is
below ``max_batch_size``, runs one inference and scoring pass over the stacked windows, and resolves every
job's future; a failed batch fails every job in it with the same error.

A supervisor thread watches the worker. If the worker dies (an exception that escapes the per-batch handler,
such as a ``BaseException``, or the thread being killed), every job it had taken from the queue and not settled
fails with :class:`InferenceFailed`, a fresh worker takes over the queue and ``on_restart`` is called, so no
submitted future waits forever. Which jobs those are is not tracked by the worker (it can die between any two
bytecodes, e.g. just after the queue handed it a job): the batcher keeps every admitted job until the worker
settles it, and the supervisor fails those no longer in the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.scoring import F32, WindowScores
from service.errors import InferenceFailed, Overloaded

log = logging.getLogger(__name__)

ScoreFn = Callable[[F32], WindowScores]
BatchObserver = Callable[[int, float, float], None]  # (windows, queue wait s, inference s)
RestartObserver = Callable[[], None]


@dataclass(eq=False)  # compared and hashed by identity: the batcher keeps a set of the unsettled ones
class WindowJob:
    """Windows ``[k, L, C]`` (normalised) of one request, and the future that receives their scores."""

    windows: F32
    future: asyncio.Future[WindowScores]
    loop: asyncio.AbstractEventLoop
    enqueued_at: float = field(default_factory=time.perf_counter)


_STOP = object()


class MicroBatcher:
    def __init__(
        self,
        name: str,
        score: ScoreFn,
        max_batch_size: int,
        max_wait_ms: float,
        queue_capacity: int,
        observe: BatchObserver | None = None,
        on_restart: RestartObserver | None = None,
        max_queue_wait_ms: float | None = None,
        max_queue_delay_ms: float | None = None,
    ) -> None:
        self.name = name
        # While the last batch's oldest window had waited longer than this, new work is refused at once (503)
        # unless the queue is empty: the queue's own sojourn time (as CoDel uses it) says the worker is past its
        # capacity, and admitting more would only make every admitted request wait longer.
        self._max_delay_s = None if max_queue_delay_ms is None else max_queue_delay_ms / 1000.0
        self._last_wait_s = 0.0
        # A job that waited longer than this when the worker takes it fails with Overloaded instead of being
        # run: its client has waited long enough, and running it would make every later job later still.
        self._max_queue_wait_s = None if max_queue_wait_ms is None else max_queue_wait_ms / 1000.0
        self._score = score
        self._max_batch = max_batch_size
        self._max_wait_s = max_wait_ms / 1000.0
        self._capacity = queue_capacity
        self._observe = observe
        self._on_restart = on_restart
        self._queue: queue.SimpleQueue[WindowJob | object] = queue.SimpleQueue()
        self._pending = 0  # windows of the unsettled jobs
        self._lock = threading.Lock()  # guards both, and makes a job's admission and its put one step
        self._unsettled: set[WindowJob] = set()  # admitted, not yet settled by the worker (queued or taken)
        self._clean_exit = False  # the current worker saw the stop marker and drained the queue
        self._death: BaseException | None = None
        self._stopping = False
        self._worker = self._new_worker()
        self._supervisor = threading.Thread(
            target=self._supervise, name=f"infer-{name}-supervisor", daemon=True
        )
        self._started = False
        self.restarts = 0

    @property
    def depth(self) -> int:
        return self._pending

    def has_room(self, count: int) -> bool:
        """Whether ``count`` more windows would be admitted now (the test ``submit`` applies)."""
        return self._refusal(count) is None

    def _refusal(self, count: int) -> str | None:
        """Why ``count`` more windows would be refused now, or None. An empty queue admits anything."""
        if self._pending == 0:
            return None
        if self._pending + count > self._capacity:
            return f"inference queue full ({self._pending} windows waiting)"
        if self._max_delay_s is not None and self._last_wait_s > self._max_delay_s:
            return f"inference queue delay {self._last_wait_s * 1000:.0f} ms, over {self._max_delay_s * 1000:g} ms"
        return None

    def start(self) -> None:
        if not self._started:
            self._worker.start()
            self._supervisor.start()
            self._started = True

    async def submit(self, windows: F32) -> WindowScores:
        """Score windows ``[k, L, C]``; raises :class:`Overloaded` at once when the queue is full."""
        count = len(windows)
        loop = asyncio.get_running_loop()
        job = WindowJob(windows=windows, future=loop.create_future(), loop=loop)
        with self._lock:
            if self._stopping:  # a replaced version, retired after its drain: its worker takes no more jobs
                raise Overloaded(f"model {self.name!r}: this version was just replaced; retry")
            refusal = self._refusal(count)
            if refusal is not None:
                raise Overloaded(f"model {self.name!r}: {refusal}")
            self._pending += count
            self._unsettled.add(job)
            self._queue.put(job)
        return await job.future

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish every queued job, then stop the worker and its supervisor."""
        if self._started:
            with self._lock:  # every job admitted before is ahead of the marker; none is admitted after it
                self._stopping = True
                self._queue.put(_STOP)
            self._supervisor.join(timeout_s)

    def _new_worker(self) -> threading.Thread:
        self._clean_exit = False
        return threading.Thread(target=self._work_guarded, name=f"infer-{self.name}", daemon=True)

    def _supervise(self) -> None:
        while True:
            self._worker.join()
            if self._clean_exit:
                return
            self._recover()
            if self._stopping:
                self._queue.put(_STOP)  # the dead worker may have taken the marker with it
            self._worker = self._new_worker()
            self._worker.start()

    def _taken(self) -> list[WindowJob]:
        """The unsettled jobs that are no longer in the queue: those the dead worker had taken. With the lock
        held no job is admitted meanwhile, and with the worker dead nothing else takes from the queue, so the
        queue is emptied, compared and put back in its order."""
        with self._lock:
            queued: list[WindowJob | object] = []
            with contextlib.suppress(queue.Empty):
                while True:
                    queued.append(self._queue.get_nowait())
            for item in queued:
                self._queue.put(item)
            still_queued = set(queued)
            return [job for job in self._unsettled if job not in still_queued]

    def _settle(self, jobs: list[WindowJob]) -> int:
        """Release the queue slots of ``jobs`` that are still unsettled (once per job, whoever settles it
        first: the worker or the supervisor); returns how many windows that was."""
        with self._lock:
            settled = [job for job in jobs if job in self._unsettled]
            self._unsettled.difference_update(settled)
            count = sum(len(job.windows) for job in settled)
            self._pending -= count
        return count

    def _recover(self) -> None:
        """Fail the jobs the dead worker had taken (one it resolved before dying keeps its result: a future
        is set once) and release their queue slots."""
        jobs = self._taken()
        count = self._settle(jobs)
        cause = type(self._death).__name__ if self._death is not None else "killed"
        self._death = None
        log.error(
            "model %s: inference worker died (%s); %d windows failed; restarting it", self.name, cause, count
        )
        error = InferenceFailed(f"inference failed for model {self.name!r}: the worker died ({cause})")
        for job in jobs:
            _resolve(job, _set_exception, error)
        self.restarts += 1
        if self._on_restart is not None:
            self._on_restart()

    def _work_guarded(self) -> None:
        try:
            self._work()
        except BaseException as exc:  # noqa: BLE001 - the supervisor fails the held jobs and restarts the worker
            self._death = exc
        else:
            self._clean_exit = True

    def _collect(self, first: WindowJob) -> tuple[list[WindowJob], bool]:
        jobs, size, stopping = [first], len(first.windows), False
        deadline = time.perf_counter() + self._max_wait_s
        while size < self._max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is _STOP:
                stopping = True
                break
            assert isinstance(item, WindowJob)
            jobs.append(item)
            size += len(item.windows)
        return jobs, stopping

    def _work(self) -> None:
        stopping = False
        while not stopping:
            item = self._queue.get()
            if item is _STOP:
                break
            assert isinstance(item, WindowJob)
            jobs, stopping = self._collect(item)
            self._run(jobs)
        # Drain what arrived before the stop marker was seen.
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, WindowJob):
                self._run([item])

    def _expire(self, jobs: list[WindowJob], now: float) -> list[WindowJob]:
        """Fail the jobs that waited past ``max_queue_wait_ms``; returns the others."""
        if self._max_queue_wait_s is None:
            return jobs
        fresh = [job for job in jobs if now - job.enqueued_at <= self._max_queue_wait_s]
        if len(fresh) < len(jobs):
            expired = [job for job in jobs if now - job.enqueued_at > self._max_queue_wait_s]
            error = Overloaded(
                f"model {self.name!r}: queued longer than {self._max_queue_wait_s * 1000:g} ms; retry later"
            )
            for job in expired:
                _resolve(job, _set_exception, error)
            self._settle(expired)
        return fresh

    def _run(self, jobs: list[WindowJob]) -> None:
        started = time.perf_counter()
        wait_s = started - min(job.enqueued_at for job in jobs)
        self._last_wait_s = wait_s
        jobs = self._expire(jobs, started)
        if not jobs:
            return
        count = sum(len(job.windows) for job in jobs)
        try:
            stacked = jobs[0].windows if len(jobs) == 1 else np.concatenate([job.windows for job in jobs])
            scored = self._score(stacked)
        except Exception as exc:  # noqa: BLE001 - every error fails the whole batch, once
            log.exception("model %s: batch of %d windows failed", self.name, count)
            error = InferenceFailed(f"inference failed for model {self.name!r}: {type(exc).__name__}")
            for job in jobs:
                _resolve(job, _set_exception, error)
        else:
            offset = 0
            for job in jobs:
                n = len(job.windows)
                part = WindowScores(
                    scored.scores[offset : offset + n], scored.contributions[offset : offset + n]
                )
                _resolve(job, _set_result, part)
                offset += n
        # Not in a ``finally``: a worker that dies mid-batch leaves its taken jobs to the supervisor.
        self._settle(jobs)
        if self._observe is not None:
            self._observe(count, wait_s, time.perf_counter() - started)


def _resolve(
    job: WindowJob,
    setter: Callable[[asyncio.Future[WindowScores], Any], None],
    value: WindowScores | Exception,
) -> None:
    with contextlib.suppress(RuntimeError):  # the submitter's loop is closed: nobody awaits the future
        job.loop.call_soon_threadsafe(setter, job.future, value)


def _set_result(future: asyncio.Future[WindowScores], value: WindowScores) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[WindowScores], error: Exception) -> None:
    if not future.done():
        future.set_exception(error)
