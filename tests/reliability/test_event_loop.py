"""Large bodies are parsed and validated off the event loop, and a body with very many errors is not described
error by error: while valid 10 000-point bodies (a client re-sending points the stream holds) and a 4 MB body
of 200 000 unknown keys are answered, /healthz stays fast."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable

import httpx
import numpy as np
import orjson
import redis

from tests.service.conftest import auth
from tests.service.live import LiveServer

LOAD_S = 8.0


def ten_thousand_points(stream_id: str, rows: np.ndarray) -> bytes:
    """A valid stream-mode body of 10 000 points (3.3 MB), ts 0..9999."""
    series = rows[np.arange(10_000) % len(rows)]
    points = [{"ts": float(i), "values": row} for i, row in enumerate(series.tolist())]
    return orjson.dumps({"stream_id": stream_id, "points": points})


def two_hundred_thousand_keys() -> bytes:
    """A 2.4 MB body: one valid point, then 200 000 unknown keys (each one an error)."""
    keys = b",".join(b'"k%06d":0' % i for i in range(200_000))
    return (
        b'{"stream_id":"keys","points":[{"ts":1,"values":[' + b",".join([b"0"] * 38) + b"]}]," + keys + b"}"
    )


def p99_ms(values: list[float]) -> float:
    return round(float(np.percentile(values, 99)) * 1000, 1)


def test_health_stays_fast_while_large_bodies_are_parsed(
    live_server: Callable[..., LiveServer],
    redis_url: str,
    clean_redis: redis.Redis,
    test_series: np.ndarray,
    figures: Callable[..., None],
) -> None:
    server = live_server(redis_url, VIGIL_LOG_LEVEL="warning")
    headers = {**auth("all"), "content-type": "application/json"}
    bodies = {"points": ten_thousand_points("resent", test_series), "keys": two_hundred_thousand_keys()}
    primed = httpx.post(f"{server.url}/score", content=bodies["points"], headers=headers, timeout=120)
    assert primed.status_code == 200  # from now on every point of that body is a duplicate or stale
    statuses: Counter[str] = Counter()
    durations: dict[str, list[float]] = {"points": [], "keys": []}
    idle: list[float] = []
    loaded: list[float] = []
    stop = threading.Event()

    def probe(into: list[float], seconds: float) -> None:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            until = time.monotonic() + seconds
            while time.monotonic() < until:
                started = time.perf_counter()
                assert client.get("/healthz").status_code == 200
                into.append(time.perf_counter() - started)
                time.sleep(0.01)

    def load(kind: str) -> None:
        with httpx.Client(base_url=server.url, headers=headers, timeout=120) as client:
            while not stop.is_set():
                started = time.perf_counter()
                response = client.post("/score", content=bodies[kind])
                durations[kind].append(time.perf_counter() - started)
                code = response.json().get("code", "") if response.status_code >= 500 else ""
                statuses[f"{kind} {response.status_code} {code}".strip()] += 1

    probe(idle, 2.0)
    loaders = [threading.Thread(target=load, args=(kind,)) for kind in bodies]
    for loader in loaders:
        loader.start()
    time.sleep(0.5)
    probe(loaded, LOAD_S)
    stop.set()
    for loader in loaders:
        loader.join(120)
    figures(
        healthz_idle_p99_ms=p99_ms(idle),
        healthz_loaded_p99_ms=p99_ms(loaded),
        healthz_loaded_max_ms=round(max(loaded) * 1000, 1),
        probes=len(loaded),
        load=dict(statuses),
        median_request_s={k: round(float(np.median(v)), 2) for k, v in durations.items()},
        body_mb={k: round(len(v) / 1e6, 1) for k, v in bodies.items()},
    )
    assert set(statuses) == {"points 200", "keys 422"}
    assert float(np.median(durations["keys"])) < 1.0  # not 2.6 s describing 200 000 errors
    assert p99_ms(loaded) < 1000.0
