"""One model for a fleet: several training files (or a directory of them), windows within each file, the
normalisation fitted on every training part, validation taken from the end of each file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.manifest import Manifest
from tests.conftest import SAMPLE
from training.config import TrainConfig
from training.data import DataError, fit_normalisation, load_series, parts_sha256, split_chronological
from training.pipeline import train_bundle
from training.recalibrate import validation_parts


@pytest.fixture(scope="module")
def fleet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two machines' worth of data: two slices of the sample, the second on another level."""
    series = load_series(SAMPLE / "train.txt.gz", max_rows=3200)
    out = tmp_path_factory.mktemp("fleet")
    np.save(out / "machine-a.npy", series[:1500])
    np.save(out / "machine-b.npy", series[1500:3200] * 0.5 + 0.2)
    return out


def fleet_config(train_path: Path | list[Path], out: Path) -> TrainConfig:
    return TrainConfig(
        model="tvnet",
        train_path=train_path,
        out_dir=out,
        version="fleet",
        epochs=1,
        train_stride=20,
        hyperparameters={"d_model": 8, "n_blocks": 1},
        progress=False,
        report=False,
    )


def test_a_fleet_model_uses_every_part_and_splits_each_on_its_own(fleet_dir: Path, tmp_path: Path) -> None:
    files = [fleet_dir / "machine-a.npy", fleet_dir / "machine-b.npy"]
    manifest = Manifest.load(train_bundle(fleet_config(files, tmp_path / "listed")))
    splits = [split_chronological(np.load(f).astype(np.float32), 0.2, 100) for f in files]
    expected = fit_normalisation(np.concatenate([s.train for s in splits]), 1e-3)
    np.testing.assert_allclose(manifest.normalisation.mean, expected.mean, rtol=1e-6)
    np.testing.assert_allclose(manifest.normalisation.scale, expected.scale, rtol=1e-6)
    assert manifest.training.n_rows == 3200
    assert manifest.training.n_validation_rows == sum(len(s.validation) for s in splits) == 300 + 340
    assert manifest.training.data_sha256 == parts_sha256(files)
    calibration = manifest.thresholds.alert_calibration
    assert calibration is not None
    # every tail and (cross-fitted by default, 4 blocks a part) every training row, each part scored on its own
    assert calibration.validation_days == pytest.approx(3200 * 60 / 86400)
    parts = validation_parts(manifest)
    assert [len(p) for p in parts] == [300, 340]  # recalibration finds the same tails

    from_dir = Manifest.load(train_bundle(fleet_config(fleet_dir, tmp_path / "directory")))
    assert from_dir.thresholds == manifest.thresholds  # a directory is its files, in name order
    assert from_dir.onnx.sha256 == manifest.onnx.sha256


def test_fleet_parts_must_share_their_sensors(fleet_dir: Path, tmp_path: Path) -> None:
    np.save(tmp_path / "narrow.npy", np.zeros((500, 5), dtype=np.float32))
    with pytest.raises(DataError, match="different sensor counts"):
        train_bundle(fleet_config([fleet_dir / "machine-a.npy", tmp_path / "narrow.npy"], tmp_path / "out"))


def test_a_cross_fitted_fleet_calibrates_on_every_row_of_every_part(fleet_dir: Path, tmp_path: Path) -> None:
    """Each part's training rows are cut into blocks of their own (no block joins two machines); the alert
    calibration then covers every row of the fleet once, and `vigil calibrate` finds the same blocks."""
    import shutil

    from training.config import CalibrationConfig
    from training.recalibrate import recalibrate_bundle

    files = [fleet_dir / "machine-a.npy", fleet_dir / "machine-b.npy"]
    config = fleet_config(files, tmp_path / "models").model_copy(
        update={"calibration": CalibrationConfig(cross_fit_folds=2)}
    )
    bundle = train_bundle(config)
    manifest = Manifest.load(bundle)
    calibration = manifest.thresholds.alert_calibration
    assert calibration is not None
    assert calibration.validation_days == pytest.approx(3200 * 60 / 86400)  # 1,500 + 1,700 rows, all held out
    shutil.copytree(bundle, tmp_path / "models" / "tvnet" / "copy")
    again = recalibrate_bundle(
        tmp_path / "models" / "tvnet" / "copy", CalibrationConfig(cross_fit_folds=2), "again", threads=2
    )
    assert Manifest.load(again).thresholds == manifest.thresholds
