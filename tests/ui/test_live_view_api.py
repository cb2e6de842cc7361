"""The live view's read routes: the stream list, recent scores, the window with its reconstruction, the shell."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from models.manifest import Manifest
from models.scoring import ModelOutput, sensor_terms
from service.routes.ui import STATIC_DIR
from service.settings import Settings
from tests.conftest import free_port
from tests.service.conftest import auth, scores_by_ts, stream

SENSOR = 17  # feature "sensor_18"
ANOMALY = slice(300, 331)
NO_KEY = {"Authorization": ""}  # the client's default header would otherwise authenticate


def with_anomaly(series: np.ndarray) -> np.ndarray:
    out = series.copy()
    out[ANOMALY, SENSOR] += 3.0
    return out


def test_stream_list_shows_live_streams_with_model_points_and_alert_state_firing_first(
    client: TestClient, test_series: np.ndarray
) -> None:
    stream(client, "a-quiet", test_series[:120], chunk=60)
    bodies = stream(client, "z-spiky", with_anomaly(test_series)[:340], chunk=85)
    assert any(e["state"] == "firing" for b in bodies for e in b["alerts"])
    body = client.get("/streams").json()
    assert body["truncated"] is False
    assert [s["stream_id"] for s in body["streams"]] == ["z-spiky", "a-quiet"]
    spiky, quiet = body["streams"]
    assert spiky["alert"]["state"] == "firing" and spiky["alert"]["severity"] in ("warning", "critical")
    assert quiet["alert"]["state"] != "firing"
    assert (spiky["model"], spiky["points_total"], spiky["last_ts"]) == ("tvnet", 340, 339.0)
    assert (quiet["model"], quiet["points_total"], quiet["last_ts"]) == ("tvnet", 120, 119.0)
    client.delete("/streams/a-quiet")
    assert [s["stream_id"] for s in client.get("/streams").json()["streams"]] == ["z-spiky"]


def test_deleting_a_stream_removes_every_key_it_owns_and_nothing_else(
    client: TestClient, test_series: np.ndarray, clean_redis: redis.Redis
) -> None:
    stream(client, "gone", with_anomaly(test_series)[:340], chunk=85)
    stream(client, "kept", test_series[:120], chunk=60)
    owned = sorted(k.decode().rsplit(":", 1)[1] for k in clean_redis.scan_iter("vigil:{gone}:*"))
    assert owned == ["a", "m", "r", "w"]  # alert state, meta, score history, window
    assert client.delete("/streams/gone").status_code in (200, 204)
    assert list(clean_redis.scan_iter("vigil:{gone}:*")) == []
    assert sorted(k.decode().rsplit(":", 1)[1] for k in clean_redis.scan_iter("vigil:{kept}:*")) == owned


def test_stream_list_is_bounded_by_limit(client: TestClient, test_series: np.ndarray) -> None:
    for name in ("s-1", "s-2", "s-3"):
        stream(client, name, test_series[:5], chunk=5)
    two = client.get("/streams", params={"limit": 2}).json()
    assert len(two["streams"]) == 2 and two["truncated"] is True
    three = client.get("/streams", params={"limit": 3}).json()
    assert [s["stream_id"] for s in three["streams"]] == ["s-1", "s-2", "s-3"] and three["truncated"] is False
    for limit in (0, 1001):
        assert client.get("/streams", params={"limit": limit}).status_code == 422


def test_scores_are_the_streamed_scores_with_the_model_thresholds(
    client: TestClient, test_series: np.ndarray
) -> None:
    bodies = stream(client, "s", test_series[:300], chunk=50)
    streamed = scores_by_ts(bodies)
    served = {p["ts"]: p for b in bodies for p in b["scores"]}
    body = client.get("/streams/s/scores", params={"limit": 20}).json()
    assert [p["ts"] for p in body["scores"]] == [float(t) for t in range(280, 300)]
    assert [p["score"] for p in body["scores"]] == [streamed[float(t)] for t in range(280, 300)]
    assert all(p["contributions"] and p["level"] in ("normal", "warning", "critical") for p in body["scores"])
    model = client.get("/models/tvnet").json()
    calibrated = {"warning": model["thresholds"]["warning"], "critical": model["thresholds"]["critical"]}
    exit_ratio = model["alert_policy"]["exit_ratio"]
    assert body["thresholds"] == {
        **calibrated,
        "exit": calibrated["warning"] * exit_ratio,
        "per_stream": False,
        "learned_points": 0,
        "calibrated": calibrated,
    }
    assert (body["model"], body["version"]) == ("tvnet", "test")
    everything = client.get("/streams/s/scores", params={"limit": 10_000}).json()["scores"]
    kept = Settings.model_fields["history_points"].default  # the packed history keeps the newest few
    assert [p["ts"] for p in everything] == [float(t) for t in range(300 - kept, 300)]
    for point in everything:  # level, sensors and shares (to 4 decimals) survive the packed record
        original = served[point["ts"]]
        assert point["level"] == original["level"]
        assert [c["sensor"] for c in point["contributions"]] == [
            c["sensor"] for c in original["contributions"]
        ]
        assert [c["share"] for c in point["contributions"]] == pytest.approx(
            [c["share"] for c in original["contributions"]], abs=1e-4
        )
    for limit in (0, 10_001):
        assert client.get("/streams/s/scores", params={"limit": limit}).status_code == 422


def test_window_reconstructs_the_held_points_in_raw_units_and_ranks_the_injected_sensor_top(
    client: TestClient, test_series: np.ndarray, bundle_dir: Path
) -> None:
    series = with_anomaly(test_series)[:400]
    streamed = scores_by_ts(stream(client, "w", series, chunk=100))
    body = client.get("/streams/w/window", params={"top": 3}).json()
    assert body["reconstructed"] is True and body["window_length"] == 100
    assert body["ts"] == [float(t) for t in range(300, 400)]
    top = body["sensors"]
    assert [s["sensor"] for s in top][0] == "sensor_18" and top[0]["index"] == SENSOR
    assert top[0]["share"] > 0.5 and len(top) == 3
    assert top[0]["share"] >= top[1]["share"] >= top[2]["share"]
    np.testing.assert_allclose(top[0]["values"], series[300:400, SENSOR].astype(np.float32))
    # The window ends where the last streamed window ended: its newest stride points got these very scores.
    np.testing.assert_allclose(body["scores"][-10:], [streamed[float(t)] for t in range(390, 400)], rtol=1e-5)
    # Raw units: the sensor's scoring term computed from x and x̂ normalised again (its squared error, plus the
    # level term and the smoothing the bundle's score definition asks for) is the point's score × C × the
    # sensor's share; that holds only when x̂ was shifted back by the sensor's mean and scaled by its scale.
    manifest = Manifest.load(bundle_dir)
    scores = np.asarray(body["scores"])
    shape = (1, manifest.window_length, manifest.n_features)
    for s in top:
        i = s["index"]
        mean, scale = manifest.normalisation.mean[i], manifest.normalisation.scale[i]
        values, reconstruction = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
        values[0, :, i] = (np.asarray(s["values"]) - mean) / scale
        reconstruction[0, :, i] = (np.asarray(s["reconstruction"]) - mean) / scale
        terms = sensor_terms(values, ModelOutput(reconstruction), manifest.score)[0, :, i]
        expected = scores * manifest.n_features * np.asarray(s["contributions"])
        np.testing.assert_allclose(terms, expected, rtol=2e-3, atol=1e-5)


def test_window_of_a_young_stream_has_values_and_no_reconstruction(
    client: TestClient, test_series: np.ndarray
) -> None:
    stream(client, "young", test_series[:30], chunk=30)
    body = client.get("/streams/young/window").json()
    assert body["reconstructed"] is False and body["scores"] is None
    assert len(body["ts"]) == 30 and [s["sensor"] for s in body["sensors"]] == [
        f"sensor_{i}" for i in range(1, 6)
    ]
    np.testing.assert_allclose(body["sensors"][0]["values"], test_series[:30, 0].astype(np.float32))
    assert body["sensors"][0]["reconstruction"] is None
    for top in (0, 65):
        assert client.get("/streams/young/window", params={"top": top}).status_code == 422


def test_stream_routes_answer_404_for_an_unknown_stream_and_422_for_a_bad_id(client: TestClient) -> None:
    for route in ("scores", "window"):
        response = client.get(f"/streams/never-seen/{route}")
        assert response.status_code == 404 and response.json()["code"] == "unknown_stream"
        assert client.get(f"/streams/bad%20id/{route}").status_code == 422


def test_read_routes_need_a_read_key(client: TestClient, test_series: np.ndarray) -> None:
    stream(client, "s", test_series[:120], chunk=120)
    for path in ("/streams", "/streams/s/scores", "/streams/s/window"):
        assert client.get(path, headers=NO_KEY).status_code == 401, path
        assert client.get(path, headers=auth("scorer")).status_code == 403, path
        response = client.get(path, headers=auth("reader"))
        assert response.status_code == 200, path
        assert response.headers["cache-control"] == "no-store"


def test_the_shell_is_open_holds_no_data_and_runs_only_its_own_scripts(
    client: TestClient, test_series: np.ndarray
) -> None:
    stream(client, "private-stream", test_series[:10], chunk=10)
    page = client.get("/ui", headers=NO_KEY)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "private-stream" not in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    for asset in re.findall(r'(?:src|href)="(ui/static/[^"]+)"', page.text):
        response = client.get(f"/{asset}", headers=NO_KEY)
        assert response.status_code == 200, asset
    assert "/ui" not in client.get("/openapi.json").json()["paths"]


def test_the_vendored_chart_library_matches_its_recorded_version_and_license() -> None:
    vendor = STATIC_DIR / "vendor"
    banner = (vendor / "uPlot.iife.min.js").read_text()[:200]
    version = re.search(r"\(v(\d+\.\d+\.\d+)\)", banner)
    assert version is not None
    assert f"`uplot` {version.group(1)}" in (STATIC_DIR / "README.md").read_text()
    assert "MIT License" in (vendor / "uPlot.LICENSE").read_text()


@pytest.mark.parametrize("path", ["/streams", "/streams/s/scores", "/streams/s/window"])
def test_read_routes_say_store_unavailable_when_redis_is_down(client: TestClient, path: str) -> None:
    components = client.app.state.components
    real = components.redis
    broken = type(real).from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.2)
    components.redis = broken
    try:
        response = client.get(path)
    finally:
        components.redis = real
    assert response.status_code == 503 and response.json()["code"] == "store_unavailable"
