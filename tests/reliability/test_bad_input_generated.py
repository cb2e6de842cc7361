"""Hostile input, generated: hypothesis over JSON, near-valid stream bodies and binary frames (no 5xx)."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import redis
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st

from service.codec import BINARY_CONTENT_TYPE, MAGIC, encode_binary, parse_binary
from service.errors import BadInput
from service.schemas import StreamScoreRequest
from tests.reliability.conftest import snapshot
from tests.reliability.hostile import (
    GENERATED,
    ROW,
    C,
    post,
    stream_body,
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
