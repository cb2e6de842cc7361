"""Stopping background tasks on shutdown without letting one that does not give way hold the rest.

One cancel is not enough on Python 3.11: ``asyncio.wait_for`` returns its result, and drops the cancel, when the
awaited call completes in the same loop turn as the cancel arrives (fixed in 3.12, where ``wait_for`` is built
on ``asyncio.timeout``). redis-py sends every command through ``wait_for`` (``send_packed_command``), so a task
looping on Redis commands outlived a single cancel in 2.8 % of stops with 10 ms between commands and 12.8 %
with 2 ms (``python -m bench.cancel_probe``, redis-py 8.2, 400 stops each), and went on looping. That held the
lifespan's shutdown for its whole timeout, and once a test's teardown for 300 s (CI of 2026-12-07: the model
reload follower outlived its cancel and then the event loop's own final cancel). A task stopped here is
cancelled again every ``RECANCEL_S`` until it ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger(__name__)

RECANCEL_S = 0.05


async def stop_tasks(tasks: Iterable[asyncio.Task[Any]], timeout_s: float, name: str) -> bool:
    """Cancel ``tasks``, again every ``RECANCEL_S`` while any runs, for at most ``timeout_s``; True when every
    one ended. A task that ended with an error is logged. A cancel of the caller itself propagates as usual
    (``asyncio.wait`` does not swallow it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    tasks = list(tasks)
    pending = {task for task in tasks if not task.done()}
    while pending:
        remaining = deadline - loop.time()
        if remaining <= 0:
            log.warning(
                "%s: %d task(s) did not stop within %g s of their cancel", name, len(pending), timeout_s
            )
            return False
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(RECANCEL_S, remaining))
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            log.warning("%s: ended with %r", name, task.exception())
    return True


async def stop_task(task: asyncio.Task[Any], timeout_s: float, name: str) -> bool:
    """:func:`stop_tasks` for one task. A blocking Redis read that does not give way within ``timeout_s``
    (seen in the alert feed) ends when the caller closes the client afterwards."""
    return await stop_tasks((task,), timeout_s, name)
