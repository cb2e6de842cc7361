"""The service raises the alerts the reference lifecycle raises from offline scores: with the bundle's own
policy, with a per-model override, with thresholds that follow each stream, in any chunking and across
replicas."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from models.lifecycle import AdaptiveConstants, LevelThresholds, StreamAlertState, advance, stream_thresholds
from models.manifest import AlertPolicy, Manifest
from models.runtime import load_bundle
from service.app import create_app
from service.settings import Settings
from tests.service.conftest import auth, make_settings, points_body
from training.evaluate import score_test_series

ADAPTIVE = {
    "tvnet": {
        "thresholds": "adaptive",
        "adaptive": {"warmup_points": 60, "half_life_points": 30, "min_ratio": 0.25},
    }
}


@pytest.fixture(scope="module")
def series(test_series: np.ndarray) -> np.ndarray:
    out = test_series.copy()
    out[300:330, [2, 9, 20]] += 2.0  # an anomaly long enough to fire
    out[450, [5]] += 40.0  # a spike
    return out


@pytest.fixture(scope="module")
def offline_scores(
    bundle_dir: Path, series: np.ndarray, tmp_path_factory: pytest.TempPathFactory
) -> np.ndarray:
    path = tmp_path_factory.mktemp("policy") / "series.npy"
    np.save(path, series)
    return score_test_series(load_bundle(bundle_dir), path).scores


def reference(manifest: Manifest, policy: AlertPolicy, scores: np.ndarray) -> tuple[list[tuple], dict]:
    """(state, severity, ts, started_ts, escalated) of each event and the level of each scored point."""
    t = manifest.thresholds
    levels = LevelThresholds(t.warning, t.critical, policy, t.baseline)
    index = np.flatnonzero(np.isfinite(scores))
    result = advance(StreamAlertState(), levels, [(float(i), float(scores[i]), "") for i in index])
    names = {"0": "normal", "1": "warning", "2": "critical"}
    events = [(e.state, e.severity, e.ts, e.started_ts, e.escalated) for e in result.events]
    return events, {float(i): names[c] for i, c in zip(index, result.levels, strict=True)}


def stream_through(clients: list[TestClient], stream_id: str, series: np.ndarray, chunk: int) -> tuple:
    levels: dict[float, str] = {}
    for i, offset in enumerate(range(0, len(series), chunk)):
        response = clients[i % len(clients)].post(
            "/score", json=points_body(stream_id, series[offset : offset + chunk], offset)
        )
        assert response.status_code == 200, response.text
        levels.update({p["ts"]: p["level"] for p in response.json()["scores"]})
    events = clients[0].get("/alerts", params={"stream_id": stream_id, "limit": 1000}).json()["events"]
    return [(e["state"], e["severity"], e["ts"], e["started_ts"], e["escalated"]) for e in events], levels


def test_the_service_applies_the_bundles_calibrated_alert_policy(
    client: TestClient, bundle_dir: Path, series: np.ndarray, offline_scores: np.ndarray
) -> None:
    manifest = Manifest.load(bundle_dir)
    assert manifest.alerts is not None  # `vigil train` calibrated it to a false-alert rate
    shown = client.get("/models/tvnet").json()
    assert shown["alert_policy"] == manifest.alerts.model_dump()
    events, levels = stream_through([client], "bundle-policy", series, 50)
    want_events, want_levels = reference(manifest, manifest.alerts, offline_scores)
    assert any(e[0] == "firing" for e in want_events)
    assert events == want_events
    assert levels == want_levels


def test_a_per_model_override_replaces_only_the_fields_it_names(
    models_dir: Path, redis_url: str, clean_redis: object, bundle_dir: Path
) -> None:
    manifest = Manifest.load(bundle_dir)
    assert manifest.alerts is not None
    settings = make_settings(models_dir, redis_url, alerts_by_model=json.loads('{"tvnet": {"m": 17}}'))
    with TestClient(create_app(settings), headers=auth("all")) as client:
        shown = client.get("/models/tvnet").json()["alert_policy"]
    assert shown == {**manifest.alerts.model_dump(), "m": 17}


def test_an_override_that_breaks_the_policy_stops_start_up(models_dir: Path, redis_url: str) -> None:
    settings = make_settings(models_dir, redis_url, alerts_by_model={"tvnet": {"k": 50}})
    with pytest.raises(ValueError, match="k .* must be <= n"), TestClient(create_app(settings)):
        pass


@pytest.mark.parametrize("chunk", [7, 50])
def test_adaptive_thresholds_in_the_service_equal_the_offline_reference_in_any_chunking(
    models_dir: Path,
    redis_url: str,
    clean_redis: object,
    bundle_dir: Path,
    series: np.ndarray,
    offline_scores: np.ndarray,
    chunk: int,
) -> None:
    settings = make_settings(models_dir, redis_url, alerts_by_model=ADAPTIVE)
    with TestClient(create_app(settings), headers=auth("all")) as client:
        policy = AlertPolicy.model_validate(client.get("/models/tvnet").json()["alert_policy"])
        events, levels = stream_through([client], f"adaptive-{chunk}", series, chunk)
    assert policy.thresholds == "adaptive" and policy.adaptive.warmup_points == 60
    want_events, want_levels = reference(Manifest.load(bundle_dir), policy, offline_scores)
    assert events == want_events
    assert levels == want_levels
    fixed_events, _ = reference(
        Manifest.load(bundle_dir), policy.model_copy(update={"thresholds": "fixed"}), offline_scores
    )
    assert want_events != fixed_events  # the thresholds really followed the stream


def test_replicas_share_each_streams_adaptive_thresholds(
    models_dir: Path, redis_url: str, clean_redis: object, series: np.ndarray
) -> None:
    settings: Settings = make_settings(models_dir, redis_url, alerts_by_model=ADAPTIVE)
    with (
        TestClient(create_app(settings), headers=auth("all")) as one,
        TestClient(create_app(settings), headers=auth("all")) as two,
    ):
        single = stream_through([one], "adaptive-single", series, 20)
        replicated = stream_through([one, two], "adaptive-replicated", series, 20)
    assert replicated == single


def test_the_live_view_shows_the_thresholds_a_stream_with_its_own_meets(
    models_dir: Path,
    redis_url: str,
    clean_redis: object,
    bundle_dir: Path,
    series: np.ndarray,
    offline_scores: np.ndarray,
) -> None:
    """With per-stream thresholds the chart's lines are the stream's own, where the reference lifecycle has
    moved them after the same scores, not the model's calibrated ones (which no point is compared with)."""
    settings = make_settings(models_dir, redis_url, alerts_by_model=ADAPTIVE)
    with TestClient(create_app(settings), headers=auth("all")) as client:
        policy = AlertPolicy.model_validate(client.get("/models/tvnet").json()["alert_policy"])
        stream_through([client], "own-levels", series[:400], 50)
        shown = client.get("/streams/own-levels/scores", params={"limit": 5}).json()["thresholds"]
    t = Manifest.load(bundle_dir).thresholds
    levels = LevelThresholds(t.warning, t.critical, policy, t.baseline)
    index = np.flatnonzero(np.isfinite(offline_scores[:400]))
    state = StreamAlertState()
    advance(state, levels, [(float(i), float(offline_scores[i]), "") for i in index])
    warning, critical, exit_level = stream_thresholds(state, levels, AdaptiveConstants.of(levels))
    assert shown["per_stream"] is True and shown["learned_points"] == 60
    assert (shown["warning"], shown["critical"], shown["exit"]) == pytest.approx(
        (warning, critical, exit_level)
    )
    assert shown["calibrated"] == {"warning": t.warning, "critical": t.critical}
    assert shown["warning"] != pytest.approx(t.warning)  # the stream's own moved away from the calibrated
