"""Request builders for the hostile-input tests (tests/reliability/test_bad_input*.py)."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import redis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from service.codec import BINARY_CONTENT_TYPE, MAGIC, encode_binary
from tests.reliability.conftest import snapshot

C = 38  # sensors of the test bundle
ROW = [0.1] * C
GENERATED = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


def stream_body(stream_id: Any, points: list[tuple[Any, Any]], **extra: Any) -> dict[str, Any]:
    return {"stream_id": stream_id, "points": [{"ts": t, "values": v} for t, v in points], **extra}


def raw_json(body: str) -> tuple[bytes, dict[str, str]]:
    return body.encode(), {"content-type": "application/json"}


def binary(
    stream_id: str, ts: list[float], values: np.ndarray, model: str | None = None
) -> tuple[bytes, dict[str, str]]:
    return encode_binary(stream_id, ts, values, model), {"content-type": BINARY_CONTENT_TYPE}


def frame(stream_id: bytes, n_points: int, n_features: int, payload: bytes) -> bytes:
    """A binary frame built by hand, so that its header may lie."""
    return (
        MAGIC
        + struct.pack("<H", len(stream_id))
        + stream_id
        + struct.pack("<H", 0)
        + struct.pack("<IH", n_points, n_features)
        + payload
    )


def post(
    client: TestClient,
    content: bytes | dict[str, Any],
    headers: dict[str, str] | None = None,
    path: str = "/score",
) -> Any:
    if isinstance(content, dict):
        return client.post(path, json=content)
    return client.post(path, content=content, headers=headers or {"content-type": "application/json"})


def expect_refused(
    api: tuple[TestClient, redis.Redis], status: int, code: str, field: str, send: Any
) -> dict[str, Any]:
    """``send(client)`` is answered ``status`` with ``code``, a detail starting with ``field``, no state change."""
    client, store = api
    before = snapshot(store)
    response = send(client)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code and body["detail"].startswith(field), body
    assert snapshot(store) == before
    return body
