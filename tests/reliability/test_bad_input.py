"""Hostile and malformed input: every bad request is a 4xx naming the field and the reason, and changes
nothing in Redis; generated bodies never cause a server error."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from service.codec import BINARY_CONTENT_TYPE, MAGIC, encode_binary
from tests.reliability.conftest import snapshot
from tests.reliability.hostile import (
    ROW,
    C,
    binary,
    expect_refused,
    frame,
    post,
    raw_json,
    stream_body,
)

FIELD_CASES: dict[str, tuple[int, str, str, Any]] = {
    # name: (status, code, field the detail starts with, request)
    "body over the byte limit (declared)": (
        413,
        "payload_too_large",
        "body",
        lambda c: post(c, b"[" + b"0," * 600_000 + b"0]"),
    ),
    "body over the byte limit (chunked)": (
        413,
        "payload_too_large",
        "body",
        lambda c: c.post(
            "/score", content=(b"x" * 65_536 for _ in range(20)), headers={"content-type": "application/json"}
        ),
    ),
    "deep JSON": (422, "invalid_request", "body", lambda c: post(c, b"[" * 50_000 + b"]" * 50_000)),
    "deep JSON inside values": (
        422,
        "invalid_request",
        "body",
        lambda c: post(
            c, b'{"stream_id":"d","points":[{"ts":1,"values":' + b"[" * 5000 + b"]" * 5000 + b"}]}"
        ),
    ),
    "truncated JSON": (422, "invalid_request", "body", lambda c: post(c, b'{"stream_id":"t","points":[')),
    "not JSON at all": (422, "invalid_request", "body", lambda c: post(c, b"\xff\xfe\x00garbage")),
    "too many points (JSON)": (
        413,
        "payload_too_large",
        "points",
        lambda c: post(c, stream_body("many", [(float(i), ROW) for i in range(501)])),
    ),
    "too many points (binary)": (
        413,
        "payload_too_large",
        "points",
        lambda c: post(c, *binary("many", list(range(501)), np.zeros((501, C)))),
    ),
    "binary header announcing 2**32-1 points": (
        422,
        "invalid_request",
        "body",
        lambda c: post(c, frame(b"huge", 2**32 - 1, C, b"\0" * 64), {"content-type": BINARY_CONTENT_TYPE}),
    ),
    "binary frame truncated in the header": (
        422,
        "invalid_request",
        "body",
        lambda c: post(c, MAGIC + b"\x05\x00ab", {"content-type": BINARY_CONTENT_TYPE}),
    ),
    "binary frame with the wrong magic": (
        422,
        "invalid_request",
        "body",
        lambda c: post(
            c,
            b"VGL2" + encode_binary("m", [1.0], np.zeros((1, C)))[4:],
            {"content-type": BINARY_CONTENT_TYPE},
        ),
    ),
    "NaN token in values": (
        422,
        "invalid_request",
        "points.0.values",
        lambda c: post(
            c, *raw_json('{"stream_id":"n","points":[{"ts":1,"values":[NaN' + ",0" * (C - 1) + "]}]}")
        ),
    ),
    "Infinity token in values": (
        422,
        "invalid_request",
        "points.0.values",
        lambda c: post(
            c, *raw_json('{"stream_id":"n","points":[{"ts":1,"values":[Infinity' + ",0" * (C - 1) + "]}]}")
        ),
    ),
    "1e400 literal in values": (
        422,
        "invalid_request",
        "points.0.values",
        lambda c: post(
            c, *raw_json('{"stream_id":"n","points":[{"ts":1,"values":[1e400' + ",0" * (C - 1) + "]}]}")
        ),
    ),
    "-Infinity ts": (
        422,
        "invalid_request",
        "points.0.ts",
        lambda c: post(
            c,
            *raw_json('{"stream_id":"n","points":[{"ts":-Infinity,"values":[' + ",".join(["0"] * C) + "]}]}"),
        ),
    ),
    "NaN value (binary)": (
        422,
        "invalid_request",
        "points.1.values",
        lambda c: post(c, *binary("n", [1.0, 2.0], np.array([[0.0] * C, [0.0] * (C - 1) + [np.nan]]))),
    ),
    "infinite ts (binary)": (
        422,
        "invalid_request",
        "points.0.ts",
        lambda c: post(c, *binary("n", [np.inf], np.zeros((1, C)))),
    ),
    "value beyond float32 (JSON)": (
        422,
        "invalid_request",
        "points.0.values",
        lambda c: post(c, stream_body("f", [(1.0, [1e39] + ROW[1:])])),
    ),
    "duplicate ts inside a request": (
        422,
        "invalid_request",
        "points.1.ts",
        lambda c: post(c, stream_body("bound", [(5.0, ROW), (5.0, ROW)])),
    ),
    "reordered ts inside a request": (
        422,
        "invalid_request",
        "points.2.ts",
        lambda c: post(c, stream_body("bound", [(5.0, ROW), (7.0, ROW), (6.0, ROW)])),
    ),
    "reordered ts (binary)": (
        422,
        "invalid_request",
        "points.1.ts",
        lambda c: post(c, *binary("bound", [9.0, 8.0], np.zeros((2, C)))),
    ),
    "wrong sensor count": (
        422,
        "invalid_request",
        "points.0.values",
        lambda c: post(c, stream_body("w", [(1.0, ROW[:-1])])),
    ),
    "ragged rows": (
        422,
        "invalid_request",
        "points.1.values",
        lambda c: post(c, stream_body("w", [(1.0, ROW), (2.0, ROW + [0.0])])),
    ),
    "no points": (422, "invalid_request", "points", lambda c: post(c, stream_body("w", []))),
    "unknown field": (
        422,
        "invalid_request",
        "extra",
        lambda c: post(c, stream_body("w", [(1.0, ROW)], extra=1)),
    ),
    "bool as a value (strict)": (
        422,
        "invalid_request",
        "points.0.values.0",
        lambda c: post(c, stream_body("w", [(1.0, [True] + ROW[1:])])),
    ),
    "number as a string (strict)": (
        422,
        "invalid_request",
        "points.0.ts",
        lambda c: post(c, stream_body("w", [("1", ROW)])),
    ),
    "wrong content type": (
        415,
        "unsupported_media_type",
        "content-type",
        lambda c: post(c, b"stream_id=x", {"content-type": "application/x-www-form-urlencoded"}),
    ),
    "stateless window of the wrong length": (
        422,
        "invalid_request",
        "window",
        lambda c: post(c, {"window": [ROW] * 7}),
    ),
    "stateless window with NaN": (
        422,
        "invalid_request",
        "window.3",
        lambda c: post(
            c,
            *raw_json(
                '{"window":'
                + json.dumps([ROW] * 3)[:-1]
                + ",[NaN"
                + ",0" * (C - 1)
                + "]"
                + ","
                + ",".join([json.dumps(ROW)] * 96)
                + "]}"
            ),
        ),
    ),
    "batch with too many items": (
        413,
        "payload_too_large",
        "items",
        lambda c: post(
            c, {"items": [stream_body(f"b{i}", [(1.0, ROW)]) for i in range(1001)]}, path="/score/batch"
        ),
    ),
    "batch that is not a batch": (
        422,
        "invalid_request",
        "items",
        lambda c: post(c, {"items": {}}, path="/score/batch"),
    ),
    "unknown model": (
        404,
        "unknown_model",
        "unknown model",
        lambda c: post(c, stream_body("w", [(1.0, ROW)], model="nope")),
    ),
    "since beyond a 64-bit id": (
        422,
        "invalid_request",
        "query.since",
        lambda c: c.get("/alerts", params={"since": "99999999999999999999999-0"}),
    ),
    "since in non-ASCII digits": (
        422,
        "invalid_request",
        "query.since",
        lambda c: c.get("/alerts", params={"since": "١٢-٣"}),
    ),
    "limit out of range": (
        422,
        "invalid_request",
        "query.limit",
        lambda c: c.get("/alerts", params={"limit": 0}),
    ),
}


@pytest.mark.parametrize("name", sorted(FIELD_CASES))
def test_bad_input_is_a_4xx_with_a_clear_message_and_changes_nothing(
    api: tuple[TestClient, redis.Redis], name: str
) -> None:
    status, code, field, send = FIELD_CASES[name]
    expect_refused(api, status, code, field, send)


def test_points_not_newer_than_the_stream_are_dropped_and_reported_not_appended(
    api: tuple[TestClient, redis.Redis],
) -> None:
    """Across requests, duplicate and stale ts are not errors: they are dropped, named, and never appended."""
    client, store = api
    sid = "replayed"
    first = post(client, stream_body(sid, [(float(t), ROW) for t in range(150)]))
    assert first.status_code == 200 and first.json()["accepted"] == 150
    before = snapshot(store)
    again = post(client, stream_body(sid, [(20.0, ROW), (149.0, ROW)]))
    assert again.status_code == 200
    assert again.json()["accepted"] == 0 and again.json()["scores"] == []
    assert again.json()["dropped"] == [{"ts": 20.0, "reason": "stale"}, {"ts": 149.0, "reason": "duplicate"}]
    assert snapshot(store) == before


@pytest.mark.parametrize("magnitude", [1e20, 1e30, 3e38])
def test_finite_values_the_model_cannot_score_are_refused_not_scored_as_null(
    api: tuple[TestClient, redis.Redis], magnitude: float
) -> None:
    """Values inside float32 whose normalised form overflows gave ``score: null, level: normal`` and broke
    the alert script; they are refused like infinities."""
    row = [magnitude] + ROW[1:]
    expect_refused(
        api,
        422,
        "invalid_request",
        "points.0.values",
        lambda c: post(c, stream_body("extreme", [(1.0, row)])),
    )
    expect_refused(
        api, 422, "invalid_request", "window.0.values", lambda c: post(c, {"window": [row] + [ROW] * 99})
    )
