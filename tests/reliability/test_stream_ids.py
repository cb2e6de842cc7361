"""Stream ids cannot reach another stream's keys: hostile ids are refused before any key is built, and every
accepted id lands in its own hash-tagged keys (one Redis Cluster slot per stream)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis.crc import key_slot

from service.app import create_app
from service.codec import BINARY_CONTENT_TYPE, encode_binary
from tests.reliability.conftest import snapshot
from tests.service.conftest import auth, make_settings

C = 38
VICTIM = "victim"
KEY = re.compile(rb"vigil:\{([^{}]+)\}:([wmar])")
HOSTILE = [
    "victim}",
    "{victim}",
    "victim}:w",
    "}:m",
    "victim*",
    "vict?m",
    "vict[i]m",
    "*",
    "victim\n",
    "victim\r\n",
    "victim\x00",
    "victim ",
    " victim",
    "../victim",
    "victim/..",
    "victim/../other",
    "%7Bvictim%7D",
    "ｖｉｃｔｉｍ",  # fullwidth letters
    "victim\u200b",  # zero-width space
    "vîctim",
    "victim\\",
    "victim'",
    'victim"',
    "",
    "v" * 129,
]


@pytest.fixture(scope="module")
def api(models_dir: Path, redis_url: str) -> Iterator[tuple[TestClient, redis.Redis]]:
    store = redis.Redis.from_url(redis_url)
    store.flushdb()
    with TestClient(create_app(make_settings(models_dir, redis_url)), headers=auth("all")) as client:
        rows = np.random.default_rng(1).normal(size=(120, C)).round(3)
        body = {
            "stream_id": VICTIM,
            "points": [{"ts": float(i), "values": r.tolist()} for i, r in enumerate(rows)],
        }
        assert client.post("/score", json=body).status_code == 200
        yield client, store
    store.close()


def victim_keys(store: redis.Redis) -> dict[bytes, bytes]:
    return {k: v for k, v in snapshot(store).items() if k.startswith(b"vigil:{victim}:")}


def assert_keyspace_well_formed(store: redis.Redis) -> set[str]:
    """Every key is the alert stream or ``vigil:{<id>}:<w|m|a|r>`` with a valid id; returns the ids."""
    ids = set()
    for key in store.scan_iter(count=1000):
        if key == b"vigil:alerts":
            continue
        found = KEY.fullmatch(key)
        assert found is not None, key
        stream_id = found.group(1).decode()
        assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", stream_id), key
        ids.add(stream_id)
    return ids


@pytest.mark.parametrize("stream_id", HOSTILE, ids=[repr(h) for h in HOSTILE])
def test_hostile_stream_ids_are_refused_and_touch_no_key(
    api: tuple[TestClient, redis.Redis], stream_id: str
) -> None:
    client, store = api
    before = snapshot(store)
    point = {"ts": 1e9, "values": [0.0] * C}
    responses = {"json": client.post("/score", json={"stream_id": stream_id, "points": [point]})}
    responses["batch"] = client.post(
        "/score/batch", json={"items": [{"stream_id": stream_id, "points": [point]}]}
    )
    try:
        frame = encode_binary(stream_id, [1e9], np.zeros((1, C)))
    except UnicodeEncodeError:
        frame = b""
    if frame:
        responses["binary"] = client.post(
            "/score", content=frame, headers={"content-type": BINARY_CONTENT_TYPE}
        )
    path = quote(stream_id, safe="")
    if path:  # "/streams/" is the stream list
        for method in ("GET", "DELETE"):
            responses[method] = client.request(method, f"/streams/{path}")
        responses["scores"] = client.get(f"/streams/{path}/scores")
    responses["alerts"] = client.get("/alerts", params={"stream_id": stream_id})
    for name, response in responses.items():
        if name == "batch":  # one bad item fails alone, inside a 200
            assert response.status_code == 200
            assert response.json()["items"][0]["error"]["code"] == "invalid_request", response.text
        else:
            assert response.status_code in (404, 405, 422), (name, response.status_code, response.text)
    assert snapshot(store) == before
    assert_keyspace_well_formed(store)


@settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream_id=st.from_regex(r"[A-Za-z0-9._:-]{1,128}", fullmatch=True)
    | st.sampled_from(
        [
            "victim:w",
            "victim:m",
            "victim:",
            ":victim",
            "victim.",
            "..",
            "...",
            "-",
            ":",
            "VICTIM",
            "victim:a:b",
        ]
    )
)
def test_every_accepted_stream_id_stays_in_its_own_keys_and_slot(
    api: tuple[TestClient, redis.Redis], stream_id: str
) -> None:
    client, store = api
    victim_before = victim_keys(store)
    point = {"ts": 2e9, "values": [0.0] * C}
    response = client.post("/score", json={"stream_id": stream_id, "points": [point]})
    if stream_id == VICTIM:
        return
    assert response.status_code == 200, response.text
    assert victim_keys(store) == victim_before  # another stream's keys are untouched
    own = [
        k for k in store.scan_iter(count=1000) if (m := KEY.fullmatch(k)) and m.group(1) == stream_id.encode()
    ]
    assert own and {key_slot(k) for k in own} == {key_slot(f"vigil:{{{stream_id}}}:m".encode())}
    assert stream_id in assert_keyspace_well_formed(store)
    info = client.get(f"/streams/{quote(stream_id, safe='')}")
    if stream_id not in (".", ".."):  # the client library normalises these path segments away
        assert info.status_code == 200 and info.json()["stream_id"] == stream_id, info.text
