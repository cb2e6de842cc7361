"""Alert delivery to Alertmanager: follows ``vigil:alerts`` and posts every lifecycle to every configured URL,
at least once, across restarts and replicas.

- **One deliverer.** Replicas (and workers) compete for a lease in Redis (``SET NX PX``, renewed every third of
  it); the holder delivers, the others stand by and take over within ``lease_s`` when it dies, or at once when
  it stops cleanly. One deliverer keeps each stream's events in order: two replicas posting one stream's
  ``firing`` and ``resolved`` concurrently could leave Alertmanager with the older one, a stuck alert.
- **Progress in Redis.** Each Alertmanager has its own consumer group on ``vigil:alerts`` (``vigil-notify:<host:
  port/path>``): an entry is acknowledged only after that Alertmanager accepted the post holding it, so a crash
  or a restart resumes there, a new deliverer first claims what the previous one left pending (and, every
  ``lease_s``, what any other consumer has left idle that long), and one Alertmanager that is down holds back
  only its own deliveries. A follower reads only while its replica holds the lease (checked before each read).
- **Failures.** 5xx or no answer: the same batch again after a capped exponential backoff with jitter; nothing
  after it goes first, so a stream's events stay in order and none is dropped within the stream's retention.
  Every other status is retried the same way (a 401, 403 or 404 is a proxy or a path wrong for now, not a bad
  alert). 400, 413, 415, 422 (the body refused): logged with the body, counted, acknowledged (Alertmanager keeps
  the valid alerts of a refused batch).
- **Re-sends.** What fires at each Alertmanager is kept in a Redis hash per Alertmanager, written after each
  accepted post, and posted again every ``resend_interval_s`` between batches, so a restarted Alertmanager
  relearns it and posts never race the events. An entry whose stream's alert state is gone (the stream was
  deleted or expired) is posted resolved at that re-send, then dropped; if that post fails it is tried again at
  the next one (a firing alert Alertmanager no longer hears of still ends when its ``endsAt`` passes).

Scoring never waits for any of this: it runs in its own tasks, on its own Redis connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import secrets
import socket
import time
from dataclasses import dataclass, replace
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from service.alert_events import EVENTS_KEY, decode_event
from service.alertmanager import (
    Alert,
    AlertmanagerClient,
    EventContext,
    event_alerts,
    recorded_s,
    target_name,
)
from service.alerts import alert_key
from service.lease import Lease
from service.metrics import Metrics
from service.peak import Describe
from service.redis_clients import text
from service.settings import AlertmanagerSettings
from service.tasks import stop_task, stop_tasks

log = logging.getLogger(__name__)

LEASE_KEY = "vigil:notify:lease"
STEP_DOWN_S = 10.0  # a follower is cancelled again every 50 ms meanwhile (service.tasks)
GROUP_PREFIX = "vigil-notify:"
GONE_RESOLUTION = "the stream was deleted, or its state expired, while this alert fired"


def replica_name() -> str:
    """This process as a consumer of the event stream: host, pid and a random suffix (pids repeat)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


def firing_key(target: str) -> str:
    """What fires at one Alertmanager: stream id → its firing alerts (JSON lines)."""
    return f"vigil:notify:firing:{target}"


@dataclass(frozen=True)
class EventAlerts:
    """An alert event (as :func:`service.alerts.decode_event` returns it) and the alerts it posts."""

    event: dict[str, Any]
    alerts: list[Alert]


class AlertDelivery:
    """Posts alert lifecycles to ``settings.urls``; start it once per app and stop it on shutdown."""

    def __init__(
        self,
        redis: Redis,
        settings: AlertmanagerSettings,
        public_url: str,
        metrics: Metrics,
        describe: Describe,
        replica: str,
        block_ms: int = 1000,
    ) -> None:
        self._redis = redis
        self._settings = settings
        self._public_url = public_url.rstrip("/")
        self._metrics = metrics
        self._describe = describe
        self._replica = replica
        self._block_ms = block_ms
        self._client = AlertmanagerClient(settings.timeout_s)
        self._lease = Lease(redis, LEASE_KEY, replica, settings.lease_s)
        self._supervisor: asyncio.Task[None] | None = None
        self._followers: list[asyncio.Task[None]] = []
        self._alerts: dict[str, list[Alert]] = {}  # by event id, so every Alertmanager gets the same alerts
        metrics.initialise_delivery([target_name(url) for url in settings.urls])

    @property
    def leading(self) -> bool:
        return bool(self._followers)

    async def start(self) -> None:
        if self._settings.urls:
            self._supervisor = asyncio.create_task(self._supervise(), name="alert-delivery")

    async def stop(self) -> None:
        if self._supervisor is not None:
            await stop_task(self._supervisor, 2.0, "alert delivery")  # its blocking read: see FeedHub.stop
        await self._step_down()
        if self._supervisor is not None:
            with contextlib.suppress(RedisError, OSError):
                await self._lease.release()  # a standby takes over at once
        await self._client.aclose()

    async def _supervise(self) -> None:
        renewed = -float("inf")
        while True:
            try:
                held = await self._lease.hold()
                if held:
                    renewed = time.monotonic()
            except (RedisError, OSError):
                # Unsure: keep delivering while the lease surely has not lapsed in Redis, then stand down.
                held = time.monotonic() - renewed < self._settings.lease_s * 2 / 3
            if held and not self._followers:
                log.info("alert delivery: %s delivers to %s", self._replica, self._settings.urls)
                self._followers = [
                    asyncio.create_task(self._follow(url), name=f"alert-delivery {target_name(url)}")
                    for url in self._settings.urls
                ]
            elif not held and self._followers:
                log.warning("alert delivery: %s lost the lease; standing by", self._replica)
                await self._step_down()
            self._metrics.delivery_leader.set(1 if self._followers else 0)
            if self._followers:
                await self._count_pending()
            await asyncio.sleep(self._settings.lease_s / 3)

    async def _step_down(self) -> None:
        # Every follower ends before another replica may lead: one left running would deliver twice.
        await stop_tasks(self._followers, STEP_DOWN_S, "alert delivery followers")
        self._followers = []
        self._metrics.delivery_leader.set(0)
        for url in self._settings.urls:
            self._metrics.delivery_pending.labels(target_name(url)).set(0)  # the next deliverer reports them

    async def _follow(self, url: str) -> None:
        """Deliver to one Alertmanager while this replica leads: its pending entries first, then new ones."""
        target = target_name(url)
        group = GROUP_PREFIX + target
        attempt = 0
        while True:
            try:
                await self._join(group)
                start: str | None = "0-0"  # this consumer's pending entries (claimed or its own) first
                next_resend = 0.0
                next_claim = time.monotonic() + self._settings.lease_s
                while True:
                    if not await self._lease.held():
                        # The lease lapsed under this follower (the process paused past it) and another replica
                        # may lead: read nothing, until the supervisor steps down or holds the lease again.
                        await asyncio.sleep(self._block_ms / 1000)
                        continue
                    reply: Any = await self._redis.xreadgroup(
                        group,
                        self._replica,
                        {EVENTS_KEY: start or ">"},
                        count=self._settings.batch_size,
                        block=None if start else self._block_ms,
                    )
                    entries = reply[0][1] if reply else []
                    if start and not entries:
                        start = None
                        continue
                    if entries:
                        await self._deliver(url, target, entries)
                        await self._redis.xack(EVENTS_KEY, group, *[e[0] for e in entries])
                        if start:
                            start = text(entries[-1][0])
                    if len(entries) < self._settings.batch_size and time.monotonic() >= next_resend:
                        await self._resend(url, target)
                        next_resend = time.monotonic() + self._settings.resend_interval_s
                    if start is None and time.monotonic() >= next_claim:
                        # Entries another consumer read and left (a replica that read after its lease lapsed,
                        # then stepped down) would otherwise wait for the next change of leader.
                        if await self._claim(group, min_idle_ms=int(self._settings.lease_s * 1000)):
                            start = "0-0"
                        next_claim = time.monotonic() + self._settings.lease_s
                    attempt = 0
            except (RedisError, OSError) as exc:
                attempt += 1
                log.warning(
                    "alert delivery to %s: Redis failed (%s); resuming from the pending entries", target, exc
                )
                await asyncio.sleep(self._backoff_s(attempt))
            except Exception:  # noqa: BLE001 - a side path: log, then resume from what is pending
                attempt += 1
                log.exception("alert delivery to %s failed; resuming from the pending entries", target)
                await asyncio.sleep(self._backoff_s(attempt))

    async def _join(self, group: str) -> None:
        """Create the group (from the start of the retained stream), take over every entry another consumer
        left pending, and drop consumers that hold nothing."""
        try:
            await self._redis.xgroup_create(EVENTS_KEY, group, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        await self._claim(group, min_idle_ms=0)
        consumers: Any = await self._redis.xinfo_consumers(EVENTS_KEY, group)
        for consumer in consumers:
            name = text(consumer["name"])
            if name != self._replica and int(consumer["pending"]) == 0:
                await self._redis.xgroup_delconsumer(EVENTS_KEY, group, name)

    async def _claim(self, group: str, min_idle_ms: int) -> int:
        """Take over the group's pending entries idle for at least ``min_idle_ms`` (any consumer's); returns
        how many."""
        cursor, claimed = "0-0", 0
        while True:
            reply: Any = await self._redis.xautoclaim(
                EVENTS_KEY, group, self._replica, min_idle_time=min_idle_ms, start_id=cursor, count=500
            )
            cursor, claimed = text(reply[0]), claimed + len(reply[1])
            if cursor == "0-0":
                return claimed

    async def _deliver(self, url: str, target: str, entries: list[Any]) -> None:
        """Post a batch's alerts until the Alertmanager accepts or refuses them, then record what fires."""
        batch: list[EventAlerts] = []
        for entry_id, fields in entries:
            if not fields:  # trimmed from the stream before it was delivered
                self._metrics.deliveries.labels(target, "expired").inc()
                continue
            try:
                event = decode_event(entry_id, fields)
            except (KeyError, ValueError):
                log.error(
                    "alert delivery: entry %s of %s is no alert event; skipped", text(entry_id), EVENTS_KEY
                )
                self._metrics.deliveries.labels(target, "skipped").inc()
                continue
            batch.append(EventAlerts(event, await self._alerts_of(event)))
        alerts = [alert for item in batch for alert in item.alerts]
        outcome = await self._post(url, target, "event", alerts, retry=True) if alerts else "accepted"
        now = time.time()
        for item in batch:
            if not item.alerts:
                self._metrics.deliveries.labels(target, "skipped").inc()
            elif outcome == "accepted":
                self._metrics.deliveries.labels(target, "delivered").inc()
                self._metrics.delivery_lag.labels(target).observe(
                    max(0.0, now - recorded_s(item.event["id"]))
                )
            else:
                self._metrics.deliveries.labels(target, "rejected").inc()
        await self._record_firing(target, batch)

    async def _alerts_of(self, event: dict[str, Any]) -> list[Alert]:
        cached = self._alerts.get(event["id"])
        if cached is None:
            if event["state"] in ("firing", "resolved"):
                context = await self._describe(event)
            else:
                context = EventContext("")
            cached = event_alerts(event, context, self._settings.labels, self._public_url)
            self._alerts[event["id"]] = cached
            while len(self._alerts) > 4 * self._settings.batch_size * max(1, len(self._settings.urls)):
                self._alerts.pop(next(iter(self._alerts)))
        return cached

    async def _record_firing(self, target: str, batch: list[EventAlerts]) -> None:
        latest: dict[str, list[Alert]] = {}
        for item in batch:
            if item.alerts:
                latest[item.event["stream_id"]] = [alert for alert in item.alerts if alert.firing]
        if not latest:
            return
        pipe = self._redis.pipeline(transaction=False)
        for stream_id, firing in latest.items():
            if firing:
                pipe.hset(firing_key(target), stream_id, "\n".join(a.dumps() for a in firing))
            else:
                pipe.hdel(firing_key(target), stream_id)
        await pipe.execute()

    async def _resend(self, url: str, target: str) -> None:
        """Post again what fires at this Alertmanager; failures wait for the next interval."""
        held: dict[Any, Any] = await self._redis.hgetall(firing_key(target))
        if not held:
            return
        stream_ids = [text(k) for k in held]
        pipe = self._redis.pipeline(transaction=False)
        for stream_id in stream_ids:
            pipe.hget(alert_key(stream_id), "state")
        states = await pipe.execute()
        gone = [sid for sid, state in zip(stream_ids, states, strict=True) if state is None]
        if gone and not await self._resolve_gone(url, target, gone, held):
            return
        # A stream whose state is not firing has a newer event on its way here (or lost to retention): wait.
        alerts = [
            Alert.loads(line)
            for sid, state in zip(stream_ids, states, strict=True)
            if state == b"firing"
            for line in text(held[sid.encode()]).splitlines()
        ]
        size = self._settings.batch_size
        for offset in range(0, len(alerts), size):
            if (
                await self._post(url, target, "resend", alerts[offset : offset + size], retry=False)
                == "failed"
            ):
                return

    async def _resolve_gone(self, url: str, target: str, gone: list[str], held: dict[Any, Any]) -> bool:
        """Post the alerts of streams whose alert state is gone (deleted, or expired with the stream) resolved
        now, and forget them once this Alertmanager accepted (or refused) the post: an operator who deletes a
        stream sees its alert end at once rather than when its expiry passes. False: the post failed; they stay
        held for the next interval."""
        now = time.time()
        held_alerts = [Alert.loads(line) for sid in gone for line in text(held[sid.encode()]).splitlines()]
        alerts = [
            replace(alert, ends_s=now, annotations={**alert.annotations, "resolution": GONE_RESOLUTION})
            for alert in held_alerts
        ]
        size = self._settings.batch_size
        for offset in range(0, len(alerts), size):
            if await self._post(url, target, "gone", alerts[offset : offset + size], retry=False) == "failed":
                return False
        await self._redis.hdel(firing_key(target), *gone)
        return True

    async def _post(self, url: str, target: str, kind: str, alerts: list[Alert], retry: bool) -> str:
        attempt = 0
        while True:
            now = time.time()
            payload = [alert.payload(now, self._settings.resend_interval_s) for alert in alerts]
            result = await self._client.post(url, payload)
            self._metrics.alertmanager_posts.labels(target, kind, result.outcome).inc()
            if result.outcome == "rejected":
                log.error(
                    "alert delivery: %s refused %d alerts with HTTP %s: %s",
                    target,
                    len(alerts),
                    result.status,
                    result.detail,
                )
            if result.outcome != "failed" or not retry:
                return result.outcome
            attempt += 1
            delay = self._backoff_s(attempt)
            log.warning(
                "alert delivery: %s failed (%s %s); retry %d in %.1f s",
                target,
                result.status or "no answer",
                result.detail[:200],
                attempt,
                delay,
            )
            await asyncio.sleep(delay)

    def _backoff_s(self, attempt: int) -> float:
        """Capped exponential backoff with jitter: a random delay in [cap/2, cap] of the doubled step."""
        step = min(self._settings.backoff_max_s, self._settings.backoff_initial_s * 2.0 ** (attempt - 1))
        return step * random.uniform(0.5, 1.0)

    async def _count_pending(self) -> None:
        """Events each Alertmanager has not accepted yet: read but unacknowledged, plus not read at all."""
        try:
            groups: Any = await self._redis.xinfo_groups(EVENTS_KEY)
        except (RedisError, OSError):
            return
        by_name = {text(info["name"]): info for info in groups}
        for url in self._settings.urls:
            info = by_name.get(GROUP_PREFIX + target_name(url))
            if info is not None:
                lag = info.get("lag")
                waiting = int(info["pending"]) + (int(lag) if lag is not None else 0)
                self._metrics.delivery_pending.labels(target_name(url)).set(waiting)
