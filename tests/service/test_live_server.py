"""A real server process: SIGTERM drains in-flight work; several workers share their metrics."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import redis

from tests.service.conftest import auth, points_body
from tests.service.live import LiveServer


def test_sigterm_under_load_answers_every_accepted_request(
    models_dir: Path, redis_url: str, clean_redis: redis.Redis, tmp_path: Path, test_series: np.ndarray
) -> None:
    server = LiveServer(models_dir, redis_url, tmp_path / "serve.log").start()
    outcomes: list[str] = []
    window = {"window": test_series[:100].tolist()}
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=server.url, headers=auth("all"), timeout=30) as client:
            while not stop.is_set():
                try:
                    response = client.post("/score", json=window)
                except httpx.TransportError as exc:  # refused once the server stopped listening
                    outcomes.append(type(exc).__name__)
                    return
                outcomes.append(str(response.status_code))

    threads = [threading.Thread(target=load) for _ in range(8)]
    try:
        for thread in threads:
            thread.start()
        while outcomes.count("200") < 40:
            time.sleep(0.01)
        code = server.terminate()
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
        server.kill()
    assert code in (0, -15)  # uvicorn re-raises the signal it handled, after the graceful shutdown
    statuses = {o for o in outcomes if o.isdigit()}
    assert statuses == {"200"}, outcomes  # no request got an error while the server drained
    failures = [o for o in outcomes if not o.isdigit()]
    assert all(f in {"ConnectError", "RemoteProtocolError"} for f in failures)
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
