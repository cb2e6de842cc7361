"""The SMD fleet backfilled into a real Prometheus: ``vigil train --prometheus`` over the training range gives the
model that training on the files gives (same normalisation, same graph, same thresholds), and ``vigil backtest``
over the test range scores every machine as ``vigil evaluate`` scores its test file."""

from __future__ import annotations

import csv
import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from models.manifest import Manifest
from models.runtime import load_bundle
from tests.sources.conftest import N_TEST, SENSORS, STEP_S, PrometheusProcess, SMDBundles, SMDFleet
from training.cli import main
from training.evaluate import score_test_series

FLOAT32_TOLERANCE = {"rtol": 1e-5, "atol": 1e-6}


def read_scores(path: Path) -> dict[str, dict[float, float]]:
    """scores.csv of a backtest: stream -> ts -> score."""
    out: dict[str, dict[float, float]] = {}
    with path.open() as handle:
        for row in csv.DictReader(handle):
            out.setdefault(row["stream"], {})[float(row["ts"])] = float(row["score"])
    return out


def test_training_from_prometheus_gives_the_model_of_the_files(
    smd_bundles: SMDBundles, figures: Callable[..., None]
) -> None:
    files = Manifest.load(smd_bundles.from_files)
    prom = Manifest.load(smd_bundles.from_prometheus)
    assert prom.normalisation == files.normalisation  # bit for bit: the same float64 values reached both
    assert prom.onnx.sha256 == files.onnx.sha256  # same seed, same windows: the same trained graph
    assert prom.thresholds == files.thresholds and prom.alerts == files.alerts and prom.score == files.score
    assert prom.training.n_train_rows == files.training.n_train_rows == 2 * 800
    assert prom.feature_names == SENSORS
    assert prom.source is not None and files.source is None
    assert (
        prom.source.feature_names == SENSORS and prom.source.by == "instance" and prom.source.step_s == STEP_S
    )
    assert "machine-a@" in prom.training.data_path and "machine-b@" in prom.training.data_path
    mean_diff = max(
        abs(a - b) for a, b in zip(prom.normalisation.mean, files.normalisation.mean, strict=True)
    )
    figures(
        normalisation_max_abs_diff=mean_diff,
        same_onnx_sha256=prom.onnx.sha256 == files.onnx.sha256,
        warning=prom.thresholds.warning,
        critical=prom.thresholds.critical,
    )


def test_backtest_scores_equal_offline_evaluation_of_the_files(
    smd_fleet: SMDFleet,
    smd_prometheus: PrometheusProcess,
    smd_bundles: SMDBundles,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    figures: Callable[..., None],
) -> None:
    out = tmp_path / "backtest"
    argv = ["backtest", "--bundle", str(smd_bundles.from_prometheus), "--prometheus", smd_prometheus.url]
    argv += ["--from", str(smd_fleet.test_start), "--to", str(smd_fleet.test_end), "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "machine-a" in printed and "alerts per stream-day" in printed
    scores = read_scores(out / "scores.csv")
    assert sorted(scores) == ["machine-a", "machine-b"]
    bundle = load_bundle(smd_bundles.from_files, "cpu", 1)
    worst = 0.0
    for stream, test_file in zip(sorted(scores), smd_fleet.test_files, strict=True):
        offline = score_test_series(bundle, test_file).scores
        ts = smd_fleet.test_start + np.arange(N_TEST) * STEP_S
        scored = np.isfinite(offline)
        assert sorted(scores[stream]) == ts[scored].tolist()  # the same points scored, none more
        got = np.array([scores[stream][t] for t in ts[scored]])
        np.testing.assert_allclose(got, offline[scored], **FLOAT32_TOLERANCE)
        worst = max(worst, float(np.max(np.abs(got - offline[scored]))))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scored_points"] == sum(len(s) for s in scores.values())
    assert set(summary["alerts_per_stream_day_by_threshold_factor"]) == {"0.5", "1", "2", "4"}
    assert (out / "backtest_report.png").read_bytes()[:4] == b"\x89PNG"
    figures(points=summary["scored_points"], max_abs_score_diff=worst, alerts=summary["alerts"])


def test_a_bundle_trained_from_prometheus_recalibrates_from_its_recorded_range(
    smd_bundles: SMDBundles, tmp_path: Path
) -> None:
    bundle = tmp_path / "smd" / "prom"
    shutil.copytree(smd_bundles.from_prometheus, bundle)
    assert main(["calibrate", "--bundle", str(bundle), "--version", "again", "--threads", "1"]) == 0
    again = Manifest.load(tmp_path / "smd" / "again")
    original = Manifest.load(bundle)
    assert again.thresholds == original.thresholds and again.source == original.source
