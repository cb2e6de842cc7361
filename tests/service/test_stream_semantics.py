"""Parity across chunkings and request kinds, idempotent retries, concurrent writers, two replicas."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

import service.rounds as rounds_module
from models.runtime import load_bundle
from models.scoring import normalise, score_windows
from service.app import create_app
from service.codec import BINARY_CONTENT_TYPE, encode_binary, encode_binary_batch
from service.errors import Overloaded
from service.settings import Settings
from service.windows import StreamGeometry
from tests.service.conftest import auth, points_body, scores_by_ts, stream
from training.evaluate import score_test_series


@pytest.fixture(scope="module")
def offline(
    bundle_dir: Path, test_series: np.ndarray, tmp_path_factory: pytest.TempPathFactory
) -> dict[float, float]:
    """`vigil evaluate`'s offline scores of the first 600 test rows, by ts."""
    path = tmp_path_factory.mktemp("offline") / "series.npy"
    np.save(path, test_series)
    scores = score_test_series(load_bundle(bundle_dir), path).scores
    return {float(i): float(s) for i, s in enumerate(scores) if np.isfinite(s)}


def assert_matches(streamed: dict[float, float], offline: dict[float, float]) -> None:
    assert sorted(streamed) == sorted(offline)
    got = np.array([streamed[t] for t in sorted(offline)])
    want = np.array([offline[t] for t in sorted(offline)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("chunk", [7, 500])
def test_parity_under_chunking(
    client: TestClient, test_series: np.ndarray, offline: dict, chunk: int
) -> None:
    assert_matches(scores_by_ts(stream(client, f"chunk-{chunk}", test_series, chunk)), offline)


def test_parity_through_score_batch(client: TestClient, test_series: np.ndarray, offline: dict) -> None:
    """Two streams interleaved in each batch request score exactly like one stream alone."""
    results: dict[str, list[dict]] = {"a": [], "b": []}
    for offset in range(0, len(test_series), 60):
        rows = test_series[offset : offset + 60]
        items = [points_body(sid, rows, offset) for sid in ("a", "b")]
        response = client.post("/score/batch", json={"items": items})
        assert response.status_code == 200, response.text
        for item in response.json()["items"]:
            results[item["stream_id"]].append(item["result"])
    assert_matches(scores_by_ts(results["a"]), offline)
    assert scores_by_ts(results["a"]) == scores_by_ts(results["b"])


def test_a_batch_with_many_items_per_stream_keeps_each_streams_order_and_parity(
    client: TestClient, test_series: np.ndarray, offline: dict
) -> None:
    """Several chunks of each of three streams in one batch (interleaved, with a bad item of a fourth stream
    among them): each stream is scored in order, like streaming its chunks alone, with the same alert events;
    the bad item fails alone (a stream's own items after its failed item fail too: see
    ``test_items_of_a_stream_after_its_failed_item_are_not_stored``)."""
    series = test_series.copy()
    series[420:440, [2, 9, 20]] += 1.5  # an anomaly long enough to fire
    streams = ["many-a", "many-b", "many-c"]
    items: list[dict] = []
    for offset in range(0, len(series), 50):
        for sid in streams:
            items.append(points_body(sid, series[offset : offset + 50], offset))
    items.insert(5, {"stream_id": "many-x", "points": [{"ts": 1e3, "values": [1.0]}]})  # wrong width
    body = client.post("/score/batch", json={"items": items}).json()
    assert body["items"][5]["error"]["status"] == 422
    alone = stream(client, "alone", series, 50)
    for sid in streams:
        results = [i["result"] for i in body["items"] if i.get("stream_id") == sid and "result" in i]
        assert len(results) == len(series) // 50
        assert scores_by_ts(results) == scores_by_ts(alone)
        events = [(e["state"], e["ts"]) for r in results for e in r["alerts"]]
        assert events == [(e["state"], e["ts"]) for r in alone for e in r["alerts"]]
    assert any(e["state"] == "firing" for r in alone for e in r["alerts"])
    before = {t: s for t, s in scores_by_ts(alone).items() if t < 400}
    assert_matches(before, {t: s for t, s in offline.items() if t < 400})


def test_parity_through_the_binary_frame(client: TestClient, test_series: np.ndarray, offline: dict) -> None:
    bodies = []
    for offset in range(0, len(test_series), 45):
        rows = test_series[offset : offset + 45]
        frame = encode_binary("bin", np.arange(offset, offset + len(rows), dtype=np.float64), rows)
        response = client.post("/score", content=frame, headers={"content-type": BINARY_CONTENT_TYPE})
        assert response.status_code == 200, response.text
        bodies.append(response.json())
    assert_matches(scores_by_ts(bodies), offline)


def test_the_binary_batch_frame_scores_like_the_json_batch_and_bad_frames_fail_alone(
    client: TestClient, test_series: np.ndarray, offline: dict
) -> None:
    """Many streams in one VGLB body: each stream scores exactly like streaming it alone (and like the JSON
    batch), several chunks of one stream keep their order, and a malformed frame fails its item only."""
    series = test_series.copy()
    series[420:440, [2, 9, 20]] += 1.5
    results: dict[str, list[dict]] = {"vglb-a": [], "vglb-b": []}
    errors: list[dict] = []
    for offset in range(0, len(series), 100):
        frames = []
        for sid in results:
            for part in (0, 50):  # two chunks of each stream in one body
                rows = series[offset + part : offset + part + 50]
                ts = np.arange(offset + part, offset + part + len(rows), dtype=np.float64)
                frames.append(encode_binary(sid, ts, rows))
        frames.insert(1, encode_binary("vglb-bad", np.arange(3.0), series[:3, :5]))  # 5 of 38 sensors
        frames.append(b"VGL1\x00")  # truncated
        response = client.post(
            "/score/batch", content=encode_binary_batch(frames), headers={"content-type": BINARY_CONTENT_TYPE}
        )
        assert response.status_code == 200, response.text
        items = response.json()["items"]
        assert len(items) == len(frames)
        errors += [items[1]["error"], items[-1]["error"]]
        for item in items[:1] + items[2:-1]:
            results[item["stream_id"]].append(item["result"])
    alone = stream(client, "vglb-alone", series, 50)
    for sid, got in results.items():
        assert scores_by_ts(got) == scores_by_ts(alone), sid
        events = [(e["state"], e["ts"]) for r in got for e in r["alerts"]]
        assert events == [(e["state"], e["ts"]) for r in alone for e in r["alerts"]]
    assert any(e["state"] == "firing" for r in alone for e in r["alerts"])
    assert_matches(
        {t: v for t, v in scores_by_ts(results["vglb-a"]).items() if t < 400},
        {t: v for t, v in offline.items() if t < 400},
    )
    assert all(e["status"] == 422 for e in errors)
    assert errors[0]["detail"] == "points.0.values: 5 values, the model expects 38"  # as in JSON batches
    assert errors[1]["detail"].startswith("items.5.body: truncated")
    assert client.get("/streams/vglb-bad").status_code == 404


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"VGLX\x01\x00\x00\x00", "body: a binary batch must start with b'VGLB'"),
        (b"VGLB\x00\x00\x00\x00", "items: at least one item is required"),
        (b"VGLB\x02\x00\x00\x00\x01\x00\x00\x00A", "body: the batch announces 2 items and ends after 1"),
        (b"VGLB\x01\x00\x00\x00\x09\x00\x00\x00VGL1", "items.0: the frame announces 9 bytes, 4 follow"),
        (b"VGLB\x01\x00\x00\x00\x01\x00\x00\x00Azz", "body: 2 bytes after the last of 1 items"),
    ],
)
def test_a_broken_binary_batch_is_refused_whole_and_names_where(
    client: TestClient, body: bytes, detail: str
) -> None:
    response = client.post("/score/batch", content=body, headers={"content-type": BINARY_CONTENT_TYPE})
    assert response.status_code == 422 and response.json()["detail"] == detail


def test_a_batch_item_with_bad_input_fails_alone(client: TestClient, test_series: np.ndarray) -> None:
    good = points_body("good", test_series[:3], 0)
    bad = points_body("worse", test_series[:3], 0)
    bad["points"][2]["values"] = [1.0, 2.0]
    broken = {"stream_id": "x y", "points": []}
    response = client.post("/score/batch", json={"items": [good, bad, broken]})
    assert response.status_code == 200
    items = response.json()["items"]
    assert items[0]["result"]["accepted"] == 3
    assert items[1]["error"]["code"] == "invalid_request" and items[1]["error"]["detail"].startswith(
        "points.2.values"
    )
    assert items[2]["error"]["detail"].startswith("items.2.")
    assert client.get("/streams/worse").status_code == 404


def test_items_of_a_stream_after_its_failed_item_are_not_stored(
    client: TestClient, test_series: np.ndarray
) -> None:
    """Stored, a later item's newer points would make the failed item's points stale for good: its retry
    could never be stored. So the items of that stream after it fail too, with its status, and nothing of the
    stream is stored; other streams go on. A malformed item that names a valid stream counts as its item."""
    bad_width = points_body("order-a", test_series[:3], 0)
    bad_width["points"][1]["values"] = [1.0]
    unknown_model = {**points_body("order-m", test_series[:3], 0), "model": "no-such-model"}
    items = [
        bad_width,
        points_body("order-b", test_series[:3], 0),
        points_body("order-a", test_series[3:6], 3),
        {"stream_id": "order-c", "points": "none"},
        points_body("order-c", test_series[:3], 0),
        unknown_model,
        points_body("order-m", test_series[3:6], 3),
        points_body("order-a", test_series[6:9], 6),
    ]
    response = client.post("/score/batch", json={"items": items})
    assert response.status_code == 200, response.text
    got = response.json()["items"]
    assert got[1]["result"]["accepted"] == 3
    firsts = {"order-a": (0, 422), "order-c": (3, 422), "order-m": (5, 404)}
    assert got[3]["stream_id"] == "order-c" and got[3]["error"]["detail"].startswith("items.3.points")
    for index, stream_id in [(2, "order-a"), (4, "order-c"), (6, "order-m"), (7, "order-a")]:
        first, status = firsts[stream_id]
        assert got[index]["stream_id"] == stream_id
        error = got[index]["error"]
        assert (error["code"], error["status"]) == ("earlier_item_failed", status), got[index]
        assert error["detail"].startswith(
            f"not stored: item {first} of stream {stream_id!r} failed before it"
        )
    for stream_id in firsts:
        assert client.get(f"/streams/{stream_id}").status_code == 404
    # The client fixes the first item and sends the stream's items again, in order: every point is stored.
    again = [points_body("order-a", test_series[start : start + 3], start) for start in (0, 3, 6)]
    retried = client.post("/score/batch", json={"items": again}).json()["items"]
    assert [item["result"]["accepted"] for item in retried] == [3, 3, 3]

    frames = [
        encode_binary("order-v", np.arange(3.0), test_series[:3, :5]),  # 5 of 38 sensors
        encode_binary("order-v", np.arange(3.0, 6.0), test_series[3:6]),
        b"VGL1\x07\x00order-w\xff",  # the stream id is read, the rest is broken
        encode_binary("order-w", np.arange(3.0), test_series[:3]),
    ]
    binary = client.post(
        "/score/batch", content=encode_binary_batch(frames), headers={"content-type": BINARY_CONTENT_TYPE}
    ).json()["items"]
    assert [item["stream_id"] for item in binary] == ["order-v", "order-v", "order-w", "order-w"]
    assert [item["error"]["code"] for item in binary] == ["invalid_request", "earlier_item_failed"] * 2


def test_a_failure_on_windows_another_request_made_due_does_not_fail_a_request_already_scored(
    client: TestClient, test_series: np.ndarray, offline: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a request holds its stream's claim, another request stores points that complete a window: the
    holder's commit claims it and scores it in a second pass. If that pass's inference is refused (a full
    queue), the holder's own points are already scored, committed and in the alert state: it answers them (a
    503 would make its retry find them all duplicates, and their scores never answered), and the other
    request's window goes to the stream's next request. Real Redis and ONNX Runtime; only the queue's refusal
    of the second submission is injected."""
    components = client.app.state.components
    handle = components.models.get(None)
    m = handle.manifest
    geometry = StreamGeometry(m.name, m.window_length, m.stride, m.n_features)
    real_submit = handle.batcher.submit
    submissions = 0

    async def submit(windows: np.ndarray) -> object:
        nonlocal submissions
        submissions += 1
        if submissions == 1:  # another request stores 10 points while this one holds the claim
            other = await components.windows.append(
                "second-pass", geometry, np.arange(100.0, 110.0), test_series[100:110], "other-request"
            )
            assert other.windows == []  # stored, not claimed: the holder's commit picks its window up
            return await real_submit(windows)
        raise Overloaded(f"model {m.name!r}: inference queue full")

    monkeypatch.setattr(handle.batcher, "submit", submit)
    response = client.post("/score", json=points_body("second-pass", test_series[:100], 0))
    monkeypatch.undo()
    assert submissions == 2
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["accepted"], body["pending"]) == (100, 0)
    first = scores_by_ts([body])
    assert sorted(first) == [float(t) for t in range(100)]
    # The stream's next request (here a retry of the same points: all duplicates) scores the other request's
    # window, and nothing of the first 100 points again.
    retry = client.post("/score", json=points_body("second-pass", test_series[:100], 0)).json()
    assert retry["accepted"] == 0 and sorted(scores_by_ts([retry])) == [float(t) for t in range(100, 110)]
    rest = stream(client, "second-pass", test_series[110:], 50, start=110)
    scored = [first, scores_by_ts([retry]), scores_by_ts(rest)]
    assert sum(map(len, scored)) == len(offline)  # each point answered once
    assert_matches({t: v for part in scored for t, v in part.items()}, offline)


def test_scores_whose_commit_failed_are_answered_as_pending_and_again_by_the_next_request(
    client: TestClient, test_series: np.ndarray, offline: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The round trip after inference (alerts, history, commit) fails (the connection drops): the request
    answers its scores, with the model's levels, and counts their points as pending, since nothing recorded
    them; the stream's next request scores them again, the same, with the alert update: at least once, and the
    answer says which. Real Redis and ONNX Runtime; only the lost connection is injected."""
    real_execute = rounds_module.RoundTrip.execute
    trips = 0

    async def execute(self: rounds_module.RoundTrip) -> list[object]:
        nonlocal trips
        trips += 1
        if trips == 2:  # the first is the append
            raise redis.ConnectionError("connection lost (injected)")
        return await real_execute(self)

    monkeypatch.setattr(rounds_module.RoundTrip, "execute", execute)
    first = client.post("/score", json=points_body("uncommitted", test_series[:100], 0)).json()
    monkeypatch.undo()
    assert trips >= 2
    assert (first["accepted"], first["pending"]) == (100, 100)
    assert sorted(scores_by_ts([first])) == [float(t) for t in range(100)]
    after = client.post("/score", json=points_body("uncommitted", test_series[100:110], 100)).json()
    assert after["pending"] == 0
    assert sorted(scores_by_ts([after])) == [float(t) for t in range(110)]
    again = scores_by_ts([after])
    assert all(again[t] == s for t, s in scores_by_ts([first]).items())
    assert_matches({t: s for t, s in again.items()}, {t: s for t, s in offline.items() if t < 110})


def test_scripts_missing_from_redis_in_part_score_each_window_once(
    client: TestClient, test_series: np.ndarray, offline: dict, clean_redis: redis.Redis
) -> None:
    """After a Redis restart that another replica already used, some scripts are loaded and some not: the
    alert update misses its script while the commit after it (which checks that update) runs. The commit
    must be sent again with the update, or the windows would be scored twice."""
    from service.window_scripts import COMMIT_LUA

    clean_redis.script_flush()
    clean_redis.script_load(COMMIT_LUA)
    assert_matches(scores_by_ts(stream(client, "half-loaded", test_series, 7)), offline)


def test_batch_items_of_one_model_are_checked_together_and_each_bad_one_still_fails_alone(
    client: TestClient, test_series: np.ndarray
) -> None:
    # Every item has the model's width, so the batch takes the path that checks all points at once; each kind
    # of bad value (the binary frame carries NaN and infinities, JSON cannot) must still fail only its own
    # item, named by its own field.
    rows = [test_series[10 * i : 10 * i + 3].copy() for i in range(7)]
    ts = [np.arange(10.0 * i, 10.0 * i + 3) for i in range(7)]
    rows[1][1, 4] = np.nan
    rows[2][0, 7] = np.inf
    ts[3][2] = ts[3][0]  # not increasing within the request
    rows[4][0, 0] = 3e38  # finite, but beyond what the model can score (Z_MAX training scales)
    ts[5][2] = 1e20  # beyond any epoch
    ts[6] = np.arange(3.0)  # starts before item 5's ts: a step between two requests is not an error
    frames = [encode_binary(f"v{i}", ts[i], rows[i]) for i in range(7)]
    response = client.post(
        "/score/batch", content=encode_binary_batch(frames), headers={"content-type": BINARY_CONTENT_TYPE}
    )
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert items[0]["result"]["accepted"] == 3 and items[6]["result"]["accepted"] == 3
    expected = ["points.1.values", "points.0.values", "points.2.ts", "points.0.values", "points.2.ts"]
    for i, field in enumerate(expected, start=1):
        assert items[i]["error"]["detail"].startswith(field), items[i]
        assert client.get(f"/streams/v{i}").status_code == 404


def test_stateless_window_scores_every_row_like_the_offline_scoring(
    client: TestClient, bundle_dir: Path, test_series: np.ndarray
) -> None:
    bundle = load_bundle(bundle_dir)
    window = test_series[200:300]
    response = client.post("/score", json={"window": window.tolist()})
    assert response.status_code == 200, response.text
    body = response.json()
    z = normalise(window, bundle.manifest.normalisation)[None]
    expected = score_windows(z, bundle.run(z), bundle.manifest.score).scores[0]
    np.testing.assert_allclose([s["score"] for s in body["scores"]], expected, rtol=1e-5, atol=1e-7)
    assert [s["ts"] for s in body["scores"]] == list(range(100))
    assert client.get("/streams").json()["streams"] == []  # a stateless window leaves no stream behind


def test_stateless_window_with_the_wrong_length_is_a_422(client: TestClient, test_series: np.ndarray) -> None:
    response = client.post("/score", json={"window": test_series[:99].tolist()})
    assert response.status_code == 422 and response.json()["detail"].startswith("window")


def test_retrying_a_request_appends_nothing_twice(client: TestClient, test_series: np.ndarray) -> None:
    first = stream(client, "retry", test_series[:150], 150)[0]
    again = client.post("/score", json=points_body("retry", test_series[:150], 0)).json()
    assert first["accepted"] == 150 and again["accepted"] == 0
    assert {d["reason"] for d in again["dropped"]} == {
        "duplicate",
        "stale",
    }  # only the last 100 are still held
    assert again["scores"] == []
    assert client.get("/streams/retry").json()["points_total"] == 150


def test_concurrent_writers_on_different_streams_match_offline(
    client: TestClient, test_series: np.ndarray, offline: dict
) -> None:
    with ThreadPoolExecutor(4) as pool:
        bodies = list(pool.map(lambda i: stream(client, f"conc-{i}", test_series, 25), range(4)))
    for result in bodies:
        assert_matches(scores_by_ts(result), offline)


def test_concurrent_writers_on_one_stream_score_each_point_once(
    client: TestClient, test_series: np.ndarray
) -> None:
    """Two writers race on one stream with interleaved timestamps: every point is accepted or dropped,
    none twice, and the stream holds a strictly increasing ts sequence."""
    chunks = [points_body("shared", test_series[o : o + 10], o) for o in range(0, 400, 10)]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda b: client.post("/score", json=b).json(), chunks))
    accepted = sum(r["accepted"] for r in results)
    dropped = sum(len(r["dropped"]) for r in results)
    assert accepted + dropped == 400
    info = client.get("/streams/shared").json()
    assert info["points_total"] == accepted and info["last_ts"] == 399.0
    scored = [s["ts"] for r in results for s in r["scores"]]
    assert len(scored) == len(set(scored))


def test_two_app_instances_continue_one_stream_with_one_alert_lifecycle(
    settings: Settings, test_series: np.ndarray, offline: dict
) -> None:
    """Replicas alternating on one stream give the scores and the alert lifecycle of a single instance."""
    series = test_series.copy()
    series[420:440, [2, 9, 20]] += 1.5  # an anomaly long enough to fire

    def run(stream_id: str, replicas: list[TestClient]) -> tuple[list[dict], list[dict]]:
        bodies = []
        for i, offset in enumerate(range(0, len(series), 20)):
            replica = replicas[i % len(replicas)]
            response = replica.post(
                "/score", json=points_body(stream_id, series[offset : offset + 20], offset)
            )
            assert response.status_code == 200, response.text
            bodies.append(response.json())
        events = replicas[0].get("/alerts", params={"stream_id": stream_id, "limit": 1000}).json()["events"]
        return bodies, events

    with (
        TestClient(create_app(settings), headers=auth("all")) as one,
        TestClient(create_app(settings), headers=auth("all")) as two,
    ):
        single_bodies, single_events = run("single", [one])
        replicated_bodies, replicated_events = run("replicated", [one, two])

    assert scores_by_ts(replicated_bodies) == scores_by_ts(single_bodies)
    before = {t: s for t, s in scores_by_ts(replicated_bodies).items() if t < 400}
    assert_matches(before, {t: s for t, s in offline.items() if t < 400})

    def lifecycle(events: list[dict]) -> list[tuple]:
        return [(e["state"], e["severity"], e["ts"], e["started_ts"], e["escalated"]) for e in events]

    assert lifecycle(replicated_events) == lifecycle(single_events)
    assert any(e["state"] == "firing" and e["ts"] >= 420 for e in replicated_events)  # the anomaly fired
    returned = [e["id"] for b in replicated_bodies for e in b["alerts"]]
    assert returned == [
        e["id"] for e in replicated_events
    ]  # each event returned once, by the replica that caused it
