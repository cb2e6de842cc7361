"""Overload, Redis killed and restarted, a failed batch, memory per stream."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from models.scoring import normalise
from service.app import create_app
from service.batcher import MicroBatcher
from service.engine import ONNXEngine
from service.errors import InferenceFailed
from service.registry import scoring_function
from service.settings import BatchingSettings
from service.windows import meta_key, window_key
from tests.conftest import start_redis_server
from tests.service.conftest import auth, make_settings, points_body, stream


def test_overload_is_answered_at_once_with_503_and_retry_after(
    models_dir: Path, redis_url: str, clean_redis: redis.Redis, test_series: np.ndarray
) -> None:
    settings = make_settings(
        models_dir, redis_url, batching=BatchingSettings(max_batch_size=1, max_wait_ms=0, queue_capacity=2)
    )
    window = {"window": test_series[:100].tolist()}
    with TestClient(create_app(settings), headers=auth("all")) as client:
        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(lambda _: client.post("/score", json=window), range(64)))
        codes = [r.status_code for r in responses]
        shed = [r for r in responses if r.status_code == 503]
        assert set(codes) <= {200, 503} and shed and codes.count(200) >= 2
        assert all(r.headers["retry-after"] == "1" and r.json()["code"] == "overloaded" for r in shed)
        text = client.get("/metrics").text
        counted = re.search(r'^vigil_rejections_total\{reason="overloaded"\} (\S+)$', text, re.M)
        assert counted is not None and float(counted.group(1)) == len(shed)
        assert client.get("/readyz").json()["models"]["tvnet"]["queue_depth"] == 0
        assert client.post("/score", json=window).status_code == 200  # recovers at once


def test_a_batch_whose_every_item_is_refused_is_a_503_with_retry_after(
    models_dir: Path, tmp_path: Path, test_series: np.ndarray
) -> None:
    """Redis down: every item fails with 503; the request as a whole says so, with Retry-After (a 200 of
    per-item 503s told a gateway nothing about when to come back). Items that fail for their own reasons
    beside them keep the per-item answer."""
    proc, port = start_redis_server(tmp_path / "redis")
    settings = make_settings(models_dir, f"redis://127.0.0.1:{port}/0", redis_timeout_s=0.5)
    items = [points_body(f"down-{i}", test_series[:5], 0) for i in range(3)]
    try:
        with TestClient(create_app(settings), headers=auth("all")) as client:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            response = client.post("/score/batch", json={"items": items})
            assert response.status_code == 503 and response.headers["retry-after"] == "1"
            body = response.json()
            assert body["code"] == "store_unavailable" and body["detail"].startswith("every item refused")
            bad = points_body("down-bad", test_series[:5], 0)
            bad["points"][0]["values"] = [1.0]
            mixed = client.post("/score/batch", json={"items": [*items, bad]})
            assert mixed.status_code == 200
            statuses = [item["error"]["status"] for item in mixed.json()["items"]]
            assert statuses == [503, 503, 503, 422]
    finally:
        proc.kill()
        proc.wait(10)


def test_readiness_stays_true_while_scoring_holds_every_pooled_connection(
    models_dir: Path, redis_url: str, clean_redis: redis.Redis, test_series: np.ndarray
) -> None:
    """A loaded replica is a ready one: /readyz pings on a pool of its own, so scoring's pool being exhausted
    (here its one connection held) does not turn it 503 and take the replica out of its load balancer. The
    alert feed's blocking read has a pool of its own too (on scoring's it held a connection all the time)."""
    settings = make_settings(models_dir, redis_url, redis_pool_size=1, redis_timeout_s=0.5)
    with TestClient(create_app(settings), headers=auth("all")) as client:
        pool = client.app.state.components.redis.connection_pool
        held = client.portal.call(pool.get_connection, "PING")
        try:
            ready = client.get("/readyz")
            assert ready.status_code == 200 and ready.json()["redis"] is True
            waiting = client.post("/score", json=points_body("pool", test_series[:5], 0))
            assert waiting.status_code == 503 and waiting.json()["code"] == "store_unavailable"
        finally:
            client.portal.call(pool.release, held)
        assert client.post("/score", json=points_body("pool", test_series[:5], 0)).status_code == 200


def test_idle_blocking_reads_are_not_redis_failures_with_a_short_redis_timeout(
    models_dir: Path, redis_url: str, clean_redis: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    """The alert feed blocks up to 1 s in XREAD (delivery likewise in XREADGROUP); with VIGIL_REDIS_TIMEOUT_S
    under that, every idle read was a socket timeout, logged as Redis being down (and delivery's re-sends
    stopped). Their clients wait the block on top of the timeout."""
    settings = make_settings(models_dir, redis_url, redis_timeout_s=0.3)
    with caplog.at_level(logging.WARNING), TestClient(create_app(settings), headers=auth("all")) as client:
        time.sleep(2.5)
        assert client.get("/readyz").status_code == 200
    assert not [r for r in caplog.records if "Redis unavailable" in r.getMessage()]


def test_redis_killed_and_restarted_mid_stream(
    models_dir: Path, tmp_path: Path, test_series: np.ndarray
) -> None:
    data = tmp_path / "redis"
    proc, port = start_redis_server(data, "--appendonly", "yes", "--appendfsync", "everysec")
    url = f"redis://127.0.0.1:{port}/0"
    settings = make_settings(models_dir, url, redis_timeout_s=0.5)
    try:
        with TestClient(create_app(settings), headers=auth("all")) as client:
            acknowledged = sum(b["accepted"] for b in stream(client, "outage", test_series[:250], 25))
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            during = client.post("/score", json=points_body("outage", test_series[250:260], 250))
            assert during.status_code == 503 and during.json()["code"] == "store_unavailable"
            assert during.headers["retry-after"] == "1"
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["redis"] is False
            proc, _ = start_redis_server(data, "--appendonly", "yes", port=port)
            info = client.get("/streams/outage").json()
            assert info["points_total"] == acknowledged == 250  # nothing acknowledged was lost
            after = client.post("/score", json=points_body("outage", test_series[250:260], 250))
            assert after.status_code == 200 and after.json()["accepted"] == 10  # recovered without a restart
            assert client.get("/readyz").status_code == 200
    finally:
        proc.kill()
        proc.wait(10)


def test_a_failed_batch_fails_every_request_in_it_and_the_worker_goes_on(bundle_dir: Path) -> None:
    engine = ONNXEngine.open(bundle_dir, "cpu", 1)
    batcher = MicroBatcher("t", scoring_function(engine), 64, max_wait_ms=200, queue_capacity=100)
    batcher.start()
    z = normalise(np.random.default_rng(0).normal(size=(1, 100, 38)), engine.manifest.normalisation)

    async def scenario() -> tuple[list[object], object]:
        bad = np.zeros((1, 100, 5), dtype=np.float32)  # a real ONNX Runtime shape error
        batch = await asyncio.gather(
            batcher.submit(z), batcher.submit(bad), batcher.submit(z), return_exceptions=True
        )
        return batch, await batcher.submit(z)

    try:
        results, after = asyncio.run(scenario())
    finally:
        batcher.stop()
    assert all(isinstance(r, InferenceFailed) for r in results)
    assert len({str(r) for r in results}) == 1  # the same error for each
    assert after.scores.shape == (1, 100)


def test_memory_per_stream_stays_within_1_3x_the_raw_window(
    client: TestClient, test_series: np.ndarray
) -> None:
    stream(client, "mem", test_series[:300], 100)
    r = redis.Redis.from_url(client.app.state.components.settings.redis_url)
    used = r.memory_usage(window_key("mem"), samples=0) + r.memory_usage(meta_key("mem"), samples=0)
    raw = 100 * 38 * 4
    assert used <= 1.3 * raw, f"{used} bytes for a {raw}-byte window"


@pytest.mark.parametrize("points", [10_001])
def test_too_many_points_is_a_413(client: TestClient, points: int) -> None:
    body = {"stream_id": "big", "points": [{"ts": float(i), "values": [0.0] * 38} for i in range(points)]}
    response = client.post("/score", json=body)
    assert response.status_code == 413 and response.json()["detail"].startswith("points")
    assert client.get("/streams/big").status_code == 404


def test_an_oversized_body_is_a_413_before_parsing(client: TestClient) -> None:
    response = client.post(
        "/score", content=b"[" + b"1," * 9_000_000 + b"1]", headers={"content-type": "application/json"}
    )
    assert response.status_code == 413 and response.json()["code"] == "payload_too_large"
