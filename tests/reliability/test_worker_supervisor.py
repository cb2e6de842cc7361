"""An inference worker that dies fails only the requests it held, and a new worker takes over at once.

The worker is made to die for real: the real bundle's scoring function (ONNX Runtime session and all) is
wrapped so that a poisoned window raises a ``BaseException`` that the per-batch ``except Exception`` does not
catch, or the thread is killed from outside with an asynchronous exception.
"""

from __future__ import annotations

import asyncio
import ctypes
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

import service.registry
from models.scoring import F32, WindowScores, normalise
from service.app import create_app
from service.batcher import MicroBatcher, ScoreFn
from service.engine import ONNXEngine
from service.errors import InferenceFailed, Overloaded
from service.registry import scoring_function
from tests.service.conftest import auth, make_settings, points_body

POISON = 1e5  # a normalised value no real window reaches: the wrapped scorer dies on it


class WorkerKilled(BaseException):
    """Not an ``Exception``: it escapes the batcher's per-batch handler and ends the worker thread."""


def poisoned(score: ScoreFn, kill: type[BaseException]) -> ScoreFn:
    def run(windows: F32) -> WindowScores:
        if (windows[:, 0, 0] > POISON).any():
            raise kill("poisoned window")
        return score(windows)

    return run


def worker_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"infer-{name}" and t.is_alive()]


@pytest.fixture(scope="module")
def engine(bundle_dir: Path) -> ONNXEngine:
    return ONNXEngine.open(bundle_dir, "cpu", 1, spinning=False)


@pytest.fixture
def windows(engine: ONNXEngine) -> tuple[F32, F32]:
    """A normal normalised window ``[1, L, C]`` and a poisoned one."""
    raw = np.random.default_rng(0).normal(size=(1, 100, 38))
    z = normalise(raw, engine.manifest.normalisation)
    bad = z.copy()
    bad[0, 0, 0] = 2 * POISON
    return z, bad


@pytest.fixture
def restarts() -> list[float]:
    return []


def make_batcher(
    engine: ONNXEngine, kill: type[BaseException], restarts: list[float], **kw: float
) -> MicroBatcher:
    options = {"max_batch_size": 64, "max_wait_ms": 200, "queue_capacity": 100, **kw}
    return MicroBatcher(
        "sup",
        poisoned(scoring_function(engine), kill),
        int(options["max_batch_size"]),
        options["max_wait_ms"],
        int(options["queue_capacity"]),
        on_restart=lambda: restarts.append(time.perf_counter()),
    )


@pytest.fixture
def running(
    engine: ONNXEngine, restarts: list[float], request: pytest.FixtureRequest
) -> Iterator[MicroBatcher]:
    batcher = make_batcher(engine, getattr(request, "param", WorkerKilled), restarts)
    batcher.start()
    yield batcher
    batcher.stop()


@pytest.mark.parametrize("running", [WorkerKilled, SystemExit], indirect=True)
def test_batcher_fails_the_dead_workers_batch_and_restarts_it(
    running: MicroBatcher, windows: tuple[F32, F32], restarts: list[float]
) -> None:
    z, bad = windows
    first = worker_threads("sup")

    async def scenario() -> tuple[list[object], WindowScores]:
        # One batch (max_wait 200 ms): the poisoned job and its innocent batch-mates share its fate.
        batch = await asyncio.wait_for(
            asyncio.gather(running.submit(z), running.submit(bad), running.submit(z), return_exceptions=True),
            10,
        )
        return batch, await asyncio.wait_for(running.submit(z), 10)

    results, after = asyncio.run(scenario())
    assert all(isinstance(r, InferenceFailed) for r in results), results
    assert all("the worker died" in str(r) for r in results)
    assert after.scores.shape == (1, 100) and np.isfinite(after.scores).all()
    assert len(restarts) == running.restarts == 1
    now = worker_threads("sup")
    assert len(first) == len(now) == 1 and first[0] is not now[0]
    # The worker releases a batch's queue slots just after resolving its futures: wait for that, briefly.
    deadline = time.monotonic() + 2
    while running.depth and time.monotonic() < deadline:
        time.sleep(0.01)
    assert running.depth == 0  # the failed windows gave their queue slots back


def test_batcher_serves_the_jobs_queued_behind_a_dying_batch(
    engine: ONNXEngine, windows: tuple[F32, F32], restarts: list[float]
) -> None:
    z, bad = windows
    batcher = make_batcher(engine, WorkerKilled, restarts, max_batch_size=1, max_wait_ms=0)
    batcher.start()

    async def scenario() -> list[object]:
        jobs = [
            batcher.submit(bad),
            *(batcher.submit(z) for _ in range(5)),
            batcher.submit(bad),
            batcher.submit(z),
        ]
        return await asyncio.wait_for(asyncio.gather(*jobs, return_exceptions=True), 20)

    try:
        results = asyncio.run(scenario())
    finally:
        batcher.stop()
    failed = [i for i, r in enumerate(results) if isinstance(r, InferenceFailed)]
    assert failed == [0, 6], results
    assert all(isinstance(r, WindowScores) for i, r in enumerate(results) if i not in failed)
    assert len(restarts) == 2 and batcher.depth == 0
    assert not worker_threads("sup")  # stop() ended the restarted worker too


def test_batcher_restarts_a_worker_killed_from_outside(
    engine: ONNXEngine, windows: tuple[F32, F32], restarts: list[float]
) -> None:
    """An asynchronous exception lands wherever the worker happens to be (here inside a batch that waits on
    a gate): the supervisor notices the dead thread, not a caught exception."""
    z, _ = windows
    entered, release = threading.Event(), threading.Event()
    real = scoring_function(engine)

    def gated(batch: F32) -> WindowScores:
        entered.set()
        while not release.wait(0.005):  # bytecode keeps running, so the async exception is delivered
            pass
        return real(batch)

    batcher = MicroBatcher("sup", gated, 8, 0, 100, on_restart=lambda: restarts.append(0.0))
    batcher.start()

    async def scenario() -> tuple[object, object]:
        victim = asyncio.ensure_future(batcher.submit(z))
        await asyncio.to_thread(entered.wait, 10)
        (thread,) = worker_threads("sup")
        assert (
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(thread.ident or 0), ctypes.py_object(WorkerKilled)
            )
            == 1
        )
        failed = await asyncio.wait_for(asyncio.gather(victim, return_exceptions=True), 10)
        release.set()
        return failed[0], await asyncio.wait_for(batcher.submit(z), 10)

    try:
        failed, after = asyncio.run(scenario())
    finally:
        release.set()
        batcher.stop()
    assert isinstance(failed, InferenceFailed) and "WorkerKilled" in str(failed)
    assert isinstance(after, WindowScores) and restarts == [0.0]


def test_a_worker_killed_just_as_it_takes_a_job_fails_that_job(
    engine: ONNXEngine, windows: tuple[F32, F32], restarts: list[float]
) -> None:
    """The exception is made pending while the idle worker blocks in the queue's ``get``; it is delivered at
    the first bytecode after ``get`` returns the job, before the worker has the job in any batch. The job
    must still fail (not wait forever), and the next one run on the restarted worker."""
    z, _ = windows
    batcher = MicroBatcher(
        "sup", scoring_function(engine), 8, 0, 100, on_restart=lambda: restarts.append(0.0)
    )
    batcher.start()

    async def scenario() -> tuple[object, object]:
        deadline = time.monotonic() + 5
        while not worker_threads("sup") and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # idle: blocked in the queue's get
        (thread,) = worker_threads("sup")
        assert (
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(thread.ident or 0), ctypes.py_object(WorkerKilled)
            )
            == 1
        )
        taken = await asyncio.wait_for(asyncio.gather(batcher.submit(z), return_exceptions=True), 10)
        return taken[0], await asyncio.wait_for(batcher.submit(z), 10)

    try:
        taken, after = asyncio.run(scenario())
    finally:
        batcher.stop()
    assert isinstance(taken, InferenceFailed) and "WorkerKilled" in str(taken), taken
    assert isinstance(after, WindowScores) and restarts == [0.0]
    assert batcher.depth == 0


def test_a_dying_worker_fails_its_requests_cleanly_through_the_service(
    models_dir: Path,
    redis_url: str,
    clean_redis: redis.Redis,
    test_series: np.ndarray,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Through ``create_app``: the real bundle's scoring path, poisoned; 500 ``inference_failed`` for the
    request whose batch killed the worker, then normal service, and the restart on ``/metrics``."""
    real_factory = service.registry.scoring_function
    monkeypatch.setattr(
        service.registry, "scoring_function", lambda engine: poisoned(real_factory(engine), WorkerKilled)
    )
    settings = make_settings(models_dir, redis_url)
    window = test_series[:100].copy()
    with TestClient(create_app(settings), headers=auth("all")) as client:
        bad = window.copy()
        bad[0, 0] = 1e9  # normalised far beyond POISON
        response = client.post("/score", json={"window": bad.tolist()})
        assert response.status_code == 500
        assert response.json()["code"] == "inference_failed" and "worker died" in response.json()["detail"]
        for _ in range(3):
            assert client.post("/score", json={"window": window.tolist()}).status_code == 200
        streamed = client.post("/score", json=points_body("after-restart", test_series[:100], 0))
        assert streamed.status_code == 200 and len(streamed.json()["scores"]) == 100
        text = client.get("/metrics").text
        found = re.search(r'^vigil_worker_restarts_total\{model="tvnet"\} (\S+)$', text, re.M)
        assert found is not None and float(found.group(1)) == 1.0
        failed = re.search(r'^vigil_rejections_total\{reason="inference_failed"\} (\S+)$', text, re.M)
        assert failed is not None and float(failed.group(1)) == 1.0
        assert client.get("/readyz").json()["models"]["tvnet"]["queue_depth"] == 0


def test_jobs_that_waited_past_the_queue_bound_fail_with_overloaded_and_the_rest_run(
    engine: ONNXEngine, windows: tuple[F32, F32]
) -> None:
    """Admission bounds latency inside the server too: a job still queued after ``max_queue_wait_ms`` is
    refused (503, its client retries) instead of making every later job later still."""
    from service.errors import Overloaded

    z, _ = windows
    gate = threading.Event()
    score = scoring_function(engine)

    def held(batch: F32) -> WindowScores:
        gate.wait(10)  # the worker is busy with an earlier batch
        return score(batch)

    batcher = MicroBatcher("expiry", held, 1, 0, 100, max_queue_wait_ms=100)
    batcher.start()

    async def scenario() -> list[object]:
        first = asyncio.ensure_future(batcher.submit(z))
        await asyncio.sleep(0.05)
        queued = asyncio.ensure_future(batcher.submit(z))  # waits behind the held batch
        await asyncio.sleep(0.3)
        gate.set()
        outcomes = await asyncio.gather(first, queued, return_exceptions=True)
        fresh = await batcher.submit(z)  # nothing queued now: runs at once
        return [*outcomes, fresh]

    try:
        first, queued, fresh = asyncio.run(scenario())
    finally:
        batcher.stop()
    assert isinstance(first, WindowScores) and isinstance(fresh, WindowScores)
    assert isinstance(queued, Overloaded) and "queued longer than 100 ms" in queued.detail
    assert batcher.depth == 0


def test_new_work_is_refused_at_once_while_the_queue_delay_is_over_its_bound(
    engine: ONNXEngine, windows: tuple[F32, F32]
) -> None:
    """The queue's sojourn time: while the last batch's oldest window had waited longer than
    ``max_queue_delay_ms``, a new submission is refused at once (503) unless the queue is empty; once batches
    start without such a wait, work is admitted again."""
    from service.errors import Overloaded

    z, _ = windows
    gates = [threading.Event(), threading.Event()]  # the first two batches are held until released
    calls: list[int] = []
    score = scoring_function(engine)

    def held(batch: F32) -> WindowScores:
        calls.append(len(calls))
        if len(calls) <= len(gates):
            gates[len(calls) - 1].wait(10)
        return score(batch)

    batcher = MicroBatcher("delay", held, 1, 0, 100, max_queue_delay_ms=100)
    batcher.start()

    async def scenario() -> tuple[list[object], bool, bool, WindowScores, bool]:
        first = asyncio.ensure_future(batcher.submit(z))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(batcher.submit(z))  # waits behind the held first batch
        third = asyncio.ensure_future(batcher.submit(z))
        await asyncio.sleep(0.25)
        room_before = batcher.has_room(1)  # no batch has started late yet
        gates[0].set()
        await asyncio.sleep(0.05)  # the second batch has started (its window waited ~0.25 s) and is held
        room_over = batcher.has_room(1)
        try:
            refused: object = await batcher.submit(z)
        except Overloaded as exc:
            refused = exc
        gates[1].set()
        outcomes = await asyncio.gather(first, second, third, return_exceptions=True)
        while batcher.depth:  # the worker counts its batch done just after resolving it
            await asyncio.sleep(0.01)
        again = await batcher.submit(z)  # the queue is empty: admitted whatever the last wait
        fresh = await batcher.submit(z)  # a batch without waiting: below the bound again
        return [*outcomes, again, refused], room_before, room_over, fresh, batcher.has_room(1)

    try:
        outcomes, room_before, room_over, fresh, room_after = asyncio.run(scenario())
    finally:
        for gate in gates:
            gate.set()
        batcher.stop()
    *served, refused = outcomes
    assert all(isinstance(o, WindowScores) for o in served)  # admitted work always runs
    assert room_before and not room_over and room_after
    assert isinstance(refused, Overloaded) and "over 100 ms" in refused.detail
    assert isinstance(fresh, WindowScores) and batcher.depth == 0


def test_a_job_submitted_to_a_stopped_batcher_is_refused_not_left_waiting(
    engine: ONNXEngine, windows: tuple[F32, F32], restarts: list[float]
) -> None:
    """A request that still holds a replaced version after the reload's drain bound (30 s) submits to a batcher
    already stopped: it is refused at once (503 overloaded: its retry gets the new version). Before, its job sat
    behind the stop marker, the request never got an answer and its stream's claim waited out its deadline."""
    batcher = make_batcher(engine, WorkerKilled, restarts)
    batcher.start()
    normal, _ = windows
    assert asyncio.run(batcher.submit(normal)).scores.shape[0] == 1
    batcher.stop()

    async def late() -> str:
        try:
            await asyncio.wait_for(batcher.submit(normal), 5.0)
        except Overloaded as exc:
            return exc.detail
        return "scored"

    assert "replaced" in asyncio.run(late())
