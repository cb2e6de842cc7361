"""The live streams as the window store holds them, read-only, for the live view.

A stream is live while its meta hash (:func:`~service.windows.meta_key`) has not expired. These reads use the
window store's keys (defined in ``service/windows.py``) and belong with :class:`~service.windows.WindowStore`;
they are kept here, with their Redis errors turned into :class:`StoreUnavailable`, so that no route touches
Redis itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.errors import StoreUnavailable
from service.redis_clients import text
from service.schemas import STREAM_ID_PATTERN
from service.windows import meta_key, window_key

SCAN_COUNT = 1000  # keys the server examines per SCAN step
# meta_key(id) == _PREFIX + id + _SUFFIX (stream ids never contain braces)
_PREFIX, _SUFFIX = meta_key("\0").split("\0")
_STREAM_ID = re.compile(STREAM_ID_PATTERN)


def stream_id_of(key: bytes | str) -> str | None:
    """The stream id of a meta hash key, or None for any other key the SCAN pattern also matches."""
    name = text(key)
    if not (name.startswith(_PREFIX) and name.endswith(_SUFFIX)):
        return None
    stream_id = name[len(_PREFIX) : -len(_SUFFIX)]
    return stream_id if _STREAM_ID.match(stream_id) else None


@dataclass(frozen=True)
class StreamSummary:
    stream_id: str
    model: str
    last_ts: float | None
    points_total: int


@dataclass(frozen=True)
class HeldWindow:
    """A stream's bound model and the packed records its window list holds, oldest first (at least the last
    L points once L have arrived; see ``service.windows.unpack_records``)."""

    model: str
    records: list[bytes]


class StreamCatalog:
    """Raises :class:`StoreUnavailable` from every method when Redis fails."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis

    async def find(self, limit: int) -> tuple[list[str], bool]:
        """Up to ``limit`` live stream ids (sorted) and whether more exist, by SCAN over the meta hashes.

        SCAN walks the keyspace in steps of ``SCAN_COUNT`` keys (a few keys per stream, plus the alert stream):
        finding ``limit`` streams costs O(keys visited / SCAN_COUNT) round trips, each O(SCAN_COUNT) on the
        server and never blocking it for longer; a page that stops at ``limit`` visits only part of it. Which
        streams a truncated page holds is arbitrary (hash order).
        """
        found: set[str] = set()  # SCAN may return a key twice while the table rehashes
        try:
            async for key in self._redis.scan_iter(match=meta_key("*"), count=SCAN_COUNT):
                stream_id = stream_id_of(key)
                if stream_id is not None:
                    found.add(stream_id)
                    if len(found) > limit:
                        break
        except RedisError as exc:
            raise StoreUnavailable(f"stream list unavailable: {type(exc).__name__}") from exc
        return sorted(found)[:limit], len(found) > limit

    async def summaries(self, stream_ids: list[str]) -> list[StreamSummary]:
        """Model, last ts and points received of each stream, in one round trip; streams that expired
        meanwhile are left out."""
        pipe = self._redis.pipeline(transaction=False)
        for stream_id in stream_ids:
            pipe.hmget(meta_key(stream_id), "model", "last_ts", "count")
        try:
            replies = await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(f"stream list unavailable: {type(exc).__name__}") from exc
        out = []
        for stream_id, (model, last_ts, count) in zip(stream_ids, replies, strict=True):
            if model is not None:
                out.append(
                    StreamSummary(
                        stream_id, text(model), float(last_ts) if last_ts else None, int(count or 0)
                    )
                )
        return out

    async def model_of(self, stream_id: str) -> str | None:
        """The model the stream is bound to; None for an unknown (or expired) stream."""
        try:
            model = await self._redis.hget(meta_key(stream_id), "model")
        except RedisError as exc:
            raise StoreUnavailable(f"window store unavailable: {type(exc).__name__}") from exc
        return None if model is None else text(model)

    async def held(self, stream_id: str) -> HeldWindow | None:
        """The stream's model and held records, read together (one round trip); None for an unknown stream."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.lrange(window_key(stream_id), 0, -1)
        pipe.hget(meta_key(stream_id), "model")
        try:
            records, model = await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(f"window store unavailable: {type(exc).__name__}") from exc
        return None if model is None else HeldWindow(text(model), list(records))
