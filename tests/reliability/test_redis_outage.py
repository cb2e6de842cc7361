"""Redis SIGKILLed and restarted under continuous load from several streams through a real server process.

During each outage requests get 503 ``store_unavailable`` with Retry-After and ``/readyz`` is false; after the
restart the server recovers by itself; with AOF on, every point and every alert event acknowledged by a 200
response is in Redis afterwards: the points a stream holds equal the sum of ``accepted`` over its 200
responses (none lost, none doubled by the client's retries).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from models.lifecycle import LevelThresholds
from models.manifest import AlertPolicy
from service.alerts import EVENTS_KEY, AlertTracker, ScoredPoint, alert_key
from service.app import create_app
from service.settings import AlertSettings, Settings
from tests.reliability.conftest import RedisProcess
from tests.reliability.load import StreamLoad, StreamLog, cyclic_series
from tests.service.conftest import auth, make_settings, points_body
from tests.service.live import LiveServer


def events_in_redis(client: httpx.Client, stream_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    since: str | None = None
    while True:
        params: dict[str, Any] = {
            "stream_id": stream_id,
            "limit": 1000,
            **({"since": since} if since else {}),
        }
        page = client.get("/alerts", params=params).json()
        if not page["events"]:
            return events
        events.extend(page["events"])
        since = page["last_id"]


def expected_events(
    redis_url: str, logs: dict[str, StreamLog], warning: float, critical: float, policy: dict[str, Any]
) -> dict[str, list[Any]]:
    """The alert events an uninterrupted service would have raised from the scores it returned: the same
    tracker (the service's Lua state machine) replayed over every acknowledged score, in a scratch database."""
    from redis.asyncio import Redis

    async def replay() -> dict[str, list[Any]]:
        client = Redis.from_url(redis_url.rsplit("/", 1)[0] + "/15")
        await client.flushdb()
        defaults = Settings.model_fields
        tracker = AlertTracker(client, defaults["window_ttl_s"].default, AlertSettings().stream_maxlen)
        levels = LevelThresholds(warning, critical, AlertPolicy.model_validate(policy))
        out = {}
        for sid, log in logs.items():
            points = [
                ScoredPoint(s["ts"], s["score"], [c["sensor"] for c in s["contributions"]])
                for s in sorted(log.scores, key=lambda s: s["ts"])
            ]
            update = await tracker.observe(sid, "tvnet", levels, points)
            out[sid] = [strip_id(e) for e in update.events]
        await client.flushdb()
        await client.aclose()
        return out

    return asyncio.run(replay())


def expected_scored_ts(n_points: int, model: dict[str, Any]) -> set[float]:
    """The ts (= row index here) of every point a window has reached once ``n_points`` are held."""
    length, stride = model["window_length"], model["stride"]
    if n_points < length:
        return set()
    last_end = length - 1 + (n_points - length) // stride * stride
    return {float(t) for t in range(last_end + 1)}


def strip_id(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k != "id"}


def outage_scenario(
    live_server: Callable[..., LiveServer],
    redis_proc: RedisProcess,
    test_series: np.ndarray,
    n_streams: int,
    kills: int,
    outage_s: float,
    figures: Callable[..., None],
) -> None:
    server = live_server(redis_proc.url, VIGIL_REDIS_TIMEOUT_S="0.5")
    series = cyclic_series(test_series, 200_000)
    streams = [f"outage-{i}" for i in range(n_streams)]
    load = StreamLoad(server.url, auth("all"), series, streams).start()
    probe = httpx.Client(base_url=server.url, headers=auth("all"), timeout=10)
    recoveries: list[float] = []
    outage_probes: Counter[str] = Counter()
    acked_at_kills: list[int] = []
    try:
        load.wait_acked(150)
        for _ in range(kills):
            acked_at_kills.append(sum(load.acked().values()))
            redis_proc.kill()
            killed_at = time.monotonic()
            while time.monotonic() - killed_at < outage_s:
                ready = probe.get("/readyz")
                outage_probes[f"readyz {ready.status_code} redis={ready.json()['redis']}"] += 1
                for name, response in (
                    ("score", probe.post("/score", json=points_body("outage-probe", test_series[:5], 0))),
                    ("stream", probe.get(f"/streams/{streams[0]}")),
                    ("alerts", probe.get("/alerts")),
                ):
                    code = response.json().get("code") if response.status_code != 200 else "ok"
                    outage_probes[
                        f"{name} {response.status_code} {code} "
                        f"retry-after={response.headers.get('retry-after')}"
                    ] += 1
                time.sleep(0.1)
            redis_proc.restart()
            restarted_at = time.monotonic()
            before = load.acked()
            load.wait_acked(max(before.values()) + 50)  # every stream makes progress again
            first_ok = {
                sid: min(t for t, s, o in load.timeline if s == sid and o == "200" and t > restarted_at)
                for sid in streams
            }
            recoveries.append(max(first_ok.values()) - restarted_at)
            assert probe.get("/readyz").status_code == 200
        load.wait_acked(max(load.acked().values()) + 30)
    finally:
        logs = load.stop()
    outcomes: Counter[str] = Counter()
    lost_points = lost_events = late = missed = unscored = 0
    model = probe.get("/models/tvnet").json()
    acked_events = 0
    thresholds = model["thresholds"]
    expected = expected_events(
        redis_proc.url, logs, thresholds["warning"], thresholds["critical"], model["alert_policy"]
    )
    for sid, log in logs.items():
        outcomes.update(log.outcomes)
        info = probe.get(f"/streams/{sid}").json()
        assert info["points_total"] == log.acked_points + log.duplicates_on_retry == log.next_row, (
            sid,
            info,
            log,
        )
        lost_points += max(0, log.acked_points - info["points_total"])
        unscored += len(expected_scored_ts(log.next_row, model) - {s["ts"] for s in log.scores})
        stored = {e["id"]: e for e in events_in_redis(probe, sid)}
        # An event answered with id null had its append fail; it must be in the stream now, published late.
        stored_content = [strip_id(e) for e in stored.values()]
        late += sum(1 for e in log.events if e["id"] is None)
        lost_events += sum(1 for e in log.events if e["id"] is None and strip_id(e) not in stored_content)
        acked = [e for e in log.events if e["id"] is not None]
        acked_events += len(acked)
        lost_events += sum(1 for e in acked if stored.get(e["id"]) != e)
        wanted = Counter(json.dumps(e, sort_keys=True) for e in expected[sid])
        missed += sum(
            (wanted - Counter(json.dumps(strip_id(e), sort_keys=True) for e in stored.values())).values()
        )
    metrics = probe.get("/metrics").text
    probe.close()
    figures(
        streams=n_streams,
        kills=kills,
        outage_s=outage_s,
        points_acked=sum(log.acked_points for log in logs.values()),
        points_acked_before_last_kill=acked_at_kills[-1],
        points_lost=lost_points,
        points_written_though_answered_503=sum(log.duplicates_on_retry for log in logs.values()),
        points_held_but_never_scored=unscored,
        alert_events_acked=acked_events,
        alert_events_lost=lost_events,
        alert_events_published_late=late,
        alert_evaluations_failed=_metric(metrics, 'vigil_redis_errors_total{op="alerts"}'),
        alert_events_expected=sum(len(v) for v in expected.values()),
        alert_events_missed=missed,
        outcomes=dict(outcomes),
        outage_probes=dict(outage_probes),
        recovery_s=[round(r, 2) for r in recoveries],
    )
    assert set(outcomes) <= {"200", "503 store_unavailable"}, outcomes  # nothing else, no 5xx but the 503
    assert outcomes["503 store_unavailable"] > 0  # the load really ran into the outage
    assert all(log.retry_after_missing == 0 for log in logs.values())
    assert set(outage_probes) == {
        "readyz 503 redis=False",
        "score 503 store_unavailable retry-after=1",
        "stream 503 store_unavailable retry-after=1",
        "alerts 503 store_unavailable retry-after=1",
    }, outage_probes
    assert lost_points == 0 and lost_events == 0
    assert missed == 0  # every event the returned scores call for was raised, in order
    assert acked_events > 0  # alerts fired and resolved during the run
    assert max(recoveries) < 5.0


def _metric(text: str, series: str) -> float:
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return float("nan")


def test_redis_sigkill_under_load_loses_no_acknowledged_point_or_alert(
    live_server: Callable[..., LiveServer],
    aof_redis: RedisProcess,
    test_series: np.ndarray,
    figures: Callable[..., None],
) -> None:
    outage_scenario(live_server, aof_redis, test_series, n_streams=4, kills=1, outage_s=1.5, figures=figures)


@pytest.mark.slow
def test_redis_sigkilled_three_times_under_load_from_eight_streams(
    live_server: Callable[..., LiveServer],
    aof_redis: RedisProcess,
    test_series: np.ndarray,
    figures: Callable[..., None],
) -> None:
    outage_scenario(live_server, aof_redis, test_series, n_streams=8, kills=3, outage_s=3.0, figures=figures)


def test_an_alert_update_that_fails_after_the_append_is_applied_with_the_next_request(
    models_dir: Path, redis_url: str, clean_redis: redis.Redis, test_series: np.ndarray
) -> None:
    """Deterministic version of what the kills above hit by chance: the points are appended and scored, then
    the alert update fails (here: the stream's alert key holds the wrong type, so the real Lua call errors).
    The response is still a 200; the next request of the stream must apply the held points first, so the
    stream raises exactly the events of an identical stream that never failed."""
    series = cyclic_series(test_series, 600)
    with TestClient(create_app(make_settings(models_dir, redis_url)), headers=auth("all")) as client:
        events: dict[str, list[dict[str, Any]]] = {"steady": [], "flaky": []}
        for offset in range(0, 600, 20):
            for sid in events:
                if sid == "flaky" and offset in (200, 220):  # the anomaly starts at row 200
                    clean_redis.set(alert_key(sid), "not a hash")
                response = client.post("/score", json=points_body(sid, series[offset : offset + 20], offset))
                assert response.status_code == 200, response.text
                if sid == "flaky" and offset in (200, 220):
                    assert response.json()["scores"] and not response.json()["alerts"]
                    clean_redis.delete(alert_key(sid))
                events[sid].extend(response.json()["alerts"])
        failed = re.search(
            r'^vigil_redis_errors_total\{op="alerts"\} (\S+)$', client.get("/metrics").text, re.M
        )
    assert failed is not None and float(failed.group(1)) == 2.0
    assert events["steady"], "the injected anomaly must raise events"
    assert [strip_id(e) | {"stream_id": "steady"} for e in events["flaky"]] == [
        strip_id(e) for e in events["steady"]
    ]


def test_an_alert_event_whose_append_fails_is_published_before_the_next_one(
    models_dir: Path, redis_url: str, clean_redis: redis.Redis, test_series: np.ndarray
) -> None:
    """The transition is stored but appending its event fails (here: the event stream's key holds the wrong
    type, so the real XADD errors). The response carries the event with ``id: null``; the feed must still
    get it, in order, ahead of the next event."""
    series = cyclic_series(test_series, 600)
    answered: list[dict[str, Any]] = []
    with TestClient(create_app(make_settings(models_dir, redis_url)), headers=auth("all")) as client:
        for offset in range(0, 600, 20):
            broken = offset in (200, 220)  # the anomaly starts at row 200
            if broken:  # the stream's earlier events set aside (when there are any), a key of the wrong type
                moved = bool(clean_redis.exists(EVENTS_KEY))
                if moved:
                    clean_redis.rename(EVENTS_KEY, "aside")
                clean_redis.set(EVENTS_KEY, "not a stream")
            response = client.post("/score", json=points_body("late", series[offset : offset + 20], offset))
            assert response.status_code == 200, response.text
            if broken:
                clean_redis.delete(EVENTS_KEY)
                if moved:
                    clean_redis.rename("aside", EVENTS_KEY)
                held = [e for e in response.json()["alerts"] if e["id"] is None]
                answered.extend(held)
            answered.extend(e for e in response.json()["alerts"] if e["id"] is not None)
        stored = client.get("/alerts", params={"stream_id": "late", "limit": 1000}).json()["events"]
    assert any(e["id"] is None for e in answered), "the broken append must have held an event"
    assert [strip_id(e) for e in stored] == [strip_id(e) for e in answered]


@pytest.mark.parametrize("cluster", [False, True])
def test_event_ids_go_to_their_own_events_when_updates_of_a_stream_interleave(
    redis_url: str, clean_redis: redis.Redis, cluster: bool
) -> None:
    """Two updates of one stream (two replicas) both land before the first one's publish: the first publish
    sends the outbox's events of both, the second finds it empty. Each event keeps the id it was published
    under, or none (published by the other call), never another event's id (found by a review: ids were
    matched by position, so the first request's events took the second's ids). ``cluster``: the two-step
    publish of a Redis Cluster, against the same Redis."""
    from redis.asyncio import Redis

    from service.alerts import PointColumns
    from service.roundtrip import RoundTrip

    async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        client = Redis.from_url(redis_url)
        try:
            tracker = AlertTracker(client, 600, 1000, cluster=cluster)
            levels = LevelThresholds(1.0, 10.0, AlertPolicy(k=1, n=1, m=1))

            async def update(ts: float, score: float) -> Any:
                trip = RoundTrip(client)
                decode = tracker.queue_observe(trip, "mixed", "m", levels, PointColumns([ts], [score], ["a"]))
                return decode(await trip.execute())

            first = await update(1.0, 5.0)  # pending and firing
            second = await update(2.0, 0.0)  # resolved
            await tracker.publish([first])
            await tracker.publish([second])
            return first.update.events, second.update.events
        finally:
            await client.aclose()

    first, second = asyncio.run(scenario())
    stored = {
        entry_id.decode(): (fields[b"state"].decode(), fields[b"ts"].decode())
        for entry_id, fields in clean_redis.xrange(EVENTS_KEY)
    }
    assert sorted(stored.values()) == [("firing", "1.0"), ("pending", "1.0"), ("resolved", "2.0")]
    assert [(e["state"], stored[e["id"]]) for e in first] == [
        ("pending", ("pending", "1.0")),
        ("firing", ("firing", "1.0")),
    ]
    assert [(e["state"], e["id"]) for e in second] == [("resolved", None)]  # published by the first call


def listed_within(
    client: TestClient, stream_id: str, count: int, timeout_s: float = 20.0
) -> list[dict[str, Any]]:
    """The stream's events in ``vigil:alerts`` once ``count`` are there (or what is there at the deadline)."""
    deadline = time.monotonic() + timeout_s
    listed: list[dict[str, Any]] = []
    while time.monotonic() < deadline and len(listed) < count:
        time.sleep(0.2)
        listed = client.get("/alerts", params={"stream_id": stream_id}).json()["events"]
    return listed


def test_events_whose_publish_failed_go_out_without_another_request_of_their_stream(
    models_dir: Path, redis_url: str, clean_redis: redis.Redis, test_series: np.ndarray
) -> None:
    """The request that raised them could not append them to ``vigil:alerts`` (the key held the wrong type) and
    the stream then goes quiet (its machine died): the events waited in the outbox until the stream's next
    update, that is forever. The service retries them on its own, in order (found by a review)."""
    series = cyclic_series(test_series, 300)
    with TestClient(create_app(make_settings(models_dir, redis_url)), headers=auth("all")) as client:
        clean_redis.set(EVENTS_KEY, "not a stream")
        response = client.post("/score", json=points_body("quiet", series, 0))
        assert response.status_code == 200, response.text
        held = response.json()["alerts"]
        assert held and all(e["id"] is None for e in held)
        clean_redis.delete(EVENTS_KEY)  # Redis is sound again; no request for "quiet" follows
        listed = listed_within(client, "quiet", len(held))
    assert [strip_id(e) for e in listed] == [strip_id(e) for e in held]


def test_outboxes_a_dead_replica_left_are_published_when_a_replica_starts(
    models_dir: Path, redis_url: str, clean_redis: redis.Redis, test_series: np.ndarray
) -> None:
    """A replica died between a stream's update and its publish: the events sit in the outbox and the
    stream stays quiet. A replica that starts finds every non-empty outbox and publishes it."""
    series = cyclic_series(test_series, 300)
    with TestClient(create_app(make_settings(models_dir, redis_url)), headers=auth("all")) as client:
        clean_redis.set(EVENTS_KEY, "not a stream")
        held = client.post("/score", json=points_body("orphan", series, 0)).json()["alerts"]
        assert held
    # that process is gone (its retries with it); Redis is sound again
    clean_redis.delete(EVENTS_KEY)
    assert clean_redis.llen("vigil:{orphan}:o") == len(held)
    with TestClient(create_app(make_settings(models_dir, redis_url)), headers=auth("all")) as client:
        listed = listed_within(client, "orphan", len(held))
    assert [strip_id(e) for e in listed] == [strip_id(e) for e in held]
    assert not clean_redis.exists("vigil:{orphan}:o")
