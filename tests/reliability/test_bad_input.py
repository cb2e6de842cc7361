"""Hostile and malformed input: every bad request is a 4xx naming the field and the reason, and changes
nothing in Redis; generated bodies never cause a server error."""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.app import create_app
from service.codec import BINARY_CONTENT_TYPE, MAGIC, encode_binary, parse_binary
from service.errors import BadInput
from service.schemas import StreamScoreRequest
from tests.reliability.conftest import snapshot
from tests.service.conftest import auth, make_settings

C = 38  # sensors of the test bundle
ROW = [0.1] * C
GENERATED = settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.fixture(scope="module")
def api(models_dir: Path, redis_url: str) -> Iterator[tuple[TestClient, redis.Redis]]:
    """One app for the module (hypothesis runs many examples against it) on the session's Redis."""
    store = redis.Redis.from_url(redis_url)
    store.flushdb()
    settings_ = make_settings(models_dir, redis_url, max_body_bytes=1_000_000, max_points_per_request=500)
    with TestClient(create_app(settings_), headers=auth("all")) as client:
        assert client.post("/score", json=stream_body("bound", [(0.0, ROW)])).status_code == 200
        yield client, store
    store.close()


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
        422,
        "invalid_request",
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


# ---- generated bodies -------------------------------------------------------------------------------------

json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
any_json = st.recursive(
    json_leaf,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=40,
)
stream_ids = st.one_of(
    st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True),
    st.text(max_size=140),
    st.sampled_from(["", "a\n", "{x}", "*", "../x"]),
)
floats = st.one_of(
    st.floats(width=32, allow_nan=False, allow_infinity=False, min_value=-10, max_value=10),
    st.floats(),
    st.integers(min_value=-(2**70), max_value=2**70),
)
near_valid = st.fixed_dictionaries(
    {
        "stream_id": stream_ids,
        "points": st.lists(
            st.fixed_dictionaries({"ts": floats, "values": st.lists(floats, min_size=C - 1, max_size=C + 1)}),
            max_size=4,
        ),
    },
    optional={"model": st.sampled_from(["tvnet", "nope", "tvnet\n", ""])},
)


def check_generated(api: tuple[TestClient, redis.Redis], response: Any, before: dict[bytes, bytes]) -> None:
    _, store = api
    assert response.status_code < 500, response.text
    body = response.json()
    if response.status_code == 200:
        for score in body.get("scores", []):
            assert isinstance(score["score"], float) and math.isfinite(score["score"]), score
        return
    assert response.status_code in (404, 409, 413, 422), response.text
    assert body["code"] and ": " in body["detail"] or body["code"] == "unknown_model", body
    assert snapshot(store) == before, body


@GENERATED
@given(body=any_json)
def test_arbitrary_json_never_causes_a_server_error(api: tuple[TestClient, redis.Redis], body: Any) -> None:
    client, store = api
    before = snapshot(store)
    check_generated(
        api,
        client.post(
            "/score", content=json.dumps(body).encode(), headers={"content-type": "application/json"}
        ),
        before,
    )


@GENERATED
@given(body=near_valid)
def test_near_valid_stream_bodies_are_scored_or_refused_cleanly(
    api: tuple[TestClient, redis.Redis], body: dict[str, Any]
) -> None:
    client, store = api
    before = snapshot(store)
    content = json.dumps(body, allow_nan=True).encode()  # NaN and Infinity tokens travel as such
    check_generated(
        api, client.post("/score", content=content, headers={"content-type": "application/json"}), before
    )


@GENERATED
@given(
    data=st.binary(max_size=400)
    | st.builds(
        lambda b, cut: b[:cut],
        st.just(encode_binary("cut", [1.0, 2.0], np.zeros((2, C)))),
        st.integers(0, 400),
    )
)
def test_arbitrary_binary_bodies_never_cause_a_server_error(
    api: tuple[TestClient, redis.Redis], data: bytes
) -> None:
    client, store = api
    before = snapshot(store)
    check_generated(
        api,
        client.post(
            "/score",
            content=MAGIC + data[4:] if data[:1] == b"V" else data,
            headers={"content-type": BINARY_CONTENT_TYPE},
        ),
        before,
    )


@GENERATED
@given(stream_id=stream_ids)
def test_binary_and_json_bodies_accept_exactly_the_same_stream_ids(stream_id: str) -> None:
    """A frame's stream id passes the same check as a JSON body's (it once let ``"a\\n"`` through)."""
    try:
        StreamScoreRequest.model_validate({"stream_id": stream_id, "points": [{"ts": 1.0, "values": [0.0]}]})
        json_ok = True
    except ValueError:
        json_ok = False
    try:
        binary_ok = parse_binary(encode_binary(stream_id, [1.0], np.zeros((1, 1)))).stream_id == stream_id
    except BadInput:
        binary_ok = False
    assert binary_ok == json_ok


_fresh = iter(range(10**9))


@GENERATED
@given(
    row=st.integers(0, 99),
    values=st.lists(
        st.floats(width=32, allow_nan=False, allow_infinity=False) | st.floats(-10, 10),
        min_size=C,
        max_size=C,
    ),
)
def test_every_accepted_window_scores_finite(
    api: tuple[TestClient, redis.Redis], row: int, values: list[float]
) -> None:
    """A full window with one generated row: refused with a 422 or scored, each of its 100 points finite
    (extreme float32 values once came back as ``score: null``, level normal)."""
    client, store = api
    rows = [ROW] * 100
    rows[row] = values
    before = snapshot(store)
    response = post(client, stream_body(f"gen-{next(_fresh)}", [(float(t), r) for t, r in enumerate(rows)]))
    check_generated(api, response, before)
    if response.status_code == 200:
        assert len(response.json()["scores"]) == 100
    else:
        assert response.json()["detail"].startswith(f"points.{row}.values"), response.text
