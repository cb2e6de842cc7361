"""A poll that runs while another replica holds the source's lease (this one paused past it, or a poll longer
than the lease) stops before feeding a stream and never records its cursor; the same poll, holding the lease,
feeds every stream and records it. In-process, against the backfilled SMD Prometheus."""

from __future__ import annotations

import time

import pytest
import redis
from fastapi.testclient import TestClient

from models.prometheus import PrometheusClient
from service.app import create_app
from service.lease import Lease
from service.poller import LeaseLost, SourcePoller, SourceStatus, cursor_key, lease_key
from service.windows import window_key
from tests.service.conftest import auth
from tests.sources.conftest import PrometheusProcess, SMDBundles, SMDFleet
from tests.sources.live import inprocess_settings

MODEL = "smd"


def test_a_poll_stops_unrecorded_once_another_replica_holds_the_lease(
    smd_fleet: SMDFleet,
    smd_prometheus: PrometheusProcess,
    smd_bundles: SMDBundles,
    redis_url: str,
    clean_redis: redis.Redis,
) -> None:
    clean_redis.set(lease_key(MODEL), "another-replica", px=120_000)  # the app's own poller stands by
    clock = {"origin": smd_fleet.test_end, "at": time.time(), "speed": 1}
    settings = inprocess_settings(smd_bundles, redis_url, smd_prometheus.url, smd_fleet.test_start, clock)
    with TestClient(create_app(settings), headers=auth("all")) as app:
        poller: SourcePoller = app.app.state.sources  # type: ignore[attr-defined]
        portal = app.portal
        assert portal is not None

        async def poll(owner: str) -> None:
            lease = Lease(poller._redis, lease_key(MODEL), owner, 10)
            client = PrometheusClient(smd_prometheus.url, 10)
            try:
                manifest = poller._models.get(MODEL).manifest
                await poller._poll(MODEL, manifest, client, SourceStatus(smd_prometheus.url), lease)
            finally:
                client.close()

        with pytest.raises(LeaseLost):
            portal.call(poll, "paused-replica")
        assert clean_redis.get(cursor_key(MODEL)) is None
        assert not clean_redis.exists(window_key("machine-a"), window_key("machine-b"))

        clean_redis.set(lease_key(MODEL), "paused-replica", px=120_000)  # the lease is its own again
        portal.call(poll, "paused-replica")
        cursor = clean_redis.get(cursor_key(MODEL))
        assert cursor is not None and float(cursor) >= smd_fleet.test_end - 60
        assert clean_redis.exists(window_key("machine-a"), window_key("machine-b")) == 2
