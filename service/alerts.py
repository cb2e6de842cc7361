"""Alert lifecycle per stream (ok → pending → firing → resolved), state in Redis so replicas agree.

Firing needs k of the last n points at or over the warning threshold, or one at or over critical; resolving
needs m points in a row under ``exit_ratio × warning`` (hysteresis). Severity follows the highest level
crossed. Thresholds are the model's calibrated ones or follow each stream (adaptive, state in the same hash).
Transitions are returned as events and appended to a bounded Redis Stream (``vigil:alerts``). The semantics are
those of ``models.lifecycle``, the pure-Python reference that offline evaluation and calibration use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from models.lifecycle import AdaptiveConstants, LevelThresholds, StreamAlertState, stream_thresholds
from service.alert_events import (
    EVENT_FIELDS,
    EVENTS_KEY,
    LAST_EVENT_ID,
    decode_event,
    decode_or_skip,
    id_key,
)
from service.alert_scripts import ALERT_LUA, FILTER_LUA, PUBLISH_LUA
from service.errors import EventsTrimmed, StoreUnavailable
from service.lease import RELEASE_LUA
from service.redis_clients import text
from service.results import AlertEventData
from service.roundtrip import LuaScript, RoundTrip, raise_if_error

log = logging.getLogger(__name__)


def _published(reply: list[Any]) -> dict[EventKey, str]:
    """``PUBLISH_LUA``'s reply (id, state, ts, escalated per event) as each event's id by its key."""
    values = [text(value) for value in reply]
    return {event_key(*values[i + 1 : i + 4]): values[i] for i in range(0, len(values), 4)}


def alert_key(stream_id: str) -> str:
    return f"vigil:{{{stream_id}}}:a"


def outbox_key(stream_id: str) -> str:
    """Events raised for the stream and not yet in ``vigil:alerts`` (same slot as its state)."""
    return f"vigil:{{{stream_id}}}:o"


def flush_lock_key(stream_id: str) -> str:
    """Held while one process moves the stream's outbox to ``vigil:alerts`` on a cluster (same slot)."""
    return f"vigil:{{{stream_id}}}:of"


FLUSH_LOCK_S = 10.0
# Entries a filtered read scans per call in Redis: each call holds Redis for about 2.4 ms (bench.alert_reads).
FILTER_PAGE = 1000


def lifecycle_args(levels: LevelThresholds, ttl_s: int, points: PointColumns) -> list[str | int]:
    """ARGV of ``ALERT_LUA``: every float as ``repr`` (round-trips exactly), the adaptive constants computed
    once here by the same code the reference uses; the points' three fields interleaved by slice assignment
    (no object per point: a 100-point request sends 300 of them)."""
    policy = levels.policy
    adaptive = AdaptiveConstants.of(levels) if policy.thresholds == "adaptive" else None
    args: list[str | int] = [
        repr(levels.warning),
        repr(levels.critical),
        repr(policy.exit_ratio),
        policy.k,
        policy.n,
        policy.m,
        ttl_s,
        1 if adaptive else 0,
    ]
    if adaptive is None:
        args.extend(("0", "0", "0", "0", "0", 0, "1", "1"))
    else:
        args.extend(
            (
                repr(adaptive.z_warning),
                repr(adaptive.z_critical),
                repr(adaptive.z_exit),
                repr(adaptive.alpha),
                repr(adaptive.sigma_floor),
                adaptive.warmup,
                repr(adaptive.min_ratio),
                repr(adaptive.max_ratio),
            )
        )
    head = len(args)
    args.extend([""] * (3 * len(points)))
    args[head::3] = map(repr, points.ts)
    args[head + 1 :: 3] = map(repr, points.scores)
    args[head + 2 :: 3] = points.sensors
    return args


@dataclass(frozen=True)
class ScoredPoint:
    ts: float
    score: float
    sensors: list[str]


@dataclass(frozen=True)
class PointColumns:
    """Points for the lifecycle, one list per field: ts, score, and each point's top sensors joined by ``,``."""

    ts: list[float]
    scores: list[float]
    sensors: list[str]

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def of(cls, points: list[ScoredPoint]) -> PointColumns:
        return cls([p.ts for p in points], [p.score for p in points], [",".join(p.sensors) for p in points])


EventKey = tuple[str, str, str]


def event_key(state: str, ts_text: str, escalated: str) -> EventKey:
    """What tells a stream's events apart: its points' ts strictly increase, and one point raises at most one
    event of each state (``pending`` and ``firing`` may share a ts; an escalation is a second ``firing``)."""
    return state, ts_text, escalated


@dataclass(frozen=True)
class Observed:
    """A stream's lifecycle update and how many of its events wait in its outbox (this call's included)."""

    stream_id: str
    model: str
    update: AlertUpdate
    waiting: int
    keys: list[EventKey]  # each event's key (see ``event_key``), in the order of ``update.events``


@dataclass(frozen=True)
class AlertUpdate:
    """What one lifecycle update caused: its events (published, with ids) and one level per point (``0`` normal,
    ``1`` warning, ``2`` critical, ``-`` skipped), from the thresholds in effect for the stream."""

    events: list[AlertEventData]
    levels: str


@dataclass(frozen=True)
class StreamLevels:
    """A stream's thresholds in effect: ``per_stream`` when they follow its scores (after ``learned_points`` of
    its warm-up; until then the calibrated ones)."""

    warning: float
    critical: float
    exit: float
    per_stream: bool
    learned_points: int


class AlertTracker:
    """Per-stream lifecycle state in Redis. Every event a transition raises goes, in the same atomic call, to
    the stream's outbox; the outbox is then appended to ``vigil:alerts``. When that append fails (or the process
    dies first), the events wait in Redis and go out, in order, with the stream's next update, or before it:
    the process retries its failed publishes, and a replica that starts publishes every outbox it finds
    (:meth:`keep_publishing`). None is lost, and a stream that goes quiet does not hold its events."""

    def __init__(self, redis: Redis, ttl_s: int, stream_maxlen: int, cluster: bool = False) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._maxlen = stream_maxlen
        self._cluster = cluster
        # Streams whose publish failed here: their events wait in the outbox, retried by keep_publishing (a
        # stream that goes quiet, its machine dead, has no next update to carry them).
        self.stranded: dict[str, str] = {}
        self._script = LuaScript(ALERT_LUA)
        self._publish = LuaScript(PUBLISH_LUA)
        self._filter = LuaScript(FILTER_LUA)
        self._unlock = redis.register_script(RELEASE_LUA)  # deletes the lock only if it holds this token

    def queue_observe(
        self,
        trip: RoundTrip,
        stream_id: str,
        model: str,
        levels: LevelThresholds,
        points: PointColumns,
        fence: str | None = None,
    ) -> Callable[[list[Any]], Observed]:
        """Queue the lifecycle update over ``points`` on ``trip``; the returned function decodes it (raising
        the Redis error of a failed update). Its events are not yet in ``vigil:alerts``: see :meth:`publish`.
        ``fence``: a key of the stream that exists while it does (its window store's meta hash); when it is
        gone the update writes nothing."""
        keys = [alert_key(stream_id), outbox_key(stream_id), *([fence] if fence is not None else [])]
        index = trip.eval(self._script, keys, lifecycle_args(levels, self._ttl_s, points))

        def decode(replies: list[Any]) -> Observed:
            reply = raise_if_error(replies[index])
            raw_events, raw_levels, waiting = reply
            events = [
                cast(
                    AlertEventData,
                    decode_event(
                        None, dict(zip(EVENT_FIELDS, (stream_id, model, *map(text, raw)), strict=True))
                    ),
                )
                for raw in raw_events
            ]
            for event in events:
                event["id"] = None
            keys = [event_key(text(raw[0]), text(raw[3]), text(raw[6])) for raw in raw_events]
            return Observed(stream_id, model, AlertUpdate(events, text(raw_levels)), int(waiting), keys)

        return decode

    async def publish(self, observed: list[Observed]) -> None:
        """Append the outboxes of the streams that have events waiting to ``vigil:alerts`` (one round trip for
        all) and give this call's events their ids. Failures are logged, never raised to scoring: the events
        stay in their outbox and go out with the stream's next update."""
        waiting = [o for o in observed if o.waiting]
        if not waiting:
            return
        busy: set[str] = set()  # streams whose outbox another flush holds (cluster): retried like a failure
        try:
            if self._cluster:
                ids = []
                for o in waiting:
                    flushed = await self._flush_in_two_steps(o.stream_id, o.model)
                    if flushed is None:
                        busy.add(o.stream_id)
                    ids.append(flushed or {})
            else:
                trip = RoundTrip(self._redis)
                for o in waiting:
                    trip.eval(
                        self._publish,
                        [outbox_key(o.stream_id), EVENTS_KEY],
                        [self._maxlen, o.stream_id, o.model],
                    )
                ids = [_published(raise_if_error(reply)) for reply in await trip.execute()]
        except RedisError:
            log.exception(
                "alert events of %d streams not published yet (kept in their outboxes, retried)", len(waiting)
            )
            self.stranded.update((o.stream_id, o.model) for o in waiting)
            return
        for o in waiting:
            if o.stream_id in busy:
                self.stranded[o.stream_id] = o.model
            else:
                self.stranded.pop(o.stream_id, None)
        # By key, not by position: another update of the same stream (another replica) may have published this
        # call's events already, or added its own to the outbox first; those keep id None here.
        for o, published in zip(waiting, ids, strict=True):
            for event, key in zip(o.update.events, o.keys, strict=True):
                event["id"] = published.get(key)

    async def observe(
        self, stream_id: str, model: str, levels: LevelThresholds, points: list[ScoredPoint]
    ) -> AlertUpdate:
        """Advance the stream's alert state over ``points`` (ts order); returns the events it caused (``id``
        None for an event not published yet: it stays in the outbox)."""
        if not points:
            return AlertUpdate([], "")
        trip = RoundTrip(self._redis)
        decode = self.queue_observe(trip, stream_id, model, levels, PointColumns.of(points))
        observed = decode(await trip.execute())
        await self.publish([observed])
        return observed.update

    async def _flush_in_two_steps(self, stream_id: str, model: str) -> dict[EventKey, str] | None:
        """On a cluster the outbox and the event stream are in different slots: append each entry, then remove
        that entry from the outbox by its value (a crash in between publishes it again: at least once). One
        flush of a stream at a time (a lock in the outbox's slot), so concurrent flushes (a request's and a
        retry's, or two replicas') neither repeat nor reorder its events; one whose lock lapsed while it paused
        may append an entry twice, never remove one it did not append. None: another flush holds the lock."""
        lock, token = flush_lock_key(stream_id), secrets.token_hex(8)
        if not await self._redis.set(lock, token, nx=True, px=int(FLUSH_LOCK_S * 1000)):
            return None
        try:
            entries = await self._redis.lrange(outbox_key(stream_id), 0, -1)
            ids: dict[EventKey, str] = {}
            for entry in entries:
                raw = json.loads(entry)
                fields = dict(zip(EVENT_FIELDS, (stream_id, model, *raw), strict=True))
                entry_id = await self._redis.xadd(EVENTS_KEY, fields, maxlen=self._maxlen, approximate=True)  # type: ignore[arg-type]
                await self._redis.lrem(outbox_key(stream_id), 1, entry)  # type: ignore[arg-type]  # bytes as read
                ids[event_key(raw[0], raw[3], raw[6])] = text(entry_id)
            return ids
        finally:
            with contextlib.suppress(RedisError, OSError):  # unreleased, it lapses after FLUSH_LOCK_S
                await self._unlock(keys=[lock], args=[token])

    async def keep_publishing(
        self, model_of: Callable[[str], Awaitable[str | None]], interval_s: float = 1.0
    ) -> None:
        """Publish what waits in outboxes without a next update to carry it: first every non-empty outbox in
        Redis (a replica that died between an update and its publish left them), then, every ``interval_s``,
        the streams whose publish failed here. Runs until cancelled; Redis failures wait for the next turn."""
        swept, pause = False, interval_s
        while True:
            try:
                if not swept:
                    await self._find_outboxes(model_of)
                    swept = True
                if self.stranded:
                    waiting = [
                        Observed(stream_id, model, AlertUpdate([], ""), 1, [])
                        for stream_id, model in list(self.stranded.items())
                    ]
                    await self.publish(waiting)
            except (RedisError, OSError, StoreUnavailable):
                log.warning("alert outboxes: Redis unavailable, retrying")
            except Exception:  # noqa: BLE001 - a side task: log it and go on, never stop retrying
                log.exception("alert outboxes: publishing failed, retrying")
            # while publishing keeps failing, wait longer between tries (up to 30 s), not to flood the log
            pause = interval_s if swept and not self.stranded else min(30.0, pause * 2)
            await asyncio.sleep(pause)

    async def _find_outboxes(self, model_of: Callable[[str], Awaitable[str | None]]) -> None:
        """Every stream with events in its outbox (one SCAN of the key space, at start), as stranded."""
        async for key in self._redis.scan_iter(match="vigil:{*}:o", count=1000):
            name = text(key)
            stream_id = name[len("vigil:{") : -len("}:o")]
            model = await model_of(stream_id)
            if model is not None:  # a deleted stream's outbox goes with it (DELETE /streams)
                self.stranded.setdefault(stream_id, model)

    @staticmethod
    def keys(stream_id: str) -> list[str]:
        """The stream's keys here (state and outbox), for a delete with the stream's other keys."""
        return [alert_key(stream_id), outbox_key(stream_id)]

    async def state(self, stream_id: str) -> dict[str, str]:
        """The stream's alert state hash (empty: ``ok``). Raises :class:`StoreUnavailable` when Redis fails."""
        try:
            raw = await self._redis.hgetall(alert_key(stream_id))
        except RedisError as exc:
            raise StoreUnavailable(f"alert state unavailable: {type(exc).__name__}") from exc
        return {text(k): text(v) for k, v in raw.items()}

    async def levels_in_effect(self, stream_id: str, levels: LevelThresholds) -> StreamLevels:
        """The thresholds the stream's next point meets: the calibrated ones, or with per-stream thresholds
        those its own scores have moved them to (the reference's arithmetic, equal to the Lua's). Raises
        :class:`StoreUnavailable` when Redis fails."""
        try:
            seen, mean, var = await self._redis.hmget(alert_key(stream_id), "seen", "mean", "var")
        except RedisError as exc:
            raise StoreUnavailable(f"alert state unavailable: {type(exc).__name__}") from exc
        learned = StreamAlertState(seen=int(seen or 0), mean=float(mean or 0.0), var=float(var or 0.0))
        per_stream = levels.policy.thresholds == "adaptive"
        warning, critical, exit_level = stream_thresholds(
            learned, levels, AdaptiveConstants.of(levels) if per_stream else None
        )
        return StreamLevels(warning, critical, exit_level, per_stream, learned.seen)

    async def states(self, stream_ids: list[str]) -> list[tuple[str, str | None]]:
        """``(state, severity)`` of each stream in one round trip; ``("ok", None)`` for a stream without alert
        state, and severity None unless an alert is open. Raises :class:`StoreUnavailable` when Redis fails."""
        pipe = self._redis.pipeline(transaction=False)
        for stream_id in stream_ids:
            pipe.hmget(alert_key(stream_id), "state", "severity")
        try:
            replies = await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(f"alert state unavailable: {type(exc).__name__}") from exc
        out: list[tuple[str, str | None]] = []
        for state, severity in replies:
            current = text(state) if state else "ok"
            out.append((current, text(severity) if severity and current != "ok" else None))
        return out

    async def check_resumable(self, since: str) -> None:
        """Raise :class:`EventsTrimmed` when events after ``since`` may have been trimmed from the retained
        stream (its retention, ``stream_maxlen``, passed them): ``since`` is older than the oldest event held
        and the stream has dropped events. Trimming takes the oldest first, so a resume from the oldest held on
        loses nothing; the one case refused without a loss is a ``since`` that is exactly the last event
        trimmed (Redis does not name it), and its client resumes with ``since=0`` and gets the same events."""
        if since == "0-0":
            return
        try:
            info: dict[Any, Any] = await self._redis.xinfo_stream(EVENTS_KEY)
        except ResponseError:
            return  # no stream yet: nothing was trimmed
        except RedisError as exc:
            raise StoreUnavailable(f"alert events unavailable: {type(exc).__name__}") from exc
        added = int(info.get("entries-added") or info.get(b"entries-added") or 0)
        held = int(info.get("length") or info.get(b"length") or 0)
        first = info.get("first-entry") or info.get(b"first-entry")
        oldest = text(first[0]) if first else None
        if added > held and (oldest is None or id_key(since) < id_key(oldest)):
            raise EventsTrimmed(
                f"query.since: events after {since} are no longer held ({added - held} of the oldest events "
                f"were trimmed; the oldest held is {oldest or 'none'}); resume with since=0 for every event "
                "still held"
            )

    async def read_events(self, since: str | None, stream_id: str | None, limit: int) -> list[dict[str, Any]]:
        """Events after id ``since`` (exclusive; see :func:`is_event_id`) in order, optionally for one stream.
        Raises :class:`StoreUnavailable` when Redis is unreachable."""
        if since == LAST_EVENT_ID:
            return []  # nothing follows it, and Redis refuses an exclusive range from it
        start = f"({since}" if since else "-"
        out: list[dict[str, Any]] = []
        batch: list[tuple[Any, Any]]
        while len(out) < limit:
            try:
                if stream_id is None:
                    batch = await self._redis.xrange(EVENTS_KEY, min=start, max="+", count=max(limit, 100))  # type: ignore[assignment]
                    last = batch[-1][0] if batch else b""
                else:  # scanned in Redis (FILTER_LUA): here it held the loop 941 ms for 100,000 events
                    trip = RoundTrip(self._redis)
                    trip.eval(self._filter, [EVENTS_KEY], [start, stream_id, FILTER_PAGE, limit - len(out)])
                    last, found = (await trip.execute())[0]
                    batch = [(entry_id, dict(zip(f[::2], f[1::2], strict=True))) for entry_id, f in found]
            except RedisError as exc:
                raise StoreUnavailable(f"alert events unavailable: {type(exc).__name__}") from exc
            if not last:
                break
            for (
                entry_id,
                fields,
            ) in batch:  # (FILTER_LUA returns only the stream's entries and malformed ones)
                event = decode_or_skip(entry_id, fields)
                if event is not None:
                    out.append(event)
                    if len(out) >= limit:
                        break
            start = f"({text(last)}"
        return out
