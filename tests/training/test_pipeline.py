"""The training pipeline: what it writes, that calibration never reads test data, and determinism."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from models.manifest import Manifest
from models.scoring import normalise
from tests.conftest import SAMPLE
from training.calibrate import calibrate, calibrate_alerts
from training.config import CalibrationConfig, TrainConfig
from training.data import load_series, split_chronological
from training.evaluate import evaluate_bundle
from training.pipeline import score_with_onnx, train_bundle
from training.recalibrate import recalibrate_bundle
from training.report import EVALUATION_REPORT, TRAINING_REPORT


def tiny_config(out: Path, **changes: object) -> TrainConfig:
    values: dict[str, object] = {
        "model": "tvnet",
        "train_path": SAMPLE / "train.txt.gz",
        "out_dir": out,
        "version": "v",
        "max_rows": 2000,
        "epochs": 1,
        "train_stride": 20,
        "hyperparameters": {"d_model": 8, "n_blocks": 1},
        "progress": False,
    }
    values.update(changes)
    return TrainConfig(**values)  # type: ignore[arg-type]


def test_the_bundle_is_self_describing(bundle_dir: Path) -> None:
    manifest = Manifest.load(bundle_dir)
    assert (bundle_dir / "model.onnx").is_file() and (bundle_dir / TRAINING_REPORT).is_file()
    assert manifest.architecture == "tvnet" and manifest.hyperparameters["d_model"] == 16
    assert manifest.window_length == 100 and manifest.n_features == 38 and manifest.stride == 10
    assert manifest.parity.passed and set(manifest.parity.max_abs_diff) == {"1", "7", "64"}
    assert (
        manifest.onnx.opset >= 17
        and manifest.onnx.sha256 == hashlib.sha256((bundle_dir / "model.onnx").read_bytes()).hexdigest()
    )
    assert (
        manifest.training.n_train_rows + manifest.training.n_validation_rows
        == manifest.training.n_rows
        == 3000
    )
    assert manifest.training.config["model"] == "tvnet"  # the resolved config is kept
    assert manifest.training.data_sha256 == hashlib.sha256((SAMPLE / "train.txt.gz").read_bytes()).hexdigest()
    assert {level.name for level in manifest.thresholds.levels} == {"warning", "critical"}


def test_by_default_the_thresholds_come_from_held_out_scores_only(bundle_dir: Path, tmp_path: Path) -> None:
    """The default calibration is cross-fitted with 4 folds; recalibrated on the last 20 % of the training rows
    alone (``cross_fit_folds`` 0), the thresholds are exactly those recomputed from that validation tail."""
    import shutil

    manifest = Manifest.load(bundle_dir)
    assert manifest.training.config["calibration"]["cross_fit_folds"] == 4
    assert sorted(p.name for p in (bundle_dir / "calibration").iterdir()) == [
        f"fold-{j}.onnx" for j in range(4)
    ]
    series = load_series(SAMPLE / "train.txt.gz", max_rows=3000)
    validation = split_chronological(series, 0.2, 100).validation
    scores = score_with_onnx(
        bundle_dir / "model.onnx", normalise(validation, manifest.normalisation), 100, 10, 2, manifest.score
    ).scores
    config = CalibrationConfig(**{**manifest.training.config["calibration"], "cross_fit_folds": 0})
    shutil.copytree(bundle_dir, tmp_path / "tvnet" / "test")
    plain = Manifest.load(recalibrate_bundle(tmp_path / "tvnet" / "test", config, version="plain", threads=2))
    again, policy = calibrate_alerts(scores, calibrate(scores, config), config)
    assert again.warning == plain.thresholds.warning and again.critical == plain.thresholds.critical
    assert again.validation_stats["n"] == manifest.training.n_validation_rows
    assert policy == plain.alerts and again.baseline == plain.thresholds.baseline
    assert (
        plain.thresholds.alert_calibration is not None and manifest.thresholds.alert_calibration is not None
    )
    assert plain.thresholds.alert_calibration.validation_days * 4 < (
        manifest.thresholds.alert_calibration.validation_days
    )


def test_data_too_short_for_the_default_folds_falls_back_to_the_validation_part(tmp_path: Path) -> None:
    """350 training rows cut into 4 blocks leave 87 rows, under a window of 100: by default the bundle is
    calibrated on the validation part alone and says so; asked for explicitly, the folds are refused, and so is
    a calibration that leaves a disturbed period out (it needs the blocks)."""
    from training.crossfit import CrossFitError

    short = {"max_rows": 500, "validation_fraction": 0.3}
    bundle = train_bundle(tiny_config(tmp_path / "default", **short))
    manifest = Manifest.load(bundle)
    assert manifest.training.config["calibration"]["cross_fit_folds"] == 0
    assert not (bundle / "calibration").exists()
    assert manifest.thresholds.alert_calibration is not None
    assert (
        0
        < manifest.thresholds.alert_calibration.validation_days
        <= manifest.training.n_validation_rows / 1440
    )
    # recalibrated with a calibration that names no folds, it stays on the validation part (not the default 4)
    again = Manifest.load(recalibrate_bundle(bundle, CalibrationConfig(), version="again", threads=2))
    assert again.thresholds == manifest.thresholds
    assert again.training.config["calibration"]["cross_fit_folds"] == 0
    with pytest.raises(CrossFitError, match="shorter than a window of 100"):
        train_bundle(
            tiny_config(tmp_path / "asked", calibration=CalibrationConfig(cross_fit_folds=4), **short)
        )
    # periods left out of the budget need the blocks: no silent fallback to a validation part alone
    with pytest.raises(CrossFitError, match="disturbed_periods=1 needs the cross-fitted blocks"):
        train_bundle(
            tiny_config(tmp_path / "spared", calibration=CalibrationConfig(disturbed_periods=1), **short)
        )


def test_recalibrating_a_bundle_with_its_own_calibration_reproduces_it(
    bundle_dir: Path, tmp_path: Path
) -> None:
    import shutil

    models = tmp_path / "models"
    shutil.copytree(bundle_dir, models / "tvnet" / "test")
    manifest = Manifest.load(bundle_dir)
    config = CalibrationConfig(**manifest.training.config["calibration"])
    same = Manifest.load(recalibrate_bundle(models / "tvnet" / "test", config, version="again", threads=2))
    assert (same.thresholds, same.alerts, same.score) == (
        manifest.thresholds,
        manifest.alerts,
        manifest.score,
    )
    assert (models / "tvnet" / "again" / "model.onnx").read_bytes() == (
        bundle_dir / "model.onnx"
    ).read_bytes()
    stricter = config.model_copy(update={"false_alerts_per_day": 0.01})
    fewer = Manifest.load(recalibrate_bundle(models / "tvnet" / "test", stricter, version="fewer", threads=2))
    assert fewer.thresholds.alert_calibration is not None
    assert fewer.thresholds.alert_calibration.validation_alerts == 0
    assert fewer.thresholds.warning >= manifest.thresholds.warning


def test_evaluating_on_test_data_never_changes_the_thresholds(bundle_dir: Path, tmp_path: Path) -> None:
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(bundle_dir, bundle)
    before = (bundle / "manifest.json").read_bytes()
    test = load_series(SAMPLE / "test.txt.gz", max_rows=1500)
    np.save(tmp_path / "test.npy", test)
    np.save(tmp_path / "labels.npy", np.r_[np.zeros(700), np.ones(100), np.zeros(700)])
    first = evaluate_bundle(bundle, tmp_path / "test.npy", tmp_path / "labels.npy", report=True)
    np.save(tmp_path / "test.npy", test * 3.0)  # very different test data
    second = evaluate_bundle(bundle, tmp_path / "test.npy", tmp_path / "labels.npy")
    assert (bundle / "manifest.json").read_bytes() == before
    stored = json.loads(before)["thresholds"]
    assert (
        first["thresholds"]
        == second["thresholds"]
        == {"warning": stored["warning"], "critical": stored["critical"]}
    )
    assert first["metrics"]["auc_pr"] != second["metrics"]["auc_pr"]
    assert (bundle / EVALUATION_REPORT).is_file()


def test_training_is_deterministic_on_cpu(tmp_path: Path) -> None:
    one = Manifest.load(train_bundle(tiny_config(tmp_path / "one")))
    two = Manifest.load(train_bundle(tiny_config(tmp_path / "two")))
    assert one.onnx.sha256 == two.onnx.sha256
    assert one.thresholds == two.thresholds
    other = Manifest.load(train_bundle(tiny_config(tmp_path / "three", seed=1)))
    assert other.onnx.sha256 != one.onnx.sha256


def test_early_stopping_keeps_the_best_validation_epoch(tmp_path: Path) -> None:
    manifest = Manifest.load(train_bundle(tiny_config(tmp_path, epochs=5, patience=1, learning_rate=0.02)))
    losses = [h["validation_loss"] for h in manifest.training.history]
    assert manifest.training.best_validation_loss == min(losses)
    assert manifest.training.epochs_run == len(losses)


def test_a_diverging_run_fails_and_writes_no_bundle(tmp_path: Path) -> None:
    import pytest

    from training.loop import TrainingDiverged

    with pytest.raises(TrainingDiverged, match="not finite"):
        train_bundle(tiny_config(tmp_path, epochs=3, learning_rate=1e6))
    assert not list(tmp_path.glob("**/manifest.json"))


def test_an_ensemble_graph_is_the_mean_of_its_members_trained_alone(tmp_path: Path) -> None:
    """``ensemble=2`` exports one graph whose reconstruction is the mean of the models that seeds 0 and 1 train
    alone, with its parity proved and its size recorded."""
    import onnxruntime as ort

    members = [
        train_bundle(tiny_config(tmp_path / f"alone{seed}", seed=seed, report=False)) for seed in (0, 1)
    ]
    ensemble = train_bundle(tiny_config(tmp_path / "ensemble", ensemble=2, report=False))
    manifest = Manifest.load(ensemble)
    assert manifest.training.ensemble_size == 2 and manifest.training.config["ensemble"] == 2
    assert manifest.parity.passed and manifest.architecture == "tvnet"
    windows = np.random.default_rng(3).standard_normal((5, 100, 38)).astype(np.float32)

    def run(bundle: Path) -> np.ndarray:
        session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])
        return np.asarray(session.run(None, {session.get_inputs()[0].name: windows})[0])

    alone = [run(bundle) for bundle in members]
    assert not np.allclose(alone[0], alone[1], atol=1e-3)  # the seeds train different members
    together = run(ensemble)
    np.testing.assert_allclose(together, (alone[0] + alone[1]) / 2, atol=1e-5)
    windows = windows[2:3]  # the same window alone: bit for bit what it got inside the batch
    assert np.array_equal(run(ensemble), together[2:3])


def test_an_ensemble_of_a_closed_form_model_is_refused(tmp_path: Path) -> None:
    import pytest

    with pytest.raises(ValueError, match="closed form"):
        train_bundle(tiny_config(tmp_path, model="pca", hyperparameters={}, ensemble=2, report=False))


def test_a_masked_graph_predicts_the_newest_points_from_the_earlier_ones(tmp_path: Path) -> None:
    """``mask_newest=10``: the exported graph's output does not depend on a window's newest 10 points (they are
    what it predicts) and does depend on the points before them; the span is recorded and parity proved."""
    import onnxruntime as ort

    bundle = train_bundle(tiny_config(tmp_path, mask_newest=10, report=False))
    manifest = Manifest.load(bundle)
    assert manifest.training.mask_newest == 10 and manifest.parity.passed
    session = ort.InferenceSession(str(bundle / "model.onnx"), providers=["CPUExecutionProvider"])

    def run(windows: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {session.get_inputs()[0].name: windows})[0])

    windows = np.random.default_rng(4).standard_normal((3, 100, 38)).astype(np.float32)
    hidden, earlier = windows.copy(), windows.copy()
    hidden[:, 90:] += 5.0
    earlier[:, 80:90] += 5.0
    assert np.array_equal(run(hidden), run(windows))
    assert not np.allclose(run(earlier), run(windows), atol=1e-3)


def test_masking_is_refused_where_it_cannot_train(tmp_path: Path) -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValueError, match="closed form"):
        train_bundle(tiny_config(tmp_path, model="pca", hyperparameters={}, mask_newest=10, report=False))
    with pytest.raises(ValidationError, match="mask_newest must be smaller"):
        tiny_config(tmp_path, mask_newest=100)
