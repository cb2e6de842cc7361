"""Recent scores per stream, for the live view: packed records in a capped Redis list, expiring when idle.

``vigil:{<stream_id>}:r`` (hash-tagged with the stream's other keys) holds the last ``maxlen`` scored points,
one packed little-endian record each: ts float64, score float32, level uint8, then the top sensors as
(index uint16, share uint16 in 1/65535) pairs. With 3 top sensors a record is 25 bytes, against ~115 for the same
point as a Redis Stream entry of text fields: at 100,000 streams the difference is gigabytes. Sensor names
are resolved on read from the stream's model (a stream stays bound to one model, so its sensors are fixed).
Prometheus cannot hold per-stream series; this can, bounded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from redis.asyncio import Redis
from redis.exceptions import RedisError

from models.scoring import F32
from service.errors import StoreUnavailable
from service.roundtrip import LuaScript, RoundTrip

log = logging.getLogger(__name__)

LEVELS = ("normal", "warning", "critical")
LEVEL_CODES = {name: code for code, name in enumerate(LEVELS)}
PAIR = np.dtype([("sensor", "<u2"), ("share", "<u2")])  # share in [0, 1] as a fraction of SHARE_ONE
SHARE_ONE = 65535
# The Redis Stream of text fields this list replaced; deleted with the stream so no old key outlives it.
LEGACY_SUFFIX = ":h"


# KEYS: history list[, the stream's meta hash: when given and gone (the stream was deleted while a request scored
# it), nothing is written]. ARGV: maxlen, ttl, then packed records in ts order (each starts with its ts, float64).
RECORD_LUA = """
if KEYS[2] and redis.call('EXISTS', KEYS[2]) == 0 then return 0 end
local newest = redis.call('LINDEX', KEYS[1], -1)
local last = newest and struct.unpack('<d', newest) or nil
for i = 3, #ARGV do
  if last == nil or struct.unpack('<d', ARGV[i]) > last then redis.call('RPUSH', KEYS[1], ARGV[i]) end
end
redis.call('LTRIM', KEYS[1], -tonumber(ARGV[1]), -1)
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[2]))
return 1
"""


def _nothing(replies: list[Any]) -> None:
    return None


def history_key(stream_id: str) -> str:
    return f"vigil:{{{stream_id}}}:r"


def record_dtype(top_k: int) -> np.dtype[np.void]:
    """Packed (no padding), little-endian: ts float64, score float32, level uint8, then ``top_k`` pairs."""
    return np.dtype([("ts", "<f8"), ("score", "<f4"), ("level", "u1"), ("pairs", PAIR, (top_k,))])


def pack_scores(
    ts: list[float], scores: list[float], levels: list[str], sensors: npt.NDArray[np.int64], shares: F32
) -> list[bytes]:
    """One packed record per scored point; ``sensors``/``shares`` ``[n, k]`` are its top contributions."""
    n, top_k = sensors.shape
    table = np.empty(n, dtype=record_dtype(top_k))
    table["ts"] = ts
    table["score"] = scores
    table["level"] = [LEVEL_CODES[level] for level in levels]
    table["pairs"]["sensor"] = sensors
    table["pairs"]["share"] = np.rint(np.clip(shares, 0.0, 1.0) * SHARE_ONE)
    raw, size = table.tobytes(), table.dtype.itemsize
    return [raw[i * size : (i + 1) * size] for i in range(n)]


def unpack_score(record: bytes, feature_names: list[str]) -> dict[str, Any]:
    top_k = (len(record) - record_dtype(0).itemsize) // PAIR.itemsize
    point = np.frombuffer(record, dtype=record_dtype(top_k))[0]
    pairs = point["pairs"]
    return {
        "ts": float(point["ts"]),
        "score": float(point["score"]),
        "level": LEVELS[int(point["level"])],
        "contributions": [
            {"sensor": feature_names[int(i)], "share": round(int(s) / SHARE_ONE, 4)}
            for i, s in zip(pairs["sensor"], pairs["share"], strict=True)
            if int(i) < len(feature_names)
        ],
    }


class ScoreHistory:
    def __init__(self, redis: Redis, maxlen: int, ttl_s: int) -> None:
        self._redis = redis
        self._maxlen = maxlen
        self._ttl_s = ttl_s
        self._record = LuaScript(RECORD_LUA)

    def queue_record(
        self, trip: RoundTrip, stream_id: str, records: list[bytes], fence: str | None = None
    ) -> Callable[[list[Any]], None]:
        """Queue the append of packed scored points on ``trip``; the returned function logs a failure (never
        raised to scoring: the history serves the live view, not the alert path). Records whose ts is not
        after the newest held one are skipped, so a window scored again after a crash is not recorded twice.
        ``fence``: as in ``AlertTracker.queue_observe``."""
        if not records or self._maxlen == 0:
            return _nothing
        keys = [history_key(stream_id), *([fence] if fence is not None else [])]
        index = trip.eval(self._record, keys, [self._maxlen, self._ttl_s, *records[-self._maxlen :]])

        def check(replies: list[Any]) -> None:
            if isinstance(replies[index], Exception):
                log.error("score history not recorded for stream %s: %s", stream_id, replies[index])

        return check

    async def record(self, stream_id: str, records: list[bytes]) -> None:
        """Append packed scored points in their own round trip (see :meth:`queue_record`)."""
        trip = RoundTrip(self._redis)
        check = self.queue_record(trip, stream_id, records)
        try:
            check(await trip.execute())
        except RedisError:
            log.exception("score history not recorded for stream %s", stream_id)

    async def recent(self, stream_id: str, limit: int, feature_names: list[str]) -> list[dict[str, Any]]:
        """The newest ``limit`` scored points, oldest first (none when ``limit`` is 0). Raises
        :class:`StoreUnavailable` when Redis fails."""
        if limit <= 0:
            return []
        try:
            records: list[bytes] = await self._redis.lrange(history_key(stream_id), -limit, -1) or []  # type: ignore[assignment]
        except RedisError as exc:
            raise StoreUnavailable(f"score history unavailable: {type(exc).__name__}") from exc
        return [unpack_score(r, feature_names) for r in records]

    @staticmethod
    def keys(stream_id: str) -> list[str]:
        """The stream's keys here, for a delete with the stream's other keys."""
        return [history_key(stream_id), f"vigil:{{{stream_id}}}{LEGACY_SUFFIX}"]
