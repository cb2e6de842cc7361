"""Every route that reads or deletes stream state answers 503 ``store_unavailable`` with Retry-After when Redis
is gone, never 500: with Redis killed before the request, and killed in the middle of one, at the exact
command a store sends after an earlier call of the same request succeeded (a :class:`Tripwire` in front of the
real redis-server kills it when that command passes). Each store method, called on a killed Redis, raises
:class:`StoreUnavailable` itself, so no route has to catch Redis errors.

Before the fix, ``GET /streams/{id}`` failing at the alert state read and ``DELETE /streams/{id}`` failing at
the alert state or score history delete answered 500 (a bare ``ConnectionError``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from redis.asyncio import Redis

from service.alerts import AlertTracker
from service.app import create_app
from service.catalog import StreamCatalog
from service.errors import StoreUnavailable
from service.history import ScoreHistory
from tests.reliability.conftest import RedisProcess
from tests.reliability.tripwire import Tripwire
from tests.service.conftest import auth, make_settings, stream

SID = "s"
ALERT_STATE = f"vigil:{{{SID}}}:a".encode()
HISTORY = f"vigil:{{{SID}}}:r".encode()
WINDOW = f"vigil:{{{SID}}}:w".encode()


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path / "redis", aof=False)
    yield server
    server.stop()


@pytest.fixture
def tripwire(redis_proc: RedisProcess) -> Iterator[Tripwire]:
    wire = Tripwire(redis_proc)
    yield wire
    wire.close()


@pytest.fixture
def client(models_dir: Path, tripwire: Tripwire, test_series: np.ndarray) -> Iterator[TestClient]:
    """The app on Redis through the tripwire, with stream ``s`` scored (window, history and alert state held)."""
    settings = make_settings(models_dir, tripwire.url, redis_timeout_s=0.5)
    with TestClient(create_app(settings), headers=auth("all"), raise_server_exceptions=False) as test_client:
        stream(test_client, SID, test_series[:120], 40)
        assert test_client.get(f"/streams/{SID}/scores").json()["scores"]
        yield test_client


ROUTES = [
    ("GET", "/streams"),
    ("GET", f"/streams/{SID}"),
    ("DELETE", f"/streams/{SID}"),
    ("GET", f"/streams/{SID}/scores"),
    ("GET", f"/streams/{SID}/window"),
    ("GET", "/alerts"),
]


def assert_store_unavailable(response: Any) -> None:
    assert response.status_code == 503, (response.status_code, response.text)
    assert response.json()["code"] == "store_unavailable"
    assert response.headers["retry-after"] == "1"


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_each_store_route_answers_503_when_redis_was_killed(
    client: TestClient, redis_proc: RedisProcess, method: str, path: str
) -> None:
    redis_proc.kill()
    assert_store_unavailable(client.request(method, path))


@pytest.mark.parametrize(
    ("method", "path", "needles"),
    [
        ("GET", f"/streams/{SID}", (ALERT_STATE,)),  # after the window store's read
        ("DELETE", f"/streams/{SID}", (ALERT_STATE,)),  # after the window's delete
        ("DELETE", f"/streams/{SID}", (HISTORY,)),  # after the alert state's delete
        ("GET", f"/streams/{SID}/scores", (HISTORY,)),  # after the model binding's read
        ("GET", "/streams", (ALERT_STATE,)),  # after the SCAN and the summaries
        ("GET", f"/streams/{SID}/window", (WINDOW,)),
        ("GET", f"/alerts?stream_id={SID}", (b"EVALSHA", b"vigil:alerts")),  # scanned in Redis
        ("GET", "/alerts", (b"XRANGE", b"vigil:alerts")),
    ],
    ids=[
        "stream-alert-state",
        "delete-alert-state",
        "delete-history",
        "scores-history",
        "list-alert-states",
        "window",
        "alerts-of-a-stream",
        "alerts",
    ],
)
def test_each_store_route_answers_503_when_redis_dies_during_the_request(
    client: TestClient, tripwire: Tripwire, method: str, path: str, needles: tuple[bytes, ...]
) -> None:
    tripwire.arm(*needles)
    response = client.request(method, path)
    assert tripwire.tripped.is_set(), "the request never sent the command the tripwire waits for"
    assert_store_unavailable(response)


StoreCall = Callable[[AlertTracker, ScoreHistory, StreamCatalog], Awaitable[object]]
STORE_CALLS: dict[str, StoreCall] = {
    "AlertTracker.state": lambda a, h, c: a.state(SID),
    "AlertTracker.states": lambda a, h, c: a.states([SID]),
    "AlertTracker.read_events": lambda a, h, c: a.read_events(None, None, 10),
    "AlertTracker.read_events(stream)": lambda a, h, c: a.read_events(None, SID, 10),
    "ScoreHistory.recent": lambda a, h, c: h.recent(SID, 10, ["x"]),
    "StreamCatalog.find": lambda a, h, c: c.find(10),
    "StreamCatalog.summaries": lambda a, h, c: c.summaries([SID]),
    "StreamCatalog.model_of": lambda a, h, c: c.model_of(SID),
    "StreamCatalog.held": lambda a, h, c: c.held(SID),
}


@pytest.mark.parametrize("name", list(STORE_CALLS))
async def test_each_store_method_raises_store_unavailable_on_a_killed_redis(
    redis_proc: RedisProcess, name: str
) -> None:
    redis = Redis.from_url(redis_proc.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    await redis.ping()
    redis_proc.kill()
    stores = (AlertTracker(redis, 60, 1000), ScoreHistory(redis, 32, 60), StreamCatalog(redis))
    try:
        with pytest.raises(StoreUnavailable) as raised:
            await STORE_CALLS[name](*stores)
        assert raised.value.status == 503
    finally:
        await redis.aclose()
