"""Keys: compared in constant time against every configured key, and never written to a log."""

from __future__ import annotations

import ast
import contextlib
import hmac
import inspect
import statistics
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from websockets.exceptions import ConnectionClosed, InvalidHandshake
from websockets.sync.client import connect

import service.auth
from service.app import create_app
from service.auth import KeyRing
from tests.service.conftest import KEYS, auth, make_settings, points_body
from tests.service.live import LiveServer

SECRETS = [key for key, _ in KEYS.values()]


def keyring() -> KeyRing:
    return KeyRing(make_settings(Path("."), "redis://127.0.0.1:1/0").api_keys, disabled=False)


@pytest.fixture
def compared(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes]]:
    """Every (presented, configured) pair that goes through ``hmac.compare_digest``."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(service.auth.hmac, "compare_digest", recording)
    return calls


@pytest.mark.parametrize(
    "presented",
    [SECRETS[0], SECRETS[-1], SECRETS[1][:-1] + "X", "short", "k-all-0123456789abcdeX", "é" * 22],
    ids=["first key", "last key", "last character wrong", "short", "shared prefix", "non-ascii"],
)
def test_every_presented_key_is_compared_with_every_configured_key_by_compare_digest(
    compared: list[tuple[bytes, bytes]], presented: str
) -> None:
    """Instrumented: whichever key matches (or none), ``compare_digest`` runs once per configured key, in
    order, with no early exit, so the time does not depend on which key matched."""
    with contextlib.suppress(service.auth.Unauthorized):
        keyring().identify(presented)
    assert [secret for _, secret in compared] == [s.encode() for s in SECRETS]
    assert {candidate for candidate, _ in compared} == {presented.encode()}


def test_key_lookup_has_no_ordinary_comparison_or_lookup() -> None:
    """Inspected: ``KeyRing.identify`` compares nothing with ``==``, ``!=`` or ``in`` and indexes nothing by the
    presented key (a dict lookup would hash and compare it), so compare_digest is the only comparison."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(KeyRing.identify)))
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            assert all(isinstance(op, ast.Is | ast.IsNot) for op in node.ops), ast.unparse(node)
        if isinstance(node, ast.Subscript):
            raise AssertionError(f"subscript in identify: {ast.unparse(node)}")


def test_http_and_websocket_authentication_go_through_the_keyring(
    compared: list[tuple[bytes, bytes]], models_dir: Path, redis_url: str, clean_redis: redis.Redis
) -> None:
    with TestClient(create_app(make_settings(models_dir, redis_url))) as client:
        compared.clear()
        assert (
            client.get("/models", headers={"Authorization": "Bearer wrong-key-0123456789ab"}).status_code
            == 401
        )
        assert len(compared) == len(SECRETS)
        compared.clear()
        assert client.get("/models", headers=auth("reader")).status_code == 200
        assert len(compared) == len(SECRETS)
        compared.clear()
        with client.websocket_connect(f"/ws/alerts?token={KEYS['reader'][0]}"):
            pass
        assert len(compared) == len(SECRETS)


@pytest.mark.slow
def test_key_comparison_time_does_not_depend_on_how_much_of_a_key_matches(
    figures: Callable[..., None],
) -> None:
    """Statistical, and only as strong as the machine's timer noise: the median time to refuse a key that
    shares all but its last character with a configured key, and one that shares nothing, differ by less
    than the noise between two runs of the same key. compare_digest's constant-time guarantee is what
    really holds; this shows no lookup path around it leaks a measurable prefix signal. Length still
    leaks (compare_digest returns early on unequal lengths), which is why keys are long and random."""
    ring = keyring()
    target = SECRETS[-1]
    near = target[:-1] + ("0" if target[-1] != "0" else "1")
    far = "".join("0" if c != "0" else "1" for c in target)
    assert len(near) == len(far) == len(target)

    def median_ns(key: str, rounds: int = 30, per_round: int = 2000) -> list[float]:
        out = []
        for _ in range(rounds):
            started = time.perf_counter_ns()
            for _ in range(per_round):
                with contextlib.suppress(service.auth.Unauthorized):
                    ring.identify(key)
            out.append((time.perf_counter_ns() - started) / per_round)
        return out

    samples: dict[str, list[float]] = {"near": [], "far": [], "far-again": []}
    for _ in range(5):  # interleaved, so drifts of the shared machine hit every variant alike
        for name, key in (("near", near), ("far", far), ("far-again", far)):
            samples[name].extend(median_ns(key, rounds=6))
    med = {name: statistics.median(values) for name, values in samples.items()}
    noise = abs(med["far"] - med["far-again"])
    signal = abs(med["near"] - med["far"])
    figures(
        median_ns={k: round(v, 1) for k, v in med.items()},
        prefix_signal_ns=round(signal, 1),
        noise_ns=round(noise, 1),
    )
    assert signal < max(3 * noise, 0.05 * med["far"])


# ---- logs ------------------------------------------------------------------------------------------------


def exercise_every_way_a_key_travels(server: LiveServer) -> None:
    """Keys in bearer headers (every role, right and wrong routes), WebSocket tokens in the query string and
    in a header (accepted and refused), and a token mistakenly sent in an HTTP query string."""
    ws_url = server.url.replace("http://", "ws://") + "/ws/alerts"
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for name in KEYS:
            headers = auth(name)
            client.get("/models", headers=headers)
            client.post("/score", json=points_body("logs", np.zeros((1, 38)), 0), headers=headers)
            client.post("/admin/models/reload", headers=headers)
            client.get(
                "/alerts", params={"token": KEYS[name][0]}
            )  # a key in an HTTP query: refused, still logged
            client.get("/streams/logs", headers={"Authorization": f"Bearer {KEYS[name][0]}x"})  # wrong key
        for name in KEYS:
            try:
                with connect(
                    f"{ws_url}?token={KEYS[name][0]}&since=0-0", open_timeout=10, close_timeout=2
                ) as ws:
                    ws.recv(timeout=0.2)
            except (ConnectionClosed, InvalidHandshake, TimeoutError):
                pass
            try:
                with connect(ws_url, additional_headers=auth(name), open_timeout=10, close_timeout=2) as ws:
                    ws.recv(timeout=0.2)
            except (ConnectionClosed, InvalidHandshake, TimeoutError):
                pass


@pytest.mark.parametrize("workers", ["1", pytest.param("2", marks=pytest.mark.slow)])
def test_no_key_or_token_reaches_the_logs(
    live_server: Callable[..., LiveServer],
    redis_url: str,
    clean_redis: redis.Redis,
    workers: str,
    figures: Callable[..., None],
) -> None:
    server = live_server(redis_url, VIGIL_WORKERS=workers, VIGIL_LOG_LEVEL="debug")
    exercise_every_way_a_key_travels(server)
    server.terminate()
    log = server.log_path.read_text(errors="replace")
    lines = log.splitlines()
    websocket_lines = [line for line in lines if "WebSocket /ws/alerts" in line]
    access_lines = [line for line in lines if '" 401' in line or '" 200' in line or '" 403' in line]
    leaks = {name: log.count(key) for name, (key, _) in KEYS.items()}
    figures(
        workers=workers,
        log_lines=len(lines),
        access_lines=len(access_lines),
        websocket_lines=len(websocket_lines),
        key_hits=leaks,
    )
    assert len(websocket_lines) >= 2 * len(KEYS) and len(access_lines) >= 5 * len(
        KEYS
    )  # the log really recorded them
    assert sum(leaks.values()) == 0, [line for line in lines if any(k in line for k in SECRETS)][:5]
