"""The service polling the backfilled SMD Prometheus on a shifted clock: every stream gets the backtest's scores
and alerts (through the same stream path as POST /score), the scores go back to Prometheus as gauges, and the
dashboard's source row shows them."""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.deploy.conftest import SOURCE_ROW, row_queries
from tests.service.conftest import KEYS, auth
from tests.service.live import LiveServer
from tests.sources.conftest import MODEL_ARGS, STEP_S, PrometheusProcess, SMDBundles, SMDFleet, query_args
from tests.sources.live import (
    backtest_events,
    compare_scores,
    exported,
    live_events,
    live_scores,
    source_env,
    source_status,
    stop_replica,
    wait_for_cursor,
)
from training.backtest import Backtest, backtest_bundle
from training.cli import main


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


@pytest.fixture
def replica(
    smd_fleet: SMDFleet,
    smd_prometheus: PrometheusProcess,
    smd_bundles: SMDBundles,
    redis_url: str,
    clean_redis: redis.Redis,
    tmp_path: Path,
) -> Iterator[LiveServer]:
    # 1,200x: a row every 0.05 s; the replica starts ~10 s in (a catch-up of ~200 rows), then polls every 10 rows.
    env = source_env(smd_prometheus.url, smd_fleet, speed=1200, at=time.time())
    server = LiveServer(smd_bundles.models_dir, redis_url, tmp_path / "serve.log", **env).start(90)
    yield server
    stop_replica(server)


def test_polled_streams_score_and_alert_as_the_backtest(
    replica: LiveServer, smd_fleet: SMDFleet, backtest: Backtest, tmp_path: Path, figures: Callable[..., None]
) -> None:
    wait_for_cursor(replica, smd_fleet.test_end)
    status = source_status(replica)
    assert status["state"] == "ok" and status["polling"] is True and status["consecutive_failures"] == 0
    parity = compare_scores(replica, backtest)
    assert parity["points"] == 800
    expected = backtest_events(backtest)
    assert any(event[1] == "firing" for event in expected)  # the anomalies of both slices raise alerts
    assert live_events(replica, smd_fleet.test_end) == expected
    firing = sum(1 for event in expected if event[1] == "firing" and not event[3])
    figures(
        points=parity["points"],
        max_abs_score_diff=parity["max_abs_diff"],
        events=len(expected),
        alerts=firing,
    )
    score, level = exported(replica, "smd", "machine-a")
    assert score > 0 and level in (0, 1, 2)

    # The dashboard's source row, against a Prometheus scraping this replica every second.
    config = {
        "job_name": "vigil",
        "scrape_interval": "1s",
        "static_configs": [{"targets": [f"127.0.0.1:{replica.port}"]}],
    }
    scraper = PrometheusProcess(tmp_path / "scraper", {"scrape_configs": [config]}, tmp_path / "scraper.log")
    scraper.start()
    try:
        queries = [(name, expr.replace("$stream", "machine-a")) for name, expr in row_queries(SOURCE_ROW)]
        assert len(queries) >= 5
        deadline = time.monotonic() + 30
        empty = queries
        while empty and time.monotonic() < deadline:
            time.sleep(1)
            empty = [(n, e) for n, e in empty if not scraper.query(e)]
        assert not empty, f"source panels without data: {empty}"
    finally:
        scraper.stop()


def test_readyz_reports_each_source(replica: LiveServer) -> None:
    body = httpx.get(f"{replica.url}/readyz", timeout=5).json()
    assert body["ready"] is True
    assert set(body["sources"]) == {"smd"}
    assert body["sources"]["smd"]["prometheus"].startswith("http://127.0.0.1:")


def test_a_retrained_version_is_hot_reloaded_and_one_with_other_sensors_refused(
    smd_fleet: SMDFleet,
    smd_prometheus: PrometheusProcess,
    smd_bundles: SMDBundles,
    redis_url: str,
    clean_redis: redis.Redis,
    tmp_path: Path,
) -> None:
    """The retraining job: `vigil train --prometheus … --out MODELS --reload-url` on a recent range."""
    models = tmp_path / "models"
    shutil.copytree(smd_bundles.models_dir, models)
    env = source_env(smd_prometheus.url, smd_fleet, speed=60, at=time.time())
    server = LiveServer(models, redis_url, tmp_path / "serve.log", **env).start(90)
    try:
        reload = ["--out", str(models), "--reload-url", server.url, "--api-key", KEYS["admin"][0]]
        recent = ["--start", str(smd_fleet.train_start + 200 * STEP_S), "--end", str(smd_fleet.test_start)]
        common = ["train", "--prometheus", smd_prometheus.url, "--by", "instance", "--step", "60s", "--quiet"]
        common += ["--no-report", "--name", "smd", *[a for k, v in MODEL_ARGS.items() for a in (f"--{k}", v)]]
        assert main([*common, *query_args(), *recent, *reload, "--version", "prom2"]) == 0
        models_now = httpx.get(f"{server.url}/models", headers=auth("reader"), timeout=10).json()
        assert [(m["name"], m["version"]) for m in models_now] == [("smd", "prom2")]

        renamed = [*query_args()[:-2], "--query", 'other=smd_sensor{sensor="s38"}']
        with pytest.raises(SystemExit, match="changes its sensors"):
            main([*common, *renamed, *recent, *reload, "--version", "prom3"])
        models_now = httpx.get(f"{server.url}/models", headers=auth("reader"), timeout=10).json()
        assert [(m["name"], m["version"]) for m in models_now] == [("smd", "prom2")]
        assert source_status(server)["prometheus"].startswith("http://127.0.0.1:")
    finally:
        stop_replica(server)


def test_a_first_start_reads_a_whole_window_even_past_the_catch_up_limit(
    smd_fleet: SMDFleet,
    smd_prometheus: PrometheusProcess,
    smd_bundles: SMDBundles,
    redis_url: str,
    clean_redis: redis.Redis,
    tmp_path: Path,
) -> None:
    """No progress in Redis and no ``START_AT``: a replica starts one window before now and reads that window
    whole even when the catch-up limit is shorter (here 10 rows; with the README's 60 s step a 100-point window
    reaches 99 minutes back, past the default hour), so its streams score at the first poll."""
    origin = smd_fleet.test_start + 100 * STEP_S
    at = time.time()
    env = source_env(
        smd_prometheus.url, smd_fleet, speed=60, at=at, VIGIL_SOURCES__CATCH_UP_S=repr(10 * STEP_S)
    )
    del env["VIGIL_SOURCES__START_AT"]
    env["VIGIL_SOURCES__CLOCK"] = json.dumps({"origin": origin, "at": at, "speed": 60})
    log_path = tmp_path / "serve.log"
    server = LiveServer(smd_bundles.models_dir, redis_url, log_path, **env).start(90)
    try:
        wait_for_cursor(server, origin)
        window = int(MODEL_ARGS["window"])
        scored = list(live_scores(server, "machine-a", math.inf))
        assert scored and min(scored) >= origin - (window - 1) * STEP_S and max(scored) >= origin - STEP_S
        assert "skipped" not in log_path.read_text()
    finally:
        stop_replica(server)


def test_a_catch_up_in_pieces_scores_and_alerts_as_the_backtest(
    smd_fleet: SMDFleet,
    smd_prometheus: PrometheusProcess,
    smd_bundles: SMDBundles,
    backtest: Backtest,
    redis_url: str,
    clean_redis: redis.Redis,
    tmp_path: Path,
) -> None:
    """The whole test range (400 rows a host) behind the clock at start, read 25 rows a poll: every piece is
    fed and recorded before the next, and the streams get the backtest's scores and alerts, as in one read."""
    env = source_env(
        smd_prometheus.url,
        smd_fleet,
        speed=1,
        at=time.time() - (smd_fleet.test_end - smd_fleet.test_start),  # the clock at the range's end
        VIGIL_SOURCES__MAX_ROWS_PER_POLL="25",
    )
    server = LiveServer(smd_bundles.models_dir, redis_url, tmp_path / "serve.log", **env).start(90)
    try:
        wait_for_cursor(server, smd_fleet.test_end)
        assert compare_scores(server, backtest)["points"] == 800
        assert live_events(server, smd_fleet.test_end) == backtest_events(backtest)
        polls = [
            line
            for line in httpx.get(f"{server.url}/metrics", timeout=10).text.splitlines()
            if line.startswith("vigil_source_polls_total{") and 'outcome="ok"' in line
        ]
        assert float(polls[0].rsplit(" ", 1)[1]) >= 400 / 25
    finally:
        stop_replica(server)
