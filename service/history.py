"""Recent scores per stream, for the live view: a capped Redis Stream per stream id, expiring when idle.

``vigil:{<stream_id>}:h`` (hash-tagged with the stream's other keys) holds the last ``maxlen`` scored points
(ts, score, level, top sensors). Prometheus cannot hold per-stream series; this can, bounded.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from service.windows import text

log = logging.getLogger(__name__)


def history_key(stream_id: str) -> str:
    return f"vigil:{{{stream_id}}}:h"


class ScoreHistory:
    def __init__(self, redis: Redis, maxlen: int, ttl_s: int) -> None:
        self._redis = redis
        self._maxlen = maxlen
        self._ttl_s = ttl_s

    async def record(self, stream_id: str, scores: list[dict[str, Any]]) -> None:
        """Append scored points (one pipelined round trip); failures are logged, never raised to scoring."""
        if not scores or self._maxlen == 0:
            return
        key = history_key(stream_id)
        pipe = self._redis.pipeline(transaction=False)
        for item in scores[-self._maxlen :]:
            pipe.xadd(
                key,
                {
                    "ts": repr(item["ts"]),
                    "score": repr(item["score"]),
                    "level": item["level"],
                    "sensors": ",".join(c["sensor"] for c in item["contributions"]),
                    "shares": ",".join(f"{c['share']:.4f}" for c in item["contributions"]),
                },
                maxlen=self._maxlen,
                approximate=True,
            )
        pipe.expire(key, self._ttl_s)
        try:
            await pipe.execute()
        except RedisError:
            log.exception("score history not recorded for stream %s", stream_id)

    async def recent(self, stream_id: str, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` scored points, oldest first."""
        entries = await self._redis.xrevrange(history_key(stream_id), count=limit) or []
        out = []
        for _entry_id, fields in reversed(entries):
            raw = {text(k): text(v) for k, v in (fields or {}).items()}
            sensors = [s for s in raw["sensors"].split(",") if s]
            shares = [float(v) for v in raw["shares"].split(",") if v]
            out.append(
                {
                    "ts": float(raw["ts"]),
                    "score": float(raw["score"]),
                    "level": raw["level"],
                    "contributions": [
                        {"sensor": s, "share": v} for s, v in zip(sensors, shares, strict=False)
                    ],
                }
            )
        return out

    async def forget(self, stream_id: str) -> None:
        await self._redis.delete(history_key(stream_id))
