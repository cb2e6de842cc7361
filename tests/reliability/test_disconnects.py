"""What the request counter says about clients that leave mid-body and requests the in-flight limit sheds:
a disconnect is no server error (status 499, no traceback), and a shed request keeps its route's name."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

import httpx
import numpy as np
import redis

from tests.reliability.test_slow_bodies import open_slow_body
from tests.service.conftest import KEYS, auth, points_body
from tests.service.live import LiveServer


def request_counts(server: LiveServer) -> dict[tuple[str, str, str], float]:
    """``vigil_requests_total`` by (route, method, status)."""
    text = httpx.get(f"{server.url}/metrics", timeout=30).text
    found = re.findall(
        r'^vigil_requests_total\{method="([^"]+)",route="([^"]+)",status="([^"]+)"\} (\S+)$', text, re.M
    )
    return {(route, method, status): float(n) for method, route, status, n in found}


def posts(server: LiveServer) -> float:
    return sum(n for (_, method, _), n in request_counts(server).items() if method == "POST")


def wait_for(condition: Callable[[], bool], timeout_s: float = 10) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_a_client_leaving_mid_body_is_a_499_without_traceback_and_shed_requests_keep_their_route(
    live_server: Callable[..., LiveServer],
    redis_url: str,
    clean_redis: redis.Redis,
    test_series: np.ndarray,
    figures: Callable[..., None],
) -> None:
    server = live_server(redis_url, VIGIL_MAX_INFLIGHT_REQUESTS="1")
    gone = open_slow_body(server.port, KEYS["scorer"][0])
    time.sleep(0.3)
    gone.close()  # leaves with 13 of 100 000 bytes sent
    wait_for(lambda: posts(server) >= 1)
    held = open_slow_body(server.port, KEYS["scorer"][0])  # holds the one in-flight slot
    time.sleep(0.3)
    with httpx.Client(base_url=server.url, headers=auth("all"), timeout=30) as client:
        shed = client.post("/score", json=points_body("shed", test_series[:10], 0))
    held.close()
    wait_for(lambda: posts(server) >= 3)  # two clients that left, one shed
    counts = request_counts(server)
    log = server.log_path.read_text(errors="replace")
    figures(
        score_counts={status: n for (route, _, status), n in counts.items() if route == "/score"},
        unmatched={status: n for (route, _, status), n in counts.items() if route == "unmatched"},
        tracebacks_in_log=log.count("Traceback"),
    )
    assert shed.status_code == 503 and shed.json()["code"] == "overloaded"
    assert counts[("/score", "POST", "499")] == 2  # both clients that left
    assert not [key for key in counts if key[2].startswith("5") and key[2] != "503"]  # no 500
    assert counts[("/score", "POST", "503")] == 1  # the shed request, under its route
    assert not [key for key in counts if key[0] == "unmatched"]
    assert "Traceback" not in log and "ClientDisconnect" not in log
