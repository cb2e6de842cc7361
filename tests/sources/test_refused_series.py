"""A query that answers one host unusably (two series for one label value) leaves that host out of the read
and the others in: strictly (training, backtest) the read fails naming the query; leniently (the poller) the
host is named in ``SourceRows.refused`` and the source's status, the other hosts are fed, and the host's window restarts
when it is read again. Against the backfilled SMD Prometheus; the poller in-process, step by step."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from models.manifest import Manifest
from models.prometheus import PrometheusClient, QueryFailed, fetch_rows
from service.poller import SourceStatus, lease_key
from service.windows import meta_key, window_key
from tests.conftest import free_port
from tests.service.live_alertmanager import wait_until
from tests.sources.conftest import STEP_S, PrometheusProcess, SMDBundles, SMDFleet
from tests.sources.inprocess import MODEL, poller_steps

# Machine-b answers two series (sensors s01 and s02) for this query; machine-a one.
DOUBLED = 'smd_sensor{sensor="s01"} or smd_sensor{sensor="s02", instance="machine-b"}'


def with_first_query(manifest: Manifest, expr: str) -> Manifest:
    source = manifest.source
    assert source is not None
    first = source.queries[0].model_copy(update={"expr": expr})
    return manifest.model_copy(
        update={"source": source.model_copy(update={"queries": [first, *source.queries[1:]]})}
    )


def test_a_read_leaves_out_only_the_host_a_query_answers_twice(
    smd_fleet: SMDFleet, smd_prometheus: PrometheusProcess, smd_bundles: SMDBundles
) -> None:
    manifest = with_first_query(Manifest.load(smd_bundles.from_prometheus), DOUBLED)
    assert manifest.source is not None
    start, end = smd_fleet.test_start, smd_fleet.test_start + 50 * STEP_S
    client = PrometheusClient(smd_prometheus.url, 10)
    try:
        with pytest.raises(QueryFailed, match="several series for instance='machine-b'"):
            fetch_rows(client, manifest.source, start, end)
        rows = fetch_rows(client, manifest.source, start, end, lenient=True)
    finally:
        client.close()
    assert list(rows.segments) == ["machine-a"] and rows.n_rows() == 51
    assert list(rows.refused) == ["machine-b"] and "several series" in rows.refused["machine-b"]


def test_the_poller_feeds_the_other_hosts_names_the_left_out_one_and_restarts_its_window(
    smd_fleet: SMDFleet,
    smd_prometheus: PrometheusProcess,
    smd_bundles: SMDBundles,
    redis_url: str,
    clean_redis: redis.Redis,
) -> None:
    clean_redis.set(lease_key(MODEL), "this-test", px=120_000)  # the app's own poller stands by
    origin = smd_fleet.test_start + 100 * STEP_S
    clock = {"origin": origin, "at": time.time(), "speed": 600}  # ten rows a second
    with poller_steps(smd_bundles, redis_url, smd_prometheus.url, smd_fleet.test_start, clock) as steps:
        good = steps.poller._models.get(MODEL).manifest
        doubled = with_first_query(good, DOUBLED)
        status = SourceStatus(smd_prometheus.url)

        def gaps() -> float:
            return steps.metric("vigil_source_gaps_total", model=MODEL)

        def scored(stream: str) -> list[Any]:
            response = steps.app.get(f"/streams/{stream}/scores", params={"limit": 10_000})
            assert response.status_code == 200, response.text
            return [p["ts"] for p in response.json()["scores"]]

        steps.poll("this-test", good, status)  # both hosts fed
        assert clean_redis.exists(window_key("machine-a"), window_key("machine-b")) == 2
        before = gaps()
        time.sleep(2.0)
        steps.poll("this-test", doubled, status)  # machine-b left out, machine-a fed
        assert list(status.refused) == ["machine-b"]
        shown = status.as_dict()  # what /readyz shows of a polling replica (this app's own poller stands by)
        assert shown["refused_count"] == 1 and shown["refused"]["machine-b"].startswith("s01: ")
        a_until, b_until = max(scored("machine-a")), max(scored("machine-b"))
        assert a_until > b_until
        time.sleep(2.0)
        steps.poll("this-test", good, status)  # read again: its window restarts, the rows it missed are a gap
        assert status.refused == {}
        assert gaps() == before + 1
        # About 20 rows since the restart, under a window (40): no score of machine-b spans the rows it missed.
        assert max(scored("machine-b")) == b_until and max(scored("machine-a")) > a_until


def test_a_stream_of_another_model_is_refused_never_restarted(
    smd_fleet: SMDFleet,
    smd_prometheus: PrometheusProcess,
    smd_bundles: SMDBundles,
    redis_url: str,
    clean_redis: redis.Redis,
) -> None:
    """A label value that names a stream another model owns (pushed points, or another source): its points are
    refused and its window kept; before, the poller's first-poll restart deleted it and took the stream over."""
    clean_redis.set(lease_key(MODEL), "this-test", px=120_000)
    clean_redis.hset(meta_key("machine-a"), mapping={"model": "pumps", "count": "7"})
    clean_redis.rpush(window_key("machine-a"), b"kept")
    clock = {"origin": smd_fleet.test_start + 60 * STEP_S, "at": time.time(), "speed": 1}
    with poller_steps(smd_bundles, redis_url, smd_prometheus.url, smd_fleet.test_start, clock) as steps:
        steps.poll("this-test")
        assert clean_redis.hget(meta_key("machine-a"), "model") == b"pumps"
        assert clean_redis.lrange(window_key("machine-a"), 0, -1) == [b"kept"]
        assert clean_redis.hget(meta_key("machine-b"), "model") == MODEL.encode()
        assert steps.metric("vigil_source_points_total", model=MODEL, outcome="refused") == 61


def test_an_answer_the_parser_did_not_foresee_fails_the_poll_not_the_poller(
    smd_bundles: SMDBundles, redis_url: str, clean_redis: redis.Redis, tmp_path: Path
) -> None:
    """A peer on the Prometheus URL that answers a value entry that is not a (time, value) pair (a proxy, another
    service): the poll fails with backoff and is counted, and the poller goes on."""
    api = tmp_path / "peer" / "api" / "v1"
    api.mkdir(parents=True)
    body = {
        "status": "success",
        "data": {"resultType": "matrix", "result": [{"metric": {"instance": "x"}, "values": [[1]]}]},
    }
    (api / "query_range").write_text(json.dumps(body))
    port = free_port()
    peer = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "http.server",
            str(port),
            "--bind",
            "127.0.0.1",
            "--directory",
            str(tmp_path / "peer"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until("the peer", lambda: _answers(url), 10)
        clean_redis.set(lease_key(MODEL), "this-test", px=120_000)
        clock = {"origin": 1_767_300_000.0, "at": time.time(), "speed": 1}
        with poller_steps(smd_bundles, redis_url, url, 1_767_290_000.0, clock) as steps:
            status = SourceStatus(url)
            backoff = steps.attempt("this-test", status)
            assert backoff > 0 and status.state == "failing" and status.failures == 1
            assert status.error == "ValueError"
    finally:
        peer.terminate()
        peer.wait(10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/api/v1/query_range", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def test_rows_the_stream_path_refuses_restart_the_window_at_the_next_rows(
    smd_fleet: SMDFleet,
    smd_prometheus: PrometheusProcess,
    smd_bundles: SMDBundles,
    redis_url: str,
    clean_redis: redis.Redis,
) -> None:
    """Rows refused by the stream path (a value 1e30 times its sensor: out of any range the model can score)
    are missing from the window, so the stream's next rows start a new one instead of continuing over them."""
    clean_redis.set(lease_key(MODEL), "this-test", px=120_000)
    clock = {"origin": smd_fleet.test_start + 100 * STEP_S, "at": time.time(), "speed": 600}
    with poller_steps(smd_bundles, redis_url, smd_prometheus.url, smd_fleet.test_start, clock) as steps:
        good = steps.poller._models.get(MODEL).manifest
        source = good.source
        assert source is not None
        wild = with_first_query(good, f"({source.queries[0].expr}) * 1e30")
        steps.poll("this-test", good)
        before = steps.metric("vigil_source_gaps_total", model=MODEL)
        refused_before = steps.metric("vigil_source_points_total", model=MODEL, outcome="refused")
        time.sleep(2.0)
        steps.poll("this-test", wild)
        assert steps.metric("vigil_source_points_total", model=MODEL, outcome="refused") > refused_before
        time.sleep(2.0)
        steps.poll("this-test", good)
        assert steps.metric("vigil_source_gaps_total", model=MODEL) == before + 2  # both hosts restarted
