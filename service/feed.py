"""The alert feed: one Redis reader per app fans events out to WebSocket clients, with resume by id.

A client subscribes (a bounded queue) *before* it catches up from its last id with XRANGE, then takes live
events from its queue, skipping ids it already sent: nothing is lost between catch-up and live, nothing is
repeated. A client whose queue fills (it reads slower than alerts arrive) is closed with 1013 ("try again
later") and resumes with its last id; so a slow consumer cannot grow memory without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from service.alert_events import EVENTS_KEY, decode_or_skip
from service.alerts import AlertTracker
from service.redis_clients import text
from service.tasks import stop_task

log = logging.getLogger(__name__)


@dataclass(eq=False)  # compared by identity: each connection is its own subscriber
class Subscriber:
    stream_id: str | None
    queue: asyncio.Queue[dict[str, Any]]
    overflowed: bool = field(default=False)


class FeedHub:
    def __init__(self, redis: Redis, alerts: AlertTracker, client_buffer: int, block_ms: int = 1000) -> None:
        self._redis = redis
        self._alerts = alerts
        self._buffer = client_buffer
        self._block_ms = block_ms
        self._subscribers: set[Subscriber] = set()
        self._task: asyncio.Task[None] | None = None
        self._last_id: str | None = None  # the newest id fanned out; None until known

    @property
    def clients(self) -> int:
        return len(self._subscribers)

    async def start(self) -> None:
        with contextlib.suppress(RedisError, OSError):  # Redis down: the pump finds out where to start
            await self._find_start()
        self._task = asyncio.create_task(self._pump(), name="alert-feed")

    async def _find_start(self) -> None:
        """Live events are those after the newest event held now. Only a stream that does not exist yet means
        "from the start": a Redis that cannot be asked must not turn every held event into a live one."""
        try:
            info: dict[Any, Any] = await self._redis.xinfo_stream(EVENTS_KEY)
        except ResponseError:
            self._last_id = "0-0"  # no stream yet: every event that appears is new
            return
        last = info.get("last-generated-id") or info.get(b"last-generated-id")
        self._last_id = last.decode() if isinstance(last, bytes) else str(last)

    async def stop(self, timeout_s: float = 2.0) -> None:
        """Cancel the pump, waiting at most ``timeout_s``: a blocking read does not always give way to a cancel
        (seen: redis-py's read kept waiting on its socket, and the lifespan shutdown with it); closing the
        client afterwards (the app does) ends that read for good."""
        if self._task is not None:
            await stop_task(self._task, timeout_s, "alert feed")

    async def _pump(self) -> None:
        failures = 0
        while True:
            try:
                if self._last_id is None:
                    await self._find_start()
                    continue
                reply: Any = await self._redis.xread(
                    {EVENTS_KEY: self._last_id}, count=500, block=self._block_ms
                )
                failures = 0
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError):
                failures += 1
                if failures == 1:
                    log.warning("alert feed: Redis unavailable, retrying")
                await asyncio.sleep(0.5)
                continue
            except Exception:  # noqa: BLE001 - the feed of every client: log, go on
                log.exception("alert feed: reading events failed; retrying")
                await asyncio.sleep(0.5)
                continue
            for _key, entries in reply or []:
                for entry_id, fields in entries:
                    self._last_id = text(entry_id)
                    event = decode_or_skip(entry_id, fields)
                    if event is not None:
                        self._fan_out(event)

    def _fan_out(self, event: dict[str, Any]) -> None:
        for sub in list(self._subscribers):
            if sub.stream_id is not None and sub.stream_id != event["stream_id"]:
                continue
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                sub.overflowed = True

    def subscribe(self, stream_id: str | None) -> Subscriber:
        sub = Subscriber(stream_id, asyncio.Queue(self._buffer))
        self._subscribers.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subscribers.discard(sub)

    async def catch_up(self, since: str, stream_id: str | None, page: int = 500) -> list[dict[str, Any]]:
        """Every event after ``since`` that is already in Redis (one page; call until it returns [])."""
        return await self._alerts.read_events(since, stream_id, page)
