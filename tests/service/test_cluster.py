"""Parity, idempotency and one alert lifecycle on a three-node Redis Cluster (how users outgrow one Redis)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from redis.cluster import RedisCluster

from models.runtime import load_bundle
from service.alerts import EVENTS_KEY, AlertTracker, AlertUpdate, Observed, outbox_key
from service.app import create_app
from service.redis_clients import redis_client
from service.settings import Settings
from service.windows import window_key
from tests.conftest import start_cluster_node, start_redis_cluster, wait_cluster_ok
from tests.service.conftest import auth, make_settings, points_body, scores_by_ts, stream
from training.evaluate import score_test_series


@pytest.fixture
def cluster_settings(models_dir: Path, redis_cluster_url: str) -> Settings:
    return make_settings(models_dir, redis_cluster_url, redis_cluster=True)


@pytest.fixture
def cluster_client(cluster_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(cluster_settings), headers=auth("all")) as client:
        yield client


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def assert_scores_equal(got: dict[float, float], expected: dict[float, float]) -> None:
    """The same points scored as offline, with the same scores (to float32 rounding across the cluster path)."""
    assert sorted(got) == sorted(expected)
    np.testing.assert_allclose(
        [got[t] for t in sorted(expected)], [expected[t] for t in sorted(expected)], rtol=1e-5, atol=1e-7
    )


def nodes_holding(client: TestClient, stream_ids: list[str]) -> int:
    """How many cluster nodes hold these streams' windows."""
    cluster = RedisCluster.from_url(client.app.state.components.settings.redis_url)
    try:
        return len({cluster.get_node_from_key(window_key(i)).name for i in stream_ids})
    finally:
        cluster.close()


def test_cluster_parity_with_offline_scoring(
    cluster_client: TestClient, bundle_dir: Path, test_series: np.ndarray, tmp_path: Path
) -> None:
    np.save(tmp_path / "s.npy", test_series)
    offline = score_test_series(load_bundle(bundle_dir), tmp_path / "s.npy").scores
    expected = {float(i): float(s) for i, s in enumerate(offline) if np.isfinite(s)}
    ids = [unique("cl") for _ in range(6)]  # several streams land in different slots and nodes
    for stream_id in ids:
        streamed = scores_by_ts(
            stream(cluster_client, stream_id, test_series, 7 if stream_id == ids[0] else 61)
        )
        assert_scores_equal(streamed, expected)
    assert nodes_holding(cluster_client, ids) > 1  # the test really spread streams over nodes


def test_cluster_batch_requests_score_each_stream_as_offline(
    cluster_client: TestClient, bundle_dir: Path, test_series: np.ndarray, tmp_path: Path
) -> None:
    """On a cluster a batch round appends stream by stream (the streams live in different slots, so not in one
    script call as on one Redis); every stream still gets the offline scores, one item per stream a request."""
    np.save(tmp_path / "s.npy", test_series)
    offline = score_test_series(load_bundle(bundle_dir), tmp_path / "s.npy").scores
    expected = {float(i): float(s) for i, s in enumerate(offline) if np.isfinite(s)}
    ids = [unique("clb") for _ in range(5)]
    got: dict[str, dict[float, float]] = {i: {} for i in ids}
    for offset in range(0, len(test_series), 40):
        rows = test_series[offset : offset + 40]
        items = [points_body(i, rows, offset) for i in ids]
        response = cluster_client.post("/score/batch", json={"items": items})
        assert response.status_code == 200, response.text
        for stream_id, item in zip(ids, response.json()["items"], strict=True):
            assert item["stream_id"] == stream_id and "result" in item, item
            for point in item["result"]["scores"]:
                got[stream_id][point["ts"]] = point["score"]
    for stream_id in ids:
        assert_scores_equal(got[stream_id], expected)
    assert nodes_holding(cluster_client, ids) > 1


def test_cluster_retries_append_nothing_twice(cluster_client: TestClient, test_series: np.ndarray) -> None:
    stream_id = unique("retry")
    first = cluster_client.post("/score", json=points_body(stream_id, test_series[:120], 0)).json()
    again = cluster_client.post("/score", json=points_body(stream_id, test_series[:120], 0)).json()
    assert first["accepted"] == 120 and again["accepted"] == 0 and again["scores"] == []
    assert cluster_client.get(f"/streams/{stream_id}").json()["points_total"] == 120


def test_cluster_two_replicas_give_one_alert_lifecycle(
    cluster_settings: Settings, test_series: np.ndarray
) -> None:
    series = test_series.copy()
    series[420:440, [2, 9, 20]] += 1.5
    single_id, replicated_id = unique("single"), unique("replicated")
    with (
        TestClient(create_app(cluster_settings), headers=auth("all")) as one,
        TestClient(create_app(cluster_settings), headers=auth("all")) as two,
    ):
        for stream_id, replicas in ((single_id, [one]), (replicated_id, [one, two])):
            for i, offset in enumerate(range(0, len(series), 20)):
                body = points_body(stream_id, series[offset : offset + 20], offset)
                assert replicas[i % len(replicas)].post("/score", json=body).status_code == 200

        def lifecycle(stream_id: str) -> list[tuple]:
            events = one.get("/alerts", params={"stream_id": stream_id, "limit": 1000}).json()["events"]
            return [(e["state"], e["severity"], e["ts"], e["escalated"]) for e in events]

        assert lifecycle(replicated_id) == lifecycle(single_id)
        assert any(state == "firing" for state, *_ in lifecycle(replicated_id))


def test_cluster_concurrent_publishes_of_one_outbox_lose_no_event(cluster_settings: Settings) -> None:
    """On a cluster an outbox goes to ``vigil:alerts`` in two steps (different slots). Publishes of one stream
    run concurrently (a request's, and ``keep_publishing``'s retry of a stranded stream; or two replicas') while
    the stream's updates append to its outbox: every event reaches the stream, none is trimmed unpublished, and
    each publish keeps the outbox's order."""
    stream_id = unique("race")
    n_writers, n_events = 4, 40

    async def run() -> tuple[list[float], int]:
        redis = redis_client(cluster_settings)
        tracker = AlertTracker(redis, ttl_s=600, stream_maxlen=100_000, cluster=True)
        waiting = Observed(stream_id, "tvnet", AlertUpdate([], ""), 1, [])

        async def writer(w: int) -> None:
            for i in range(n_events):
                ts = float(w * 1000 + i)  # unique per event: its identity in the stream
                event = ["firing", "warning", ts, ts, 1.0, "", 0, 1.0]
                await redis.rpush(outbox_key(stream_id), json.dumps(event))
                await tracker.publish([waiting])

        try:
            await asyncio.gather(*(writer(w) for w in range(n_writers)))
            await tracker.publish([waiting])  # what a stranded retry would still send
            entries = await redis.xrange(EVENTS_KEY, "-", "+")
            published = [float(f[b"ts"]) for _, f in entries if f[b"stream_id"].decode() == stream_id]
            return published, await redis.llen(outbox_key(stream_id))
        finally:
            await redis.aclose()

    published, left = asyncio.run(run())
    assert left == 0
    assert sorted(set(published)) == sorted(
        float(w * 1000 + i) for w in range(n_writers) for i in range(n_events)
    )
    for w in range(n_writers):  # one writer's events in the order it appended them
        mine = [ts for ts in published if w * 1000 <= ts < (w + 1) * 1000]
        assert mine == sorted(mine)


def test_a_cluster_outage_answers_503_and_the_service_recovers_when_it_returns(
    models_dir: Path, test_series: np.ndarray, tmp_path: Path
) -> None:
    """Every node of the cluster killed: requests are answered 503 ``store_unavailable`` (never a 500), the
    service stays up, and it serves again once the nodes are back on their ports (nodes.conf keeps the slots)."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        ports = start_redis_cluster(tmp_path / "cluster", procs)
        settings = make_settings(
            models_dir, f"redis://127.0.0.1:{ports[0]}/0", redis_cluster=True, redis_timeout_s=1.0
        )
        with TestClient(create_app(settings), headers=auth("all")) as client:
            stream_id = unique("outage")
            assert client.post("/score", json=points_body(stream_id, test_series[:20], 0)).status_code == 200
            for proc in procs:
                proc.kill()
                proc.wait(10)
            procs.clear()
            for _ in range(3):  # the first failure and the ones after it (a topology refresh in between)
                down = client.post("/score", json=points_body(stream_id, test_series[20:40], 20))
                assert down.status_code == 503 and down.json()["code"] == "store_unavailable", down.text
            assert client.get("/alerts").status_code == 503
            assert client.get("/readyz").status_code == 503
            for i, port in enumerate(ports):
                procs.append(start_cluster_node(tmp_path / "cluster" / f"node{i}", port)[0])
            wait_cluster_ok(ports[0])
            deadline = time.monotonic() + 30
            while (
                back := client.post("/score", json=points_body(stream_id, test_series[:20], 0))
            ).status_code != 200:
                assert back.status_code == 503 and time.monotonic() < deadline, back.text
                time.sleep(0.5)
            assert client.get("/readyz").status_code == 200
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)
