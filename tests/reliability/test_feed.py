"""The alert feed under a slow consumer, with nobody listening, and with a hostile resume id."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from service.alerts import EVENTS_KEY, AlertTracker
from service.app import create_app
from service.feed import FeedHub
from service.redis_clients import redis_client
from tests.conftest import start_redis_server
from tests.reliability.conftest import rss_mib
from tests.reliability.load import cyclic_series
from tests.service.conftest import KEYS, auth, make_settings, points_body
from tests.service.live import LiveServer

SENSORS = ",".join(f"sensor_{i}_" + "x" * 64 for i in range(38))  # ~2.8 KB per event on the wire


def produce(store: redis.Redis, n: int, stream_id: str, batch: int = 25, pause_s: float = 0.025) -> list[str]:
    """Events appended straight to the alert stream, as another replica would, at a pace a reading client
    keeps up with; returns their ids."""
    ids: list[str] = []
    for start in range(0, n, batch):
        pipe = store.pipeline(transaction=False)
        for i in range(start, min(start + batch, n)):
            fields = {
                "stream_id": stream_id,
                "model": "tvnet",
                "state": "firing",
                "severity": "warning",
                "ts": repr(float(i)),
                "started_ts": repr(float(i)),
                "peak_score": "1.0",
                "threshold": "0.5",
                "sensors": SENSORS,
                "escalated": "0",
            }
            pipe.xadd(EVENTS_KEY, fields)  # type: ignore[arg-type]
        ids.extend(entry.decode() for entry in pipe.execute())
        time.sleep(pause_s)
    return ids


def slow_socket(port: int) -> socket.socket:
    """A connected socket with a tiny receive buffer: a client that does not read stalls the server fast."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    return sock


def read_all(ws: ClientConnection, received: list[dict[str, Any]], timeout_s: float) -> int | None:
    """Read events until the server closes (returns its close code) or ``timeout_s`` passes quietly."""
    import json

    while True:
        try:
            received.append(json.loads(ws.recv(timeout=timeout_s)))
        except TimeoutError:
            return None
        except ConnectionClosed as closed:
            return closed.rcvd.code if closed.rcvd is not None else 1006


def test_a_slow_websocket_consumer_is_closed_1013_with_bounded_memory_and_resumes_losing_nothing(
    live_server: Callable[..., LiveServer],
    redis_url: str,
    clean_redis: redis.Redis,
    figures: Callable[..., None],
) -> None:
    server = live_server(redis_url, VIGIL_FEED__SEND_TIMEOUT_S="1", VIGIL_LOG_LEVEL="warning")
    assert server.proc is not None
    ws_url = server.url.replace("http://", "ws://") + f"/ws/alerts?stream_id=flood&token={KEYS['reader'][0]}"
    n_events = 3000
    fast_received: list[dict[str, Any]] = []
    fast_code: list[int | None] = []
    slow_received: list[dict[str, Any]] = []
    rss_before = rss_mib(server.proc.pid)
    rss_peak = rss_before
    with (
        connect(ws_url, open_timeout=10) as fast,
        connect(
            ws_url, sock=slow_socket(server.port), max_queue=2, compression=None, open_timeout=10
        ) as slow,
    ):
        reader = threading.Thread(target=lambda: fast_code.append(read_all(fast, fast_received, 3.0)))
        reader.start()
        slow_received.append(
            __import__("json").loads(slow.recv(timeout=10) if produce(clean_redis, 1, "flood") else "")
        )
        ids = [slow_received[0]["id"]]
        done = threading.Event()

        def sample() -> None:
            nonlocal rss_peak
            while not done.is_set():
                rss_peak = max(rss_peak, rss_mib(server.proc.pid))  # type: ignore[union-attr]
                time.sleep(0.05)

        sampler = threading.Thread(target=sample)
        sampler.start()
        ids += produce(clean_redis, n_events - 1, "flood")  # the slow client reads nothing meanwhile
        time.sleep(2.0)  # past the send timeout
        done.set()
        sampler.join()
        code = read_all(slow, slow_received, 5.0)  # now it drains what the kernel held, then the close
        reader.join(30)
    assert (
        fast_code == [None] and [e["id"] for e in fast_received] == ids
    )  # one that keeps up: all, stays open
    assert code == 1013, (code, len(slow_received))
    assert 0 < len(slow_received) < n_events  # it was cut off part-way
    assert [e["id"] for e in slow_received] == ids[: len(slow_received)]
    last = slow_received[-1]["id"]
    resumed: list[dict[str, Any]] = []
    with connect(ws_url + f"&since={last}", open_timeout=10) as again:
        read_all(again, resumed, 2.0)
    assert [e["id"] for e in slow_received + resumed] == ids  # nothing lost, nothing repeated
    figures(
        events=n_events,
        event_bytes=len(SENSORS) + 200,
        slow_client_got_before_close=len(slow_received),
        close_code=code,
        resumed=len(resumed),
        rss_before_mib=round(rss_before, 1),
        rss_peak_mib=round(rss_peak, 1),
    )
    assert rss_peak - rss_before < 25, (rss_before, rss_peak)  # 8 MB of events did not pile up


def test_alerts_raised_while_no_client_listens_are_all_delivered_later(
    models_dir: Path,
    redis_url: str,
    clean_redis: redis.Redis,
    test_series: np.ndarray,
    figures: Callable[..., None],
) -> None:
    """Events raised with no feed client connected, by a server that has since stopped, all reach a client of
    a new server that resumes from the start, once each and in order."""
    settings = make_settings(models_dir, redis_url)
    series = cyclic_series(test_series, 900)
    raised: list[dict[str, Any]] = []
    with TestClient(create_app(settings), headers=auth("all")) as first:
        for offset in range(0, 900, 50):
            response = first.post(
                "/score", json=points_body("unwatched", series[offset : offset + 50], offset)
            )
            assert response.status_code == 200
            raised.extend(response.json()["alerts"])
    assert raised and all(e["id"] for e in raised)
    with TestClient(create_app(settings), headers=auth("all")) as second:
        with second.websocket_connect("/ws/alerts?since=0-0&stream_id=unwatched") as ws:
            delivered = [ws.receive_json() for _ in raised]
        listed = second.get("/alerts", params={"stream_id": "unwatched", "limit": 1000}).json()["events"]
    assert delivered == raised and listed == raised
    figures(events_raised_unwatched=len(raised), delivered=len(delivered), lost=0)


@pytest.mark.parametrize("since", ["99999999999999999999999-0", "١٢-٣", "1-2\n", "0-0x"])
def test_websocket_refuses_a_resume_id_redis_cannot_read_with_an_invalid_request_close(
    models_dir: Path, redis_url: str, clean_redis: redis.Redis, since: str
) -> None:
    with TestClient(create_app(make_settings(models_dir, redis_url)), headers=auth("all")) as client:
        with (
            pytest.raises(WebSocketDisconnect) as closed,
            client.websocket_connect("/ws/alerts", params={"since": since}) as ws,
        ):  # type: ignore[call-arg]
            ws.receive_json()
        assert closed.value.code == 4422  # a bad parameter; 1008 is for a bad token
        assert closed.value.reason.startswith("invalid_request: query.since")


def test_an_entry_that_is_no_alert_event_is_skipped_and_the_feed_goes_on(
    live_server: Callable[..., LiveServer], redis_url: str, clean_redis: redis.Redis
) -> None:
    """An entry of ``vigil:alerts`` that is no alert event (written by hand, or by another tool) is logged and
    passed over by the live feed and by ``GET /alerts``. Before, it ended the feed's reader for good: every
    client stayed connected and got nothing more, and ``GET /alerts`` answered 500."""
    server = live_server(redis_url, VIGIL_LOG_LEVEL="warning")
    reader = KEYS["reader"][0]
    feed = server.url.replace("http://", "ws://") + f"/ws/alerts?token={reader}&stream_id=after-junk"
    with connect(feed, open_timeout=10) as ws:
        time.sleep(0.5)  # the feed's reader is past its start
        clean_redis.xadd(EVENTS_KEY, {"note": "not an alert event"})
        ids = produce(clean_redis, 3, "after-junk", pause_s=0)
        assert [json.loads(ws.recv(timeout=10))["id"] for _ in ids] == ids
    listed = httpx.get(
        f"{server.url}/alerts",
        params={"since": "0"},
        headers={"Authorization": f"Bearer {reader}"},
        timeout=10,
    )
    assert listed.status_code == 200 and [e["id"] for e in listed.json()["events"]] == ids


def test_a_feed_started_while_redis_is_down_sends_no_old_event_as_live(tmp_path: Path) -> None:
    """The feed's reader starts after the newest event held. Started while Redis cannot be asked, it used to
    start from the first event held, so every client connected for live events got the whole retained stream
    (and, with more than its buffer, a 1013 close). It now asks again once Redis answers."""
    proc, port = start_redis_server(tmp_path / "redis")
    store = redis.Redis(port=port)
    old = produce(store, 5, "old", pause_s=0)
    store.save()  # dump.rdb: the restarted server holds the same events
    proc.kill()
    proc.wait(10)

    async def run() -> list[str]:
        settings = make_settings(Path("unused"), f"redis://127.0.0.1:{port}/0", redis_timeout_s=0.5)
        client = redis_client(settings)
        hub = FeedHub(client, AlertTracker(client, 600, 1000), client_buffer=100, block_ms=100)
        await hub.start()  # Redis is down
        subscriber = hub.subscribe(None)
        nonlocal proc
        proc = await asyncio.to_thread(lambda: start_redis_server(tmp_path / "redis", port=port)[0])
        await asyncio.sleep(1.5)  # the reader asks where to start, then reads
        new = await asyncio.to_thread(produce, store, 1, "new", 25, 0)
        await asyncio.sleep(0.5)
        got = []
        while not subscriber.queue.empty():
            got.append(subscriber.queue.get_nowait()["id"])
        await hub.stop()
        await client.aclose()
        return got + ["new:" + new[0]]

    try:
        got = asyncio.run(run())
    finally:
        proc.kill()
        proc.wait(10)
    assert got[:-1] == [got[-1].removeprefix("new:")] and not set(got) & set(old)
