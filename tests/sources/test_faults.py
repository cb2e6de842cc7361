"""Faults of the source path, on the backfilled SMD Prometheus with a shifted clock (10 rows a second):

- Prometheus stopped for 20 s and restarted: the poller counts the failed polls, /readyz says so, and when
  Prometheus is back the missed range is read: every point scored, equal to the backtest;
- the replica holding the polling lease killed (SIGKILL): another takes over within the lease, and the streams
  have no missing point.

Slow (about a minute each): ``-m slow``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from models.source import parse_time
from tests.service.live import LiveServer
from tests.sources.conftest import STEP_S, PrometheusProcess, SMDBundles, SMDFleet, serve_tsdb
from tests.sources.live import compare_scores, source_env, source_status, stop_replica, wait_for_cursor
from training.backtest import Backtest, backtest_bundle

SPEED = 600.0  # clock seconds per second: 10 one-minute rows a second
OUTAGE_S = 20.0
LEASE_S = 3.0

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def backtest(
    smd_fleet: SMDFleet,
    smd_prometheus: PrometheusProcess,
    smd_bundles: SMDBundles,
    tmp_path_factory: pytest.TempPathFactory,
) -> Backtest:
    out = tmp_path_factory.mktemp("backtest")
    return backtest_bundle(
        smd_bundles.from_prometheus,
        smd_prometheus.url,
        smd_fleet.test_start,
        smd_fleet.test_end,
        out,
        1,
        report=False,
    )


def cursor_of(server: LiveServer) -> float | None:
    cursor = source_status(server)["cursor"]
    return parse_time(cursor) if cursor else None


def test_a_prometheus_outage_leaves_no_missing_point_within_the_catch_up_limit(
    smd_fleet: SMDFleet,
    smd_bundles: SMDBundles,
    backtest: Backtest,
    redis_url: str,
    clean_redis: redis.Redis,
    tmp_path: Path,
    figures: Callable[..., None],
) -> None:
    prometheus = serve_tsdb(smd_fleet, tmp_path / "prometheus")
    at = time.time()
    env = source_env(prometheus.url, smd_fleet, speed=SPEED, at=at, VIGIL_SOURCES__BACKOFF_MAX_S="2")
    server = LiveServer(smd_bundles.models_dir, redis_url, tmp_path / "serve.log", **env).start(90)
    try:
        wait_for_cursor(server, smd_fleet.test_start + 60 * STEP_S)
        prometheus.stop()
        stopped = time.monotonic()
        cursor_at_stop = cursor_of(server)
        time.sleep(OUTAGE_S)
        during = source_status(server)
        assert during["state"] == "failing" and during["consecutive_failures"] >= 2, during
        assert "did not answer" in during["error"]
        lag_during = during["lag_s"]
        prometheus.start()
        back = time.monotonic()
        behind = cursor_of(server)
        assert behind == cursor_at_stop  # nothing was fed, nothing skipped: the cursor waited
        clock_now = smd_fleet.test_start + (time.time() - at) * SPEED
        wait_for_cursor(server, min(clock_now, smd_fleet.test_end))
        caught_up_s = time.monotonic() - back
        wait_for_cursor(server, smd_fleet.test_end)
        after = source_status(server)
        assert after["state"] == "ok" and after["consecutive_failures"] == 0
        parity = compare_scores(server, backtest)
        assert parity["points"] == 800  # every row of both machines, the outage's included
        figures(
            outage_s=round(back - stopped, 1),
            rows_missed_during_outage=round((time.monotonic() - stopped) * SPEED / STEP_S),
            lag_s_during_outage=lag_during,
            caught_up_s_after_restart=round(caught_up_s, 2),
            points=parity["points"],
            missing_points=0,
            max_abs_score_diff=parity["max_abs_diff"],
        )
    finally:
        try:
            stop_replica(server)
        finally:
            prometheus.stop()


def test_another_replica_takes_over_polling_within_the_lease_when_the_holder_dies(
    smd_fleet: SMDFleet,
    smd_prometheus: PrometheusProcess,
    smd_bundles: SMDBundles,
    backtest: Backtest,
    redis_url: str,
    clean_redis: redis.Redis,
    tmp_path: Path,
    figures: Callable[..., None],
) -> None:
    env = source_env(
        smd_prometheus.url,
        smd_fleet,
        speed=SPEED,
        at=time.time() + 20,  # both replicas up before the clock starts
        VIGIL_SOURCES__LEASE_S=str(LEASE_S),
        VIGIL_SCORING_CLAIM_S="2",  # windows a killed replica was scoring go to the next request sooner
    )
    replicas = [
        LiveServer(smd_bundles.models_dir, redis_url, tmp_path / f"serve-{i}.log", **env).start(90)
        for i in range(2)
    ]
    try:
        wait_for_cursor(replicas[0], smd_fleet.test_start + 100 * STEP_S, timeout_s=120)
        polling = [r for r in replicas if source_status(r)["polling"]]
        assert len(polling) == 1, [source_status(r) for r in replicas]
        holder = polling[0]
        other = replicas[1 - replicas.index(holder)]
        cursor_at_kill = cursor_of(holder)
        holder.kill()
        killed = time.monotonic()
        while not source_status(other)["polling"]:
            assert time.monotonic() - killed < LEASE_S + 5, source_status(other)
            time.sleep(0.05)
        takeover_s = time.monotonic() - killed
        wait_for_cursor(other, smd_fleet.test_end, timeout_s=120)
        parity = compare_scores(other, backtest)
        assert parity["points"] == 800
        figures(
            lease_s=LEASE_S,
            takeover_s=round(takeover_s, 2),
            cursor_at_kill=cursor_at_kill,
            points=parity["points"],
            missing_points=0,
            max_abs_score_diff=parity["max_abs_diff"],
        )
    finally:
        for replica in replicas:
            stop_replica(replica)
