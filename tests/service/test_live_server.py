"""A real server process: SIGTERM drains in-flight work; several workers share their metrics."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import redis

from service.windows import window_key
from tests.service.conftest import auth, points_body
from tests.service.live import LiveServer


def test_sigterm_under_load_answers_every_accepted_request(
    models_dir: Path, redis_url: str, clean_redis: redis.Redis, tmp_path: Path, test_series: np.ndarray
) -> None:
    """Every request the server took in gets its response; one it never read (a keep-alive connection closed
    at shutdown, a refused connect) left no trace, so the client can safely retry it."""
    server = LiveServer(models_dir, redis_url, tmp_path / "serve.log").start()
    outcomes: list[tuple[str, str]] = []  # (stream id, status code or transport error)
    stop = threading.Event()

    def load(worker: int) -> None:
        with httpx.Client(base_url=server.url, headers=auth("all"), timeout=30) as client:
            n = 0
            while not stop.is_set():
                stream_id = f"sig-{worker}-{n}"
                n += 1
                try:
                    response = client.post("/score", json=points_body(stream_id, test_series[:100], 0))
                except httpx.TransportError as exc:
                    outcomes.append((stream_id, type(exc).__name__))
                    return
                outcomes.append((stream_id, str(response.status_code)))

    threads = [threading.Thread(target=load, args=(i,)) for i in range(8)]
    try:
        for thread in threads:
            thread.start()
        while sum(o == "200" for _, o in outcomes) < 40:
            time.sleep(0.01)
        code = server.terminate()
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        server.kill()
    assert code in (0, -15)  # uvicorn re-raises the signal it handled, after the graceful shutdown
    answered = [sid for sid, o in outcomes if o.isdigit()]
    unanswered = [sid for sid, o in outcomes if not o.isdigit()]
    assert {o for _, o in outcomes if o.isdigit()} == {"200"}  # no error while draining
    assert all(clean_redis.exists(window_key(sid)) for sid in answered)
    assert not any(
        clean_redis.exists(window_key(sid)) for sid in unanswered
    )  # never processed: safe to retry
    log = (tmp_path / "serve.log").read_text()
    assert "Application shutdown complete" in log and "Finished server process" in log


def test_two_workers_report_the_sum_of_their_metrics(
    models_dir: Path, redis_url: str, clean_redis: redis.Redis, tmp_path: Path, test_series: np.ndarray
) -> None:
    server = LiveServer(models_dir, redis_url, tmp_path / "serve.log", VIGIL_WORKERS="2").start()
    try:
        with httpx.Client(base_url=server.url, headers=auth("all"), timeout=30) as client:
            sent = 0
            for i in range(40):  # new connections spread requests over both workers
                with httpx.Client(base_url=server.url, headers=auth("all"), timeout=30) as one_off:
                    response = one_off.post("/score", json=points_body(f"w-{i}", test_series[:5], 0))
                    assert response.status_code == 200
                    sent += 5
            totals = set()
            for _ in range(6):  # whichever worker answers, it reports the sum over workers
                text = client.get("/metrics").text
                found = re.search(r'^vigil_points_received_total\{model="tvnet"\} (\S+)$', text, re.M)
                assert found is not None
                totals.add(float(found.group(1)))
        assert totals == {float(sent)}
    finally:
        server.terminate()
        server.kill()
