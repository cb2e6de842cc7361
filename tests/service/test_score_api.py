"""POST /score end to end: real Redis, real ONNX Runtime, a real exported TVNet."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from models.runtime import load_bundle
from tests.service.conftest import scores_by_ts, stream
from training.evaluate import score_test_series


def offline_scores(bundle_dir: Path, series: np.ndarray, tmp_path: Path) -> np.ndarray:
    """What `vigil evaluate` computes for the same series."""
    np.save(tmp_path / "series.npy", series)
    return score_test_series(load_bundle(bundle_dir), tmp_path / "series.npy").scores


@pytest.mark.parametrize("chunk", [1, 37])
def test_score_streaming_in_chunks_matches_offline_scoring(
    client: TestClient, bundle_dir: Path, test_series: np.ndarray, chunk: int, tmp_path: Path
) -> None:
    series = test_series[:400]
    streamed = scores_by_ts(stream(client, f"parity-{chunk}", series, chunk))
    expected = offline_scores(bundle_dir, series, tmp_path)
    scored = np.flatnonzero(np.isfinite(expected))
    assert sorted(streamed) == [float(i) for i in scored]  # every point reached by a window, exactly once
    got = np.array([streamed[float(i)] for i in scored])
    np.testing.assert_allclose(got, expected[scored], rtol=1e-5, atol=1e-7)


def test_score_reports_pending_points_until_their_window_arrives(
    client: TestClient, test_series: np.ndarray
) -> None:
    first = stream(client, "pending", test_series[:99], 99)[0]
    assert first["accepted"] == 99 and first["pending"] == 99 and first["scores"] == []
    second = stream(client, "pending", test_series[99:105], 6, start=99)[0]
    assert second["pending"] == 5  # window ends at 99, the next at 109 (stride 10)
    assert [s["ts"] for s in second["scores"]] == [float(i) for i in range(100)]


def test_injected_spike_scores_above_the_warning_threshold(
    client: TestClient, bundle_dir: Path, test_series: np.ndarray
) -> None:
    from models.manifest import Manifest

    manifest = Manifest.load(bundle_dir)
    series = test_series[:300].copy()
    clean = scores_by_ts(stream(client, "clean", series, 50))
    series[250, [3, 8, 17]] += 1.0  # a jump of the full min-max range on three sensors
    spiked = scores_by_ts(stream(client, "spiked", series, 50))
    assert clean[250.0] < manifest.thresholds.warning
    assert spiked[250.0] >= manifest.thresholds.warning


def test_duplicate_and_stale_points_are_dropped_and_reported(
    client: TestClient, test_series: np.ndarray
) -> None:
    stream(client, "dups", test_series[:20], 20)
    points = [{"ts": float(t), "values": test_series[t].tolist()} for t in (5, 19, 20)]
    points[0]["ts"] = 4.5  # never seen and older than the last ts: stale
    body = client.post("/score", json={"stream_id": "dups", "points": points}).json()
    assert body["accepted"] == 1
    assert body["dropped"] == [{"ts": 4.5, "reason": "stale"}, {"ts": 19.0, "reason": "duplicate"}]
    info = client.get("/streams/dups").json()
    assert info["points_total"] == 21 and info["last_ts"] == 20.0


def test_metrics_count_the_points_scored(client: TestClient, test_series: np.ndarray) -> None:
    bodies = stream(client, "metrics", test_series[:250], 25)
    n_scored = sum(len(b["scores"]) for b in bodies)
    assert n_scored == 250  # stride 10 divides 250 - 100
    text = client.get("/metrics").text
    scored = re.search(r'^vigil_points_scored_total\{model="tvnet"\} (\S+)$', text, re.M)
    assert scored is not None and float(scored.group(1)) == n_scored
    received = re.search(r'^vigil_points_received_total\{model="tvnet"\} (\S+)$', text, re.M)
    assert received is not None and float(received.group(1)) == 250
    requests = re.search(
        r'^vigil_requests_total\{method="POST",route="/score",status="200"\} (\S+)$', text, re.M
    )
    assert requests is not None and float(requests.group(1)) == len(bodies)
    assert re.search(r'^vigil_batch_size_windows_count\{model="tvnet"\} [1-9]', text, re.M)


def test_readyz_names_the_provider_and_models(client: TestClient) -> None:
    body = client.get("/readyz").json()
    assert body["ready"] is True and body["redis"] is True
    assert body["models"]["tvnet"]["provider"] == "cpu"


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda b: b["points"][0].update(values=[0.1] * 5), "points.0.values"),
        (lambda b: b["points"][1].update(values=[float("nan")] + [0.1] * 37), "points.1.values"),
        (lambda b: b["points"][1].update(ts=0.0), "points.1.ts"),
        (lambda b: b.update(points=[]), "points"),
        (lambda b: b.update(stream_id="a/b"), "stream_id"),
        (lambda b: b.update(stream_id="x" * 129), "stream_id"),
        (lambda b: b["points"][0].update(values="abc"), "points.0.values"),
    ],
)
def test_bad_input_is_a_422_naming_the_field_and_appends_nothing(
    client: TestClient, test_series: np.ndarray, mutate, field: str
) -> None:
    body = {
        "stream_id": "bad",
        "points": [{"ts": float(i), "values": test_series[i].tolist()} for i in range(3)],
    }
    mutate(body)
    response = client.post("/score", content=_json(body), headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "invalid_request"
    assert response.json()["detail"].startswith(field)
    assert client.get("/streams/bad").status_code == 404


def test_unknown_model_is_a_404(client: TestClient, test_series: np.ndarray) -> None:
    body = {"stream_id": "s", "model": "nope", "points": [{"ts": 1.0, "values": test_series[0].tolist()}]}
    response = client.post("/score", json=body)
    assert response.status_code == 404 and response.json()["code"] == "unknown_model"


def test_malformed_json_is_a_422(client: TestClient) -> None:
    response = client.post("/score", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["code"] == "invalid_request"


def _json(body: dict) -> str:
    import json

    return json.dumps(body, allow_nan=True)
