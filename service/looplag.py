"""How late the event loop runs what is due: a task that asks to wake every ``interval_s`` and records how much
later than asked it woke (``vigil_event_loop_lag_seconds``). Every request's callbacks share that loop, so a
lag of 300 ms is 300 ms added to whatever was waiting; a busy loop shows many small lags, one long blocking
call one large lag. The watch costs one wake-up every 50 ms."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from prometheus_client import Histogram

from service.tasks import stop_task

INTERVAL_S = 0.05


async def watch(histogram: Histogram, interval_s: float = INTERVAL_S) -> None:
    """Observe the loop's lag every ``interval_s`` until cancelled."""
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time() + interval_s
        await asyncio.sleep(interval_s)
        histogram.observe(max(0.0, loop.time() - asked))


@contextlib.asynccontextmanager
async def watching(histogram: Histogram, interval_s: float = INTERVAL_S) -> AsyncIterator[None]:
    """Runs :func:`watch` for the body's duration."""
    task = asyncio.create_task(watch(histogram, interval_s), name="vigil-loop-lag")
    try:
        yield
    finally:
        await stop_task(task, 1.0, "loop lag watch")
