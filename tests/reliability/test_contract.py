"""The HTTP and WebSocket contract as the README states it: 415 for media types and codings the service does not
take, gzip bodies decompressed within the body bound, WebSocket refusals readable as close codes, ``since=0``
as the start, no severity while a stream is ok, and duplicate JSON keys resolved as documented."""

from __future__ import annotations

import gzip
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis
from fastapi.testclient import TestClient
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from tests.reliability.hostile import ROW, expect_refused, post, stream_body
from tests.reliability.test_feed import produce
from tests.service.conftest import KEYS, SAMPLE
from tests.service.live import LiveServer
from training.data import load_series

JSON = {"content-type": "application/json"}


def as_json(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


@pytest.mark.parametrize("path", ["/score", "/score/batch"])
@pytest.mark.parametrize(
    "content_type", ["application/x-www-form-urlencoded", "text/plain", "application/xml"]
)
def test_a_media_type_the_service_does_not_take_is_a_415(
    api: tuple[TestClient, redis.Redis], path: str, content_type: str
) -> None:
    expect_refused(
        api,
        415,
        "unsupported_media_type",
        "content-type",
        lambda c: post(c, b"stream_id=x", {"content-type": content_type}, path=path),
    )


def test_a_gzip_body_is_scored_like_the_plain_one(api: tuple[TestClient, redis.Redis]) -> None:
    client, _ = api
    plain = post(client, stream_body("gz-plain", [(float(t), ROW) for t in range(120)]))
    zipped = post(
        client,
        gzip.compress(as_json(stream_body("gz-zipped", [(float(t), ROW) for t in range(120)]))),
        {**JSON, "content-encoding": "gzip"},
    )
    assert plain.status_code == zipped.status_code == 200, zipped.text
    assert [s["score"] for s in zipped.json()["scores"]] == [s["score"] for s in plain.json()["scores"]]
    batch = post(
        client,
        gzip.compress(as_json({"items": [stream_body("gz-batch", [(1.0, ROW)])]})),
        {**JSON, "content-encoding": "GZIP"},
        path="/score/batch",
    )
    assert batch.status_code == 200 and batch.json()["items"][0]["result"]["accepted"] == 1


@pytest.mark.parametrize("coding", ["deflate", "br", "compress", "gzip, gzip", "zstd"])
def test_a_content_coding_other_than_gzip_is_a_415_even_on_a_plain_body(
    api: tuple[TestClient, redis.Redis], coding: str
) -> None:
    """A ``deflate`` header on a plain body used to be accepted as if no coding were named."""
    body = as_json(stream_body("coded", [(1.0, ROW)]))
    expect_refused(
        api,
        415,
        "unsupported_media_type",
        "content-encoding",
        lambda c: post(c, body, {**JSON, "content-encoding": coding}),
    )


def test_a_gzip_bomb_is_a_413_and_broken_gzip_a_422(api: tuple[TestClient, redis.Redis]) -> None:
    """50 MB of JSON whitespace compresses to 50 KB: decompressed, it is over the 1 MB body bound."""
    bomb = gzip.compress(b"{" + b" " * 50_000_000 + b"}", compresslevel=9)
    assert len(bomb) < 100_000
    gz = {**JSON, "content-encoding": "gzip"}
    body = gzip.compress(as_json(stream_body("gz", [(1.0, ROW)])))
    expect_refused(api, 413, "payload_too_large", "body", lambda c: post(c, bomb, gz))
    expect_refused(api, 422, "invalid_request", "body: truncated", lambda c: post(c, body[:-12], gz))
    expect_refused(api, 422, "invalid_request", "body: invalid gzip", lambda c: post(c, b"plain", gz))


def test_a_gzip_body_of_many_members_is_refused_at_once(api: tuple[TestClient, redis.Redis]) -> None:
    """Concatenated members are valid gzip and are joined (up to MAX_GZIP_MEMBERS); each member's leftover
    input is copied, so a body of 200,000 empty members cost a worker thread seconds before it was bounded."""
    from service.codec import MAX_GZIP_MEMBERS

    gz = {**JSON, "content-encoding": "gzip"}
    body = as_json(stream_body("gz-members", [(1.0, ROW)]))
    two = gzip.compress(body[:10]) + gzip.compress(body[10:])
    assert post(api[0], two, gz).status_code == 200
    many = gzip.compress(b"") * 1_000 + gzip.compress(body)
    expect_refused(
        api, 422, "invalid_request", f"body: more than {MAX_GZIP_MEMBERS}", lambda c: post(c, many, gz)
    )


def test_unknown_paths_and_methods_answer_the_error_shape_with_a_code(
    api: tuple[TestClient, redis.Redis],
) -> None:
    client, _ = api
    missing = client.get("/no-such-path")
    assert missing.status_code == 404 and missing.json() == {"code": "not_found", "detail": "Not Found"}
    wrong = client.get("/score")
    assert wrong.status_code == 405 and wrong.json()["code"] == "method_not_allowed"
    assert "POST" in wrong.headers["allow"]


def test_since_the_largest_event_id_is_an_empty_page(api: tuple[TestClient, redis.Redis]) -> None:
    """A valid id with nothing after it; Redis refuses an exclusive range from it (was a 503, retried forever)."""
    client, store = api
    produce(store, 1, "after-last", pause_s=0)
    last = f"{2**64 - 1}-{2**64 - 1}"
    listed = client.get("/alerts", params={"since": last})
    assert listed.status_code == 200 and listed.json()["events"] == []


def test_duplicate_json_keys_resolve_to_the_last_as_documented(api: tuple[TestClient, redis.Redis]) -> None:
    """RFC 8259 leaves duplicate names to implementations; the README says the last one wins."""
    client, _ = api
    raw = b'{"stream_id":"dup-first","points":[],"stream_id":"dup-last","points":[{"ts":1,"values":%s}]}'
    response = post(client, raw % json.dumps(ROW).encode())
    assert response.status_code == 200 and response.json()["stream_id"] == "dup-last"


def test_a_stream_that_is_ok_shows_no_severity(api: tuple[TestClient, redis.Redis]) -> None:
    """Rows of the sample's training part, which the model learned as normal (a constant made-up row is a level
    shift that the default score's level term rightly alerts on)."""
    client, _ = api
    train = load_series(SAMPLE / "train.txt.gz", max_rows=150)
    body = post(client, stream_body("calm", [(float(t), row.tolist()) for t, row in enumerate(train)]))
    assert body.status_code == 200 and all(s["level"] == "normal" for s in body.json()["scores"])
    alert = client.get("/streams/calm").json()["alert"]
    assert alert == {"state": "ok", "severity": None}


def test_alerts_since_0_list_from_the_start(api: tuple[TestClient, redis.Redis]) -> None:
    client, store = api
    ids = produce(store, 3, "from-start", pause_s=0)
    for since in ("0", "0-0"):
        listed = client.get("/alerts", params={"since": since, "stream_id": "from-start"})
        assert listed.status_code == 200 and [e["id"] for e in listed.json()["events"]] == ids


def closed_with(url: str, **kwargs: Any) -> tuple[int, str]:
    """The close code and reason the server ends a feed connection with (the handshake must succeed)."""
    with (
        connect(url, open_timeout=10, close_timeout=5, **kwargs) as ws,
        pytest.raises(ConnectionClosed) as closed,
    ):
        ws.recv(timeout=10)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


def test_websocket_refusals_are_close_codes_after_the_handshake_and_since_0_replays_everything(
    live_server: Callable[..., LiveServer], redis_url: str, clean_redis: redis.Redis
) -> None:
    """The README promises close code 1008 for a bad token; a close before the handshake was an HTTP 403
    instead, where no code can be read. A bad ``since`` or ``stream_id`` is told apart: 4422."""
    server = live_server(redis_url, VIGIL_LOG_LEVEL="warning")
    feed = server.url.replace("http://", "ws://") + "/ws/alerts"
    reader, scorer = KEYS["reader"][0], KEYS["scorer"][0]
    code, reason = closed_with(feed)
    assert code == 1008 and reason.startswith("unauthorized")
    code, reason = closed_with(f"{feed}?token=wrong-token-0123456789")
    assert code == 1008 and reason.startswith("unauthorized: invalid API key")
    code, reason = closed_with(f"{feed}?token={scorer}")
    assert code == 1008 and reason.startswith("forbidden")
    code, reason = closed_with(feed, additional_headers={"Authorization": "Bearer wrong-token-0123456789"})
    assert code == 1008
    code, reason = closed_with(f"{feed}?token={reader}&since=12")
    assert code == 4422 and reason.startswith("invalid_request: query.since")
    code, reason = closed_with(f"{feed}?token={reader}&stream_id=a%20b")
    assert code == 4422 and reason.startswith("invalid_request: query.stream_id")
    ids = produce(clean_redis, 3, "replayed", pause_s=0)
    for since in ("0", "0-0"):
        with connect(f"{feed}?token={reader}&stream_id=replayed&since={since}", open_timeout=10) as ws:
            assert [json.loads(ws.recv(timeout=10))["id"] for _ in ids] == ids


def test_a_resume_from_before_trimmed_events_is_refused_not_silently_skipped(
    live_server: Callable[..., LiveServer], redis_url: str, clean_redis: redis.Redis
) -> None:
    """Events a client had not read yet were trimmed from the retained stream (its retention passed while the
    client was away): resuming from its last id answers 410 ``events_trimmed`` (feed: close 4410) naming where
    to resume, instead of starting at the oldest event held as if nothing were missing. A resume from an event
    still held is served."""
    server = live_server(redis_url, VIGIL_LOG_LEVEL="warning")
    reader = KEYS["reader"][0]
    ids = produce(clean_redis, 10, "trimmed", pause_s=0)
    clean_redis.xtrim("vigil:alerts", maxlen=3, approximate=False)  # ids[:7] gone
    alerts = f"{server.url}/alerts"
    headers = {"Authorization": f"Bearer {reader}"}
    refused = httpx.get(alerts, params={"since": ids[2]}, headers=headers, timeout=10)
    assert refused.status_code == 410, refused.text
    assert refused.json()["code"] == "events_trimmed" and "since=0" in refused.json()["detail"]
    feed = server.url.replace("http://", "ws://") + "/ws/alerts"
    code, reason = closed_with(f"{feed}?token={reader}&since={ids[2]}")
    assert code == 4410 and reason.startswith("events_trimmed")
    served = httpx.get(alerts, params={"since": ids[7]}, headers=headers, timeout=10)  # the oldest held
    assert served.status_code == 200 and [e["id"] for e in served.json()["events"]] == ids[8:]
    everything = httpx.get(alerts, params={"since": "0"}, headers=headers, timeout=10)
    assert [e["id"] for e in everything.json()["events"]] == ids[7:]
