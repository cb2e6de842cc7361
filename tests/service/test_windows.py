"""The Redis window store: atomic append, drops, binding, TTL, memory (real redis-server)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
import redis
from redis.asyncio import Redis

from service.errors import ModelMismatch
from service.windows import WindowStore, meta_key, window_key

L, S, C = 10, 3, 4


def run(coro):
    return asyncio.run(coro)


async def _append(url: str, stream: str, ts: list[float], model: str = "m", ttl_s: int = 60):
    client = Redis.from_url(url)
    try:
        store = WindowStore(client, ttl_s)
        values = np.tile(np.asarray(ts, dtype=np.float32)[:, None], (1, C))
        return await store.append(stream, model, L, S, np.asarray(ts, dtype=np.float64), values)
    finally:
        await client.aclose()


def test_windows_are_returned_when_due_with_the_points_they_score(
    redis_url: str, clean_redis: redis.Redis
) -> None:
    first = run(_append(redis_url, "w", [float(t) for t in range(9)]))
    assert first.windows == [] and first.count_after == 9
    second = run(_append(redis_url, "w", [float(t) for t in range(9, 16)]))
    assert [w.end_index for w in second.windows] == [9, 12, 15]
    window = second.windows[1]
    assert window.ts.tolist() == [float(t) for t in range(3, 13)]
    assert window.values[:, 0].tolist() == [float(t) for t in range(3, 13)]  # values travel with their ts
    assert second.windows[0].span == L and window.span == S


def test_the_stored_window_is_trimmed_to_the_window_length(redis_url: str, clean_redis: redis.Redis) -> None:
    run(_append(redis_url, "trim", [float(t) for t in range(25)]))
    assert clean_redis.llen(window_key("trim")) == L
    assert clean_redis.hget(meta_key("trim"), "count") == b"25"


def test_a_retried_append_adds_nothing(redis_url: str, clean_redis: redis.Redis) -> None:
    run(_append(redis_url, "retry", [1.0, 2.0, 3.0]))
    again = run(_append(redis_url, "retry", [1.0, 2.0, 3.0]))
    assert again.status == [1, 1, 1] and again.count_after == 3
    assert clean_redis.llen(window_key("retry")) == 3


def test_a_stream_stays_bound_to_its_first_model(redis_url: str, clean_redis: redis.Redis) -> None:
    run(_append(redis_url, "bound", [1.0], model="a"))
    with pytest.raises(ModelMismatch, match="bound to model 'a'"):
        run(_append(redis_url, "bound", [2.0], model="b"))
    assert clean_redis.llen(window_key("bound")) == 1


def test_idle_streams_expire(redis_url: str, clean_redis: redis.Redis) -> None:
    run(_append(redis_url, "idle", [1.0], ttl_s=30))
    for key in (window_key("idle"), meta_key("idle")):
        assert 0 < clean_redis.ttl(key) <= 30


def test_keys_of_a_stream_share_one_cluster_slot() -> None:
    assert window_key("s-1").split("}")[0] == meta_key("s-1").split("}")[0] == "vigil:{s-1"
