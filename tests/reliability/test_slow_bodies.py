"""Slow request bodies from one key: they time out (408) and hold at most that key's share of the requests in
progress (429 beyond it), so every other key keeps being served."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx
import numpy as np
import redis

from tests.reliability.test_http_limits import read_response
from tests.service.conftest import KEYS, auth, points_body
from tests.service.live import LiveServer

N_SLOW = 260  # the hostile client's count: more than the default in-flight limit (256)
BODY_TIMEOUT_S = 3.0


def open_slow_body(port: int, key: str) -> socket.socket:
    """A POST /score announcing 100 000 bytes and sending 13 of them, then idling."""
    sock = socket.create_connection(("127.0.0.1", port))
    head = (
        "POST /score HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
        f"Authorization: Bearer {key}\r\nContent-Length: 100000\r\n\r\n"
    )
    sock.sendall(head.encode() + b'{"stream_id":')
    return sock


def test_one_keys_slow_bodies_time_out_and_never_lock_other_keys_out(
    live_server: Callable[..., LiveServer],
    redis_url: str,
    clean_redis: redis.Redis,
    test_series: np.ndarray,
    figures: Callable[..., None],
) -> None:
    server = live_server(
        redis_url, VIGIL_BODY_TIMEOUT_S=str(BODY_TIMEOUT_S), VIGIL_LOG_LEVEL="warning"
    )  # in-flight limit 256, so 64 per key by default
    opened = time.monotonic()
    slow = [open_slow_body(server.port, KEYS["scorer"][0]) for _ in range(N_SLOW)]
    answers: list[tuple[int, float, dict[str, str], str]] = [(0, 0.0, {}, "")] * N_SLOW

    def read(i: int) -> None:
        status, headers, body = read_response(slow[i], timeout_s=BODY_TIMEOUT_S + 20)
        code = json.loads(body).get("code", "") if body else ""
        answers[i] = (status, time.monotonic() - opened, headers, code)

    readers = [threading.Thread(target=read, args=(i,)) for i in range(N_SLOW)]
    for reader in readers:
        reader.start()
    time.sleep(0.5)
    others: list[int] = []
    with httpx.Client(base_url=server.url, headers=auth("all"), timeout=30) as client:
        for i in range(10):  # while the slow bodies are held
            body = points_body("other-key", test_series[i * 10 : i * 10 + 10], i * 10)
            others.append(client.post("/score", json=body).status_code)
    held_s = time.monotonic() - opened
    for reader in readers:
        reader.join(BODY_TIMEOUT_S + 30)
    statuses = Counter(a[0] for a in answers)
    timed_out_at = [a[1] for a in answers if a[0] == 408]
    figures(
        slow_connections=N_SLOW,
        other_key_statuses=dict(Counter(others)),
        other_key_requests_within_s=round(held_s, 2),
        slow_statuses=dict(statuses),
        slow_408_after_s=[round(min(timed_out_at), 2), round(max(timed_out_at), 2)] if timed_out_at else None,
    )
    assert others == [200] * 10 and held_s < BODY_TIMEOUT_S  # served while the slow bodies were held
    assert statuses == {408: 64, 429: N_SLOW - 64}  # the key's share times out; the rest is refused at once
    assert all(BODY_TIMEOUT_S - 0.5 < t < BODY_TIMEOUT_S + 5 for t in timed_out_at)
    assert all(
        a[2].get("connection") == "close" and a[3] == "request_timeout" for a in answers if a[0] == 408
    )
    assert all(a[2].get("retry-after") == "1" and a[3] == "too_many_requests" for a in answers if a[0] == 429)
    for sock, answer in zip(slow, answers, strict=True):
        if answer[0] == 408:  # closed after the answer: the rest of its body will not be read
            sock.settimeout(5)
            assert sock.recv(1) == b""
        sock.close()
