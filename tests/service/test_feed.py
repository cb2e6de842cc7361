"""Alert events: GET /alerts and the WebSocket feed, resumable with no loss and no repeat."""

from __future__ import annotations

import numpy as np
from fastapi.testclient import TestClient

from tests.service.conftest import points_body


def anomalous(series: np.ndarray, start: int, stop: int) -> np.ndarray:
    out = series.copy()
    out[start:stop, [2, 9, 20]] += 2.0
    return out


def push(client: TestClient, stream_id: str, series: np.ndarray, start: int, stop: int) -> list[dict]:
    events = []
    for offset in range(start, stop, 25):
        body = points_body(stream_id, series[offset : min(offset + 25, stop)], offset)
        response = client.post("/score", json=body)
        assert response.status_code == 200, response.text
        events.extend(response.json()["alerts"])
    return events


def all_events(client: TestClient, stream_id: str | None = None) -> list[dict]:
    params = {"limit": 1000, **({"stream_id": stream_id} if stream_id else {})}
    return client.get("/alerts", params=params).json()["events"]


def test_alerts_can_be_paged_with_since(client: TestClient, test_series: np.ndarray) -> None:
    series = anomalous(test_series, 300, 330)
    push(client, "paged", series, 0, 600)
    everything = all_events(client)
    assert len(everything) >= 2
    first = client.get("/alerts", params={"limit": 1}).json()
    rest = client.get("/alerts", params={"since": first["last_id"], "limit": 1000}).json()["events"]
    assert first["events"] + rest == everything


def test_websocket_resume_after_a_disconnect_loses_and_repeats_nothing(
    client: TestClient, test_series: np.ndarray
) -> None:
    series = anomalous(test_series, 300, 330)
    series = anomalous(series, 480, 510)
    push(client, "ws", series, 0, 400)  # the first anomaly's events exist before anyone listens
    before = all_events(client, "ws")
    assert before, "the injected anomaly must raise events"
    received: list[dict] = []
    with client.websocket_connect("/ws/alerts?since=0-0&stream_id=ws") as ws:
        for _ in range(len(before)):
            received.append(ws.receive_json())
    last_id = received[-1]["id"]
    push(client, "ws", series, 400, 600)  # more events while disconnected
    after = all_events(client, "ws")
    assert len(after) > len(before)
    with client.websocket_connect(f"/ws/alerts?since={last_id}&stream_id=ws") as ws:
        for _ in range(len(after) - len(before)):
            received.append(ws.receive_json())
        # A live event after the catch-up arrives next: nothing from the catch-up is sent twice.
        tail = test_series[:200].copy()
        tail[150:180] += 5.0  # ts 750..779: every sensor far off
        fresh = np.concatenate([test_series, tail])
        live = push(client, "ws", fresh, 600, 800)
        assert live, f"a fresh anomaly must raise a live event; state: {client.get('/streams/ws').json()}"
        assert ws.receive_json()["id"] == live[0]["id"]
    assert [e["id"] for e in received] == [e["id"] for e in after]
    assert received == after


def test_websocket_filters_by_stream(client: TestClient, test_series: np.ndarray) -> None:
    series = anomalous(test_series, 300, 330)
    push(client, "other", series, 0, 400)
    push(client, "mine", series, 0, 400)
    mine = all_events(client, "mine")
    with client.websocket_connect("/ws/alerts?since=0-0&stream_id=mine") as ws:
        got = [ws.receive_json() for _ in mine]
    assert {e["stream_id"] for e in got} == {"mine"} and got == mine
