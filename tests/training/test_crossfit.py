"""Cross-fitted calibration: every score the thresholds see comes from a model that never trained on it."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from models.manifest import Manifest
from models.runtime import graph_reconstruct
from models.scoring import normalise, score_series
from tests.conftest import SAMPLE
from tests.training.test_pipeline import tiny_config
from training.calibrate import calibrate, calibrate_alerts
from training.cli import main
from training.config import CalibrationConfig
from training.crossfit import (
    CrossFitError,
    check_folds,
    fold_bounds,
    fold_file,
    fold_training_rows,
    inside_fold,
    outside_fold,
)
from training.data import load_series, split_chronological
from training.pipeline import train_bundle
from training.recalibrate import recalibrate_bundle


@pytest.mark.parametrize(("rows", "folds"), [(1000, 4), (1003, 4), (250, 2), (7, 7)])
def test_the_blocks_cover_the_training_rows_once_in_order(rows: int, folds: int) -> None:
    bounds = fold_bounds(rows, folds)
    assert bounds[0][0] == 0 and bounds[-1][1] == rows and len(bounds) == folds
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    sizes = [end - start for start, end in bounds]
    assert max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("fold", [0, 1, 2, 3])
def test_a_fold_model_trains_on_every_training_row_but_its_block(fold: int) -> None:
    rows = np.arange(1000, dtype=np.float32)[:, None]  # each row's value is its index
    block = inside_fold(rows, 4, fold)[:, 0]
    outside = np.concatenate([p[:, 0] for p in outside_fold(rows, 4, fold, window_length=10)])
    assert not set(block.tolist()) & set(outside.tolist())
    assert sorted([*block.tolist(), *outside.tolist()]) == rows[:, 0].tolist()


@pytest.mark.parametrize("fold", [0, 3])
def test_a_fold_model_trains_on_as_many_rows_as_the_shipped_one(fold: int) -> None:
    """Every row but its block: the rest of the training part and the validation part (4 blocks of 200 training
    rows beside 200 validation rows: 800 rows, like the shipped model's 800 training rows)."""
    rows = np.arange(1000, dtype=np.float32)[:, None]
    train, validation = rows[:800], rows[800:]
    pieces = fold_training_rows([train], [validation], 4, fold, window_length=10)
    seen = np.concatenate([p[:, 0] for p in pieces])
    block = inside_fold(train, 4, fold)[:, 0]
    assert sorted(seen.tolist()) == sorted(set(rows[:, 0].tolist()) - set(block.tolist()))
    assert seen.size == 800


def test_without_validation_a_model_stops_after_the_epochs_it_is_told_on_the_same_schedule() -> None:
    """A fold model has no held-out rows to stop on: it runs the shipped model's epoch count of the same
    learning-rate schedule, so its first epochs are those of a run with validation, loss for loss."""
    import torch

    from models.registry import build_model
    from training.loop import train_module

    windows = np.random.default_rng(0).normal(size=(64, 20, 3)).astype(np.float32)

    def run(validation: np.ndarray | None, stop_after: int | None) -> list[float]:
        torch.manual_seed(0)
        module = build_model("dense_ae", 20, 3).module
        result = train_module(
            module,
            windows,
            validation,
            epochs=4,
            batch_size=16,
            learning_rate=1e-2,
            weight_decay=0.0,
            patience=10,
            seed=0,
            progress=False,
            stop_after=stop_after,
        )
        return [row["train_loss"] for row in result.history]

    full = run(windows[:16], None)
    assert len(full) == 4 and run(None, 2) == full[:2]
    with pytest.raises(ValueError, match="after how many epochs"):
        run(None, None)


def test_a_piece_too_short_for_a_window_is_left_out_and_a_block_too_short_is_refused() -> None:
    rows = np.zeros((400, 2), dtype=np.float32)
    assert [p.shape[0] for p in outside_fold(rows, 4, 0, window_length=100)] == [300]
    assert [p.shape[0] for p in outside_fold(rows, 4, 1, window_length=150)] == [
        200
    ]  # 100 rows before: too few
    check_folds([rows], 4, 100)
    with pytest.raises(CrossFitError, match="blocks of 80 rows"):
        check_folds([rows], 5, 100)


def test_one_fold_is_refused() -> None:
    with pytest.raises(ValidationError, match="cross_fit_folds"):
        CalibrationConfig(cross_fit_folds=1)


@pytest.fixture(scope="module")
def cross_fitted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("crossfit")
    return train_bundle(
        tiny_config(out, max_rows=3000, calibration=CalibrationConfig(cross_fit_folds=2), threads=2)
    )


def test_the_thresholds_come_from_validation_and_each_block_scored_by_the_model_that_never_saw_it(
    cross_fitted: Path,
) -> None:
    manifest = Manifest.load(cross_fitted)
    series = normalise(load_series(SAMPLE / "train.txt.gz", max_rows=3000), manifest.normalisation)
    split = split_chronological(series, 0.2, 100)
    shipped = graph_reconstruct(cross_fitted / "model.onnx", 2)

    def scores(values: np.ndarray, graph: Path | None = None) -> np.ndarray:
        run = shipped if graph is None else graph_reconstruct(graph, 2)
        return score_series(values, 100, 10, run, manifest.score).scores

    held_out = [scores(split.validation)] + [
        scores(inside_fold(split.train, 2, fold), fold_file(cross_fitted, fold)) for fold in (0, 1)
    ]
    config = CalibrationConfig(**manifest.training.config["calibration"])
    again, policy = calibrate_alerts(held_out, calibrate(np.concatenate(held_out), config), config)
    assert (again.warning, again.critical, policy) == (
        manifest.thresholds.warning,
        manifest.thresholds.critical,
        manifest.alerts,
    )
    assert manifest.thresholds.alert_calibration is not None
    held_out_rows = sum(int(np.isfinite(s).sum()) for s in held_out)
    assert manifest.thresholds.alert_calibration.validation_days == pytest.approx(held_out_rows / 1440)
    assert held_out_rows > 3 * int(np.isfinite(held_out[0]).sum())  # the training part counts too
    # the fold models are models of their own: the shipped graph scores a block differently (it trained on it)
    block = inside_fold(split.train, 2, 0)
    assert not np.allclose(scores(block), scores(block, fold_file(cross_fitted, 0)), equal_nan=True)


def test_recalibrating_a_cross_fitted_bundle_reproduces_it_and_needs_its_folds(
    cross_fitted: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(cross_fitted, models / "tvnet" / "v")
    manifest = Manifest.load(cross_fitted)
    config = CalibrationConfig(**manifest.training.config["calibration"])
    again = recalibrate_bundle(models / "tvnet" / "v", config, version="again", threads=2)
    assert Manifest.load(again).thresholds == manifest.thresholds
    # a calibration that names no folds keeps the bundle's (2), not the default's (4)
    unnamed = CalibrationConfig(**{k: v for k, v in config.model_dump().items() if k != "cross_fit_folds"})
    kept = Manifest.load(recalibrate_bundle(models / "tvnet" / "v", unnamed, version="kept", threads=2))
    assert kept.thresholds == manifest.thresholds
    assert kept.training.config["calibration"]["cross_fit_folds"] == 2
    assert fold_file(again, 1).read_bytes() == fold_file(cross_fitted, 1).read_bytes()  # kept for next time
    validation_only = Manifest.load(
        recalibrate_bundle(
            models / "tvnet" / "v", config.model_copy(update={"cross_fit_folds": 0}), "plain", threads=2
        )
    )
    assert validation_only.thresholds.alert_calibration is not None
    assert validation_only.thresholds.alert_calibration.validation_days < (
        manifest.thresholds.alert_calibration.validation_days / 3  # type: ignore[union-attr]
    )
    (models / "tvnet" / "v" / "calibration" / "fold-1.onnx").unlink()  # a bundle copied without them
    with pytest.raises(CrossFitError, match="cross-fitting graphs are missing: .*fold-1.onnx"):
        recalibrate_bundle(models / "tvnet" / "v", config, "lost", threads=2)
    with pytest.raises(CrossFitError, match="trained with 2 cross-fitting folds, not 3"):
        recalibrate_bundle(
            models / "tvnet" / "v", config.model_copy(update={"cross_fit_folds": 3}), "three", threads=2
        )


def test_vigil_calibrate_keeps_the_bundles_folds_unless_told(
    cross_fitted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    shutil.copytree(cross_fitted, models / "tvnet" / "v")
    bundle = str(models / "tvnet" / "v")
    assert main(["calibrate", "--bundle", bundle, "--version", "same"]) == 0
    assert main(["calibrate", "--bundle", bundle, "--version", "plain", "--cross-fit-folds", "0"]) == 0
    same, plain = (Manifest.load(models / "tvnet" / v) for v in ("same", "plain"))
    assert same.thresholds == Manifest.load(cross_fitted).thresholds
    assert main(["calibrate", "--bundle", bundle, "--version", "three", "--cross-fit-folds", "3"]) == 2
    assert "trained with 2 cross-fitting folds, not 3" in capsys.readouterr().err
    assert plain.training.config["calibration"]["cross_fit_folds"] == 0
    assert plain.thresholds.alert_calibration.validation_days < (  # type: ignore[union-attr]
        same.thresholds.alert_calibration.validation_days / 3  # type: ignore[union-attr]
    )


def test_vigil_calibrate_leaves_out_disturbed_periods_only_where_there_are_periods_to_spare(
    cross_fitted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bundle's 2 folds hold out 3 periods: one may be left out of the alert budget (recorded in the
    manifest, every period still replayed); all of them, or one of a validation part alone, exit 2."""
    models = tmp_path / "models"
    shutil.copytree(cross_fitted, models / "tvnet" / "v")
    bundle = str(models / "tvnet" / "v")
    assert main(["calibrate", "--bundle", bundle, "--version", "spared", "--disturbed-periods", "1"]) == 0
    record = Manifest.load(models / "tvnet" / "spared").thresholds.alert_calibration
    assert record is not None and record.disturbed_periods == 1 and record.counted_per_day is not None
    assert record.counted_per_day <= record.target_per_day
    every = Manifest.load(cross_fitted).thresholds.alert_calibration
    assert every is not None and record.validation_days == every.validation_days  # every period replayed
    assert main(["calibrate", "--bundle", bundle, "--version", "all", "--disturbed-periods", "3"]) == 2
    assert "disturbed_periods 3 would leave no held-out period counted: 2 cross-fitting folds hold out 3" in (
        capsys.readouterr().err
    )
    args = ["--cross-fit-folds", "0", "--disturbed-periods", "1"]
    assert main(["calibrate", "--bundle", bundle, "--version", "alone", *args]) == 2
    assert "would leave no held-out period counted" in capsys.readouterr().err


def test_vigil_calibrate_with_disturbed_periods_auto_records_the_choice_and_keeps_auto(
    cross_fitted: Path, tmp_path: Path
) -> None:
    """``--disturbed-periods auto`` on the bundle's 3 held-out periods: the manifest records both settings'
    rates on the periods set aside and the one chosen, and a recalibration keeps asking for auto."""
    models = tmp_path / "models"
    shutil.copytree(cross_fitted, models / "tvnet" / "v")
    bundle = str(models / "tvnet" / "v")
    assert main(["calibrate", "--bundle", bundle, "--version", "auto", "--disturbed-periods", "auto"]) == 0
    manifest = Manifest.load(models / "tvnet" / "auto")
    record = manifest.thresholds.alert_calibration
    assert record is not None and record.disturbed_choice is not None
    assert set(record.disturbed_choice) == {"0", "1"}
    within = [int(s) for s, rate in record.disturbed_choice.items() if rate <= record.target_per_day]
    assert record.disturbed_periods == max(within, default=0)
    assert manifest.training.config["calibration"]["disturbed_periods"] == "auto"
    assert main(["calibrate", "--bundle", str(models / "tvnet" / "auto"), "--version", "again"]) == 0
    again = Manifest.load(models / "tvnet" / "again").thresholds.alert_calibration
    assert again is not None and again.disturbed_choice == record.disturbed_choice
