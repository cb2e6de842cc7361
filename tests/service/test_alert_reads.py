"""Filtered alert reads (``GET /alerts?stream_id=``, a filtered feed's catch-up): scanned in Redis a page at a
time (``FILTER_LUA``), they return exactly the events of the stream, in order, across pages, after ``since``
and up to ``limit``, skipping an entry that is no alert event; on one Redis and on a Redis Cluster."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
import redis

from service.alert_events import EVENTS_KEY
from service.alerts import FILTER_PAGE, AlertTracker
from service.redis_clients import redis_client
from tests.service.conftest import make_settings

FIELDS = {
    "model": "tvnet",
    "state": "firing",
    "severity": "warning",
    "started_ts": "1.0",
    "peak_score": "2.0",
    "threshold": "1.0",
    "sensors": "s1,s2",
    "escalated": "0",
}


def fill(store: Any, n: int) -> list[tuple[str, str]]:
    """``n`` events, one in 7 of stream "rare", the rest of "busy", and one entry without a stream id (written
    by another tool) in the middle; returns (id, stream) of each event in order."""
    added: list[tuple[str, str]] = []
    for start in range(0, n, 500):
        for i in range(start, min(start + 500, n)):
            stream = "rare" if i % 7 == 3 else "busy"
            entry = store.xadd(EVENTS_KEY, {"stream_id": stream, "ts": repr(float(i)), **FIELDS})
            added.append((entry.decode(), stream))
            if i == n // 2:
                store.xadd(EVENTS_KEY, {"note": "written by hand"})
    return added


def read(
    url: str, models_dir: Path, since: str | None, stream: str | None, limit: int, **cluster: Any
) -> list[str]:
    async def run() -> list[str]:
        client = redis_client(make_settings(models_dir, url, **cluster))
        try:
            tracker = AlertTracker(client, 3600, 100_000, cluster=bool(cluster))
            return [e["id"] for e in await tracker.read_events(since, stream, limit)]
        finally:
            await client.aclose()

    return asyncio.run(run())


def check_reads(url: str, models_dir: Path, added: list[tuple[str, str]], **cluster: Any) -> None:
    rare = [i for i, s in added if s == "rare"]
    assert len(added) > 2 * FILTER_PAGE and len(rare) > 300  # several pages, more than one page of rare
    assert read(url, models_dir, None, "rare", 1000, **cluster) == rare
    assert (
        read(url, models_dir, "0-0", "busy", 1000, **cluster) == [i for i, s in added if s == "busy"][:1000]
    )
    first = read(url, models_dir, None, "rare", 5, **cluster)
    assert first == rare[:5]
    assert read(url, models_dir, first[-1], "rare", 5, **cluster) == rare[5:10]
    assert read(url, models_dir, rare[-1], "rare", 5, **cluster) == []
    assert read(url, models_dir, None, "nobody", 10, **cluster) == []
    everything = read(url, models_dir, None, None, 1000, **cluster)
    assert everything == [i for i, _ in added][:1000]


def test_filtered_reads_return_exactly_the_streams_events(
    models_dir: Path, redis_url: str, clean_redis: redis.Redis
) -> None:
    check_reads(redis_url, models_dir, fill(clean_redis, 2 * FILTER_PAGE + 700))


@pytest.mark.parametrize("n", [0, 1])
def test_a_read_of_an_empty_or_tiny_stream(
    models_dir: Path, redis_url: str, clean_redis: redis.Redis, n: int
) -> None:
    added = fill(clean_redis, n)
    assert read(redis_url, models_dir, None, "busy", 10) == [i for i, s in added if s == "busy"]


def test_filtered_reads_on_a_redis_cluster(models_dir: Path, redis_cluster_url: str) -> None:
    store = redis.RedisCluster.from_url(redis_cluster_url)
    try:
        store.delete(EVENTS_KEY)
        added = fill(store, 2 * FILTER_PAGE + 700)
        check_reads(redis_cluster_url, models_dir, added, redis_cluster=True)
    finally:
        store.delete(EVENTS_KEY)
        store.close()
