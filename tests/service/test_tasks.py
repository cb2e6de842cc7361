"""Background tasks stop when the service stops them, even where a cancel gets lost: on Python 3.11
``asyncio.wait_for`` drops a cancel that lands as the awaited call completes, and redis-py sends every command
through it (service/tasks.py). A task that outlived its stop held the lifespan's shutdown, and once a CI run's
teardown for 300 s."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

import pytest
from fastapi.testclient import TestClient
from redis.exceptions import RedisError

from service.app import create_app
from service.redis_clients import redis_client
from service.settings import Settings
from service.tasks import stop_task, stop_tasks


async def shrugs_off(cancels: int, ticks: list[int], release: asyncio.Event | None = None) -> None:
    """Loops until ``release`` is set, ignoring its first ``cancels`` cancels as a call that completes with
    the cancel does."""
    ignored = 0
    while release is None or not release.is_set():
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            ignored += 1
            if ignored > cancels:
                raise
        ticks.append(ignored)


async def test_a_task_that_loses_its_first_cancels_is_cancelled_again_until_it_ends() -> None:
    ticks: list[int] = []
    release = asyncio.Event()  # ends it should the stop fail, so that a failure is not a hang
    task = asyncio.create_task(shrugs_off(3, ticks, release))
    await asyncio.sleep(0.03)
    try:
        assert await stop_task(task, 2.0, "test")
        assert task.cancelled()
        assert max(ticks) == 3  # it went on after each lost cancel: one cancel would have left it running
    finally:
        release.set()


async def test_a_task_that_never_ends_is_reported_and_the_stop_returns_at_its_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ticks: list[int] = []
    release = asyncio.Event()
    task = asyncio.create_task(shrugs_off(10**9, ticks, release))
    await asyncio.sleep(0.03)  # in its loop: a cancel before its first step would end it
    caplog.set_level(logging.WARNING, logger="service.tasks")
    assert not await stop_tasks([task], 0.3, "stubborn")
    assert not task.done()
    assert any("stubborn: 1 task(s) did not stop within 0.3 s" in r.getMessage() for r in caplog.records)
    release.set()  # end it for good: no cancel reaches it
    await task


async def test_a_task_that_failed_is_logged_and_counts_as_stopped(caplog: pytest.LogCaptureFixture) -> None:
    async def fails() -> None:
        raise ValueError("broken")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    caplog.set_level(logging.WARNING, logger="service.tasks")
    assert await stop_tasks([task], 1.0, "failing")
    assert any("failing: ended with ValueError('broken')" in r.getMessage() for r in caplog.records)


async def test_every_task_looping_on_real_redis_stops(redis_url: str) -> None:
    """The service's own pattern (a command, Redis errors caught, a short pause) on its own client: about one
    stop in eight left such a task running when it was cancelled once (``python -m bench.cancel_probe``)."""
    client = redis_client(Settings(redis_url=redis_url, models_dir=".", auth_disabled=True))
    rng = random.Random(7)

    running = True

    async def loop() -> None:
        while running:
            with contextlib.suppress(RedisError, OSError):
                await client.get("vigil:models:generation")
            await asyncio.sleep(0.002)

    try:
        survivors = 0
        for _ in range(150):
            task = asyncio.create_task(loop())
            await asyncio.sleep(rng.uniform(0.0, 0.004))
            await stop_task(task, 1.0, "redis loop")
            survivors += not task.done()
        running = False  # a survivor ends at its next turn
        assert survivors == 0
    finally:
        await client.aclose()


def test_the_service_stops_every_background_task_at_its_cancel(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """Twenty starts and stops of the app: no task outlives its stop (before, 4 of 24 stops under load let the
    model-reload follower run on for its 2 s timeout)."""
    caplog.set_level(logging.WARNING, logger="service")
    for _ in range(20):
        with TestClient(create_app(settings)):
            pass
    late = [r.getMessage() for r in caplog.records if "did not stop" in r.getMessage()]
    assert late == []
