"""DELETE /streams/{id}: every key of the stream goes at once, a retry clears what is left, and a request that
scored the stream before the delete cannot bring its alert state or history back (found by a review: a stale
alert state made a restarted stream skip every point, so it never alerted)."""

from __future__ import annotations

import asyncio

import numpy as np
import redis
from fastapi.testclient import TestClient
from redis.asyncio import Redis

from models.lifecycle import LevelThresholds
from models.manifest import AlertPolicy
from service.alerts import AlertTracker, PointColumns, alert_key, outbox_key
from service.history import ScoreHistory, history_key
from service.roundtrip import RoundTrip
from service.windows import meta_key, window_key
from tests.service.conftest import points_body


def keys_of(stream_id: str) -> list[str]:
    return [window_key(stream_id), meta_key(stream_id), alert_key(stream_id), history_key(stream_id)]


def anomalous(series: np.ndarray) -> np.ndarray:
    rows = series[:300].copy()
    rows[200:, [2, 9, 20]] += 3.0  # fires well within the 100 points after it starts
    return rows


def test_a_deleted_stream_leaves_no_key_and_alerts_again_when_it_restarts(
    client: TestClient, clean_redis: redis.Redis, test_series: np.ndarray
) -> None:
    rows = anomalous(test_series)
    first = client.post("/score", json=points_body("again", rows, 0)).json()
    assert any(e["state"] == "firing" for e in first["alerts"])
    clean_redis.rpush(outbox_key("again"), "an event a failed publish left")
    assert client.delete("/streams/again").status_code == 200
    assert not clean_redis.exists(*keys_of("again"), outbox_key("again"))
    second = client.post("/score", json=points_body("again", rows, 0)).json()  # ts from 0 again
    assert [e["state"] for e in second["alerts"]] == [e["state"] for e in first["alerts"]]


def test_a_retried_delete_clears_what_a_failed_one_left(
    client: TestClient, clean_redis: redis.Redis, test_series: np.ndarray
) -> None:
    client.post("/score", json=points_body("half", anomalous(test_series), 0))
    clean_redis.delete(window_key("half"), meta_key("half"))  # as a delete that failed after its first step
    assert clean_redis.exists(alert_key("half"))
    assert client.delete("/streams/half").status_code == 200  # not 404: the alert state was still there
    assert not clean_redis.exists(*keys_of("half"))
    assert client.delete("/streams/half").status_code == 404  # now nothing is left


def test_a_late_update_of_a_deleted_stream_writes_nothing(redis_url: str, clean_redis: redis.Redis) -> None:
    """The alert update and history record of a request that scored the stream before its delete land after
    it: fenced by the stream's meta hash, they write nothing; without the fence (no meta given) they do."""

    async def late(fence: str | None, stream_id: str) -> str:
        client = Redis.from_url(redis_url)
        try:
            tracker, history = AlertTracker(client, 600, 1000), ScoreHistory(client, 32, 600)
            levels = LevelThresholds(1.0, 10.0, AlertPolicy(k=1, n=1, m=1))
            trip = RoundTrip(client)
            points = PointColumns([5.0], [50.0], ["a"])
            decode = tracker.queue_observe(trip, stream_id, "m", levels, points, fence=fence)
            history.queue_record(trip, stream_id, [np.float64(5.0).tobytes() + bytes(7)], fence=fence)
            return decode(await trip.execute()).update.levels
        finally:
            await client.aclose()

    assert asyncio.run(late(meta_key("gone"), "gone")) == "-"  # skipped
    assert not clean_redis.exists(alert_key("gone"), outbox_key("gone"), history_key("gone"))
    clean_redis.hset(meta_key("here"), "model", "m")
    assert asyncio.run(late(meta_key("here"), "here")) == "2"
    assert clean_redis.exists(alert_key("here"), outbox_key("here"), history_key("here")) == 3
