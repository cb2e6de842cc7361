"""Streaming equals offline scoring, in any chunking, with every scoring option (fitted on validation by
`vigil calibrate` into a real bundle, scored by the service through real ONNX Runtime sessions)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from models.manifest import Manifest
from models.runtime import load_bundle
from service.app import create_app
from tests.service.conftest import auth, make_settings, scores_by_ts, stream
from training.config import CalibrationConfig
from training.evaluate import score_test_series
from training.recalibrate import recalibrate_bundle
from training.score_fit import ScoreOptions

OPTIONS = {
    "standardised": {"standardise": "q99"},
    "smoothed": {"smoothing_alpha": 0.1},
    "top_k": {"aggregation": "top_k", "top_k": 5},
    "max": {"aggregation": "max"},
    "level": {"level_alpha": 0.1},
    "balanced_level": {"smoothing_alpha": 0.1, "level_alpha": 0.1, "balance_level": True},
    "absolute": {"error": "absolute", "smoothing_alpha": 0.1, "level_alpha": 0.1, "balance_level": True},
    "change_level": {"level_alpha": 0.1, "level_baseline_alpha": 0.02, "balance_level": True},
    "two_speeds": {
        "smoothing_alpha": 0.1,
        "fast_smoothing_alpha": 0.3,
        "level_alpha": 0.1,
        "balance_level": True,
    },
    "all": {
        "standardise": "median",
        "smoothing_alpha": 0.2,
        "level_alpha": 0.05,
        "aggregation": "top_k",
        "top_k": 3,
    },
}


@pytest.fixture(scope="module", params=sorted(OPTIONS))
def option_bundle(
    request: pytest.FixtureRequest, bundle_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    models = tmp_path_factory.mktemp(f"options-{request.param}")
    shutil.copytree(bundle_dir, models / "tvnet" / "base")
    out = recalibrate_bundle(
        models / "tvnet" / "base",
        CalibrationConfig(),
        version="v2",
        score=ScoreOptions(**OPTIONS[request.param]),
        threads=2,
    )
    shutil.rmtree(models / "tvnet" / "base")
    if "fast_smoothing_alpha" in OPTIONS[request.param]:
        assert Manifest.load(out).score.fast_smoothing is not None  # fitted and recorded in the manifest
    return out


@pytest.mark.parametrize("chunk", [7, 50])
def test_streaming_equals_offline_scoring_with_every_scoring_option(
    option_bundle: Path,
    redis_url: str,
    clean_redis: object,
    test_series: np.ndarray,
    tmp_path: Path,
    chunk: int,
) -> None:
    manifest = Manifest.load(option_bundle)
    assert (
        manifest.score.sensor_scale
        or manifest.score.smoothing_alpha
        or manifest.score.level
        or (manifest.score.aggregation != "mean")
        or manifest.score.error != "squared"
    )
    np.save(tmp_path / "series.npy", test_series)
    offline = score_test_series(load_bundle(option_bundle), tmp_path / "series.npy").scores
    want = {float(i): float(s) for i, s in enumerate(offline) if np.isfinite(s)}
    settings = make_settings(option_bundle.parents[1], redis_url)
    with TestClient(create_app(settings), headers=auth("all")) as client:
        got = scores_by_ts(stream(client, f"options-{chunk}", test_series, chunk))
    assert sorted(got) == sorted(want)
    np.testing.assert_array_equal([got[t] for t in sorted(want)], [np.float32(want[t]) for t in sorted(want)])
