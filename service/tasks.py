"""Stopping background tasks on shutdown without letting one that does not give way hold the rest."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

log = logging.getLogger(__name__)


async def stop_task(task: asyncio.Task[Any], timeout_s: float, name: str) -> None:
    """Cancel ``task`` and wait for it at most ``timeout_s``. A blocking Redis read does not always give way to
    a cancel at once (seen in the alert feed, whose stop then held the lifespan shutdown); closing the client
    afterwards ends such a read."""
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        log.warning("%s: did not stop within %g s of its cancel; closing its connections", name, timeout_s)
    elif not task.cancelled() and task.exception() is not None:
        log.warning("%s: ended with %r", name, task.exception())
