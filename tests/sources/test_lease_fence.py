"""A poll that runs while another replica holds the source's lease (this one paused past it, or a poll longer
than the lease) stops before feeding a stream and never records its cursor; the same poll, holding the lease,
feeds every stream and records it. In-process, against the backfilled SMD Prometheus."""

from __future__ import annotations

import time

import pytest
import redis

from service.poller import LeaseLost, cursor_key, lease_key
from service.windows import window_key
from tests.sources.conftest import PrometheusProcess, SMDBundles, SMDFleet
from tests.sources.inprocess import MODEL, poller_steps


def test_a_poll_stops_unrecorded_once_another_replica_holds_the_lease(
    smd_fleet: SMDFleet,
    smd_prometheus: PrometheusProcess,
    smd_bundles: SMDBundles,
    redis_url: str,
    clean_redis: redis.Redis,
) -> None:
    clean_redis.set(lease_key(MODEL), "another-replica", px=120_000)
    clock = {"origin": smd_fleet.test_end, "at": time.time(), "speed": 1}
    with poller_steps(smd_bundles, redis_url, smd_prometheus.url, smd_fleet.test_start, clock) as steps:
        with pytest.raises(LeaseLost):
            steps.poll("paused-replica")
        assert clean_redis.get(cursor_key(MODEL)) is None
        assert not clean_redis.exists(window_key("machine-a"), window_key("machine-b"))

        clean_redis.set(lease_key(MODEL), "paused-replica", px=120_000)  # the lease is its own again
        steps.poll("paused-replica")
        cursor = clean_redis.get(cursor_key(MODEL))
        assert cursor is not None and float(cursor) >= smd_fleet.test_end - 60
        assert clean_redis.exists(window_key("machine-a"), window_key("machine-b")) == 2
