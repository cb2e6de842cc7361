"""The `vigil calibrate` and `vigil evaluate` commands as a user runs them (torch-free subcommands)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from models.manifest import Manifest
from tests.conftest import SAMPLE
from training.cli import main
from training.data import load_series


def test_calibrate_writes_a_new_version_sharing_the_graph_and_evaluate_prints_alert_figures(
    bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    shutil.copytree(bundle_dir, models / "tvnet" / "test")
    assert (
        main(
            [
                "calibrate",
                "--bundle",
                str(models / "tvnet" / "test"),
                "--version",
                "strict",
                "--false-alerts-per-day",
                "0.5",
                "--sampling-interval-s",
                "30",
                "--min-incident-points",
                "1",
            ]
        )
        == 0
    )
    strict = Manifest.load(models / "tvnet" / "strict")
    assert strict.alerts is not None and strict.alerts.k == 1  # only lifecycles that fire on one point
    assert strict.thresholds.alert_calibration is not None
    assert strict.thresholds.alert_calibration.target_per_day == 0.5
    assert strict.thresholds.alert_calibration.sampling_interval_s == 30
    assert strict.onnx == Manifest.load(bundle_dir).onnx

    test = load_series(SAMPLE / "test.txt.gz", max_rows=2000)
    np.save(tmp_path / "test.npy", test)
    labels = np.zeros(2000)
    labels[900:960] = 1
    np.save(tmp_path / "labels.npy", labels)
    capsys.readouterr()
    out_json = tmp_path / "result.json"
    assert (
        main(
            [
                "evaluate",
                "--bundle",
                str(models / "tvnet" / "strict"),
                "--test",
                str(tmp_path / "test.npy"),
                "--labels",
                str(tmp_path / "labels.npy"),
                "--sampling-interval-s",
                "30",
                "--json",
                str(out_json),
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "fixed thresholds" in printed and "adaptive thresholds" in printed
    assert "false alerts/day" in printed and "event recall" in printed
    result = json.loads(out_json.read_text())
    assert result["alerts"]["fixed"]["days"] == pytest.approx(2000 * 30 / 86400)
    assert result["alerts"]["fixed"]["n_events"] == 1
    assert "oracle threshold" in printed and "not a result" in printed
    assert 0.0 <= result["alert_ceiling"]["event_recall"] <= 1.0


def test_calibrate_refuses_to_overwrite_the_bundle_it_reads(
    bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    shutil.copytree(bundle_dir, models / "tvnet" / "test")
    assert main(["calibrate", "--bundle", str(models / "tvnet" / "test"), "--version", "test"]) == 2
    assert "must differ" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        (["--hyperparameters", "notjson"], "--hyperparameters: not a JSON object"),
        (["--hyperparameters", '{"no_such_knob": 1}'], "unknown hyper-parameters ['no_such_knob']"),
    ],
)
def test_train_refuses_bad_options_with_exit_2_and_the_reason(
    extra: list[str], reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "--model", "tvnet", "--train", str(SAMPLE / "train.txt.gz"), "--out", str(tmp_path)]
    assert main([*args, "--max-rows", "1500", "--epochs", "1", "--cross-fit-folds", "0", *extra]) == 2
    assert reason in capsys.readouterr().err
    assert main(["train", "--model", "tvnet", "--out", str(tmp_path)]) == 2
    assert "give the data with --train" in capsys.readouterr().err
    diverging = [
        "train",
        "--model",
        "dense_ae",
        "--train",
        str(SAMPLE / "train.txt.gz"),
        "--out",
        str(tmp_path),
    ]
    assert (
        main([*diverging, "--max-rows", "1500", "--epochs", "2", "--cross-fit-folds", "0", "--lr", "1e12"])
        == 2
    )
    assert "loss is not finite" in capsys.readouterr().err


@pytest.mark.parametrize("size", ["0", "17", "two"])
def test_train_refuses_an_ensemble_size_outside_1_to_16(
    size: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "--model", "tvnet", "--train", str(SAMPLE / "train.txt.gz"), "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as exited:
        main([*args, "--ensemble", size])
    assert exited.value.code == 2
    assert "--ensemble" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


@pytest.mark.parametrize(
    ("option", "reason"),
    [
        # settings that do not go together
        (["--mask-newest", "100"], "mask_newest must be smaller than window_length"),
        (["--mask-newest", "-1"], "mask_newest: Input should be greater than or equal to 0"),
        (["--stride", "200"], "stride must be <= window_length"),
        # options the model cannot take, and a data file that is not there
        (
            ["--model", "pca", "--mask-newest", "10"],
            "pca with mask_newest: the model is fitted in closed form",
        ),
        (["--model", "pca", "--ensemble", "2"], "fitted in closed form"),
        (["--train", "no-such-file.csv"], "no-such-file.csv: no such file"),
        # cross-fitting: one fold trains on nothing; ten blocks of 1,600 training rows are shorter than a window
        (["--cross-fit-folds", "1"], "cross_fit_folds must be 0 (validation only) or at least 2"),
        (["--cross-fit-folds", "10", "--window", "200"], "leave blocks of 160 rows"),
    ],
)
def test_train_input_a_user_can_get_wrong_exits_2_with_the_reason(
    option: list[str], reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["train", "--train", str(SAMPLE / "train.txt.gz"), "--out", str(tmp_path), "--max-rows", "2000"]
    assert main([*args, *option]) == 2
    err = capsys.readouterr().err
    assert reason in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


def test_calibrate_keeps_the_bundles_interval_and_refuses_other_training_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`vigil calibrate` counts the bundle's days with its own sampling interval (it used 60 s: a 10 s bundle's
    budget became 6x looser) and keeps the bundle's other calibration settings unless given (it reset them to
    the defaults); and it refuses training data other than the bundle's, whose "validation part" could be rows
    the model trained on (found by a review)."""
    series = load_series(SAMPLE / "train.txt.gz", max_rows=3000)
    data = tmp_path / "series.npy"
    np.save(data, series)
    models = tmp_path / "models"
    common = ["--model", "pca", "--out", str(models), "--name", "p", "--no-report", "--quiet"]
    own = ["--sampling-interval-s", "10", "--false-alerts-per-day", "2", "--min-incident-points", "5"]
    own += ["--thresholds", "adaptive"]
    assert main(["train", *common, "--train", str(data), "--version", "v1", *own]) == 0
    bundle = models / "p" / "v1"
    assert main(["calibrate", "--bundle", str(bundle), "--version", "v2", "--cross-fit-folds", "0"]) == 0
    manifest = Manifest.load(models / "p" / "v2")
    calibrated = manifest.thresholds.alert_calibration
    assert calibrated is not None and calibrated.sampling_interval_s == 10.0
    # the options not given are the bundle's own, not the defaults (1 a day, 3 points)
    assert calibrated.target_per_day == 2.0
    assert manifest.training.config["calibration"]["min_incident_points"] == 5
    assert manifest.alerts is not None and manifest.alerts.thresholds == "adaptive"  # served as calibrated
    assert calibrated.validation_days == pytest.approx(600 * 10 / 86_400, rel=0.2)  # ~600 validation rows
    capsys.readouterr()
    np.save(data, series[:2000])  # the same path, other data
    assert main(["calibrate", "--bundle", str(bundle), "--version", "v3", "--cross-fit-folds", "0"]) == 2
    assert "not what the bundle was trained on" in capsys.readouterr().err
    assert not (models / "p" / "v3").exists()


def test_calibrate_with_a_critical_budget_share_records_it_in_the_manifest(
    bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    shutil.copytree(bundle_dir, models / "tvnet" / "test")
    args = ["calibrate", "--bundle", str(models / "tvnet" / "test"), "--critical-budget-share", "0.5"]
    assert main([*args, "--version", "shared"]) == 0
    shared = Manifest.load(models / "tvnet" / "shared")
    assert shared.training.config["calibration"]["critical_budget_share"] == 0.5
    (warning, critical) = shared.thresholds.levels
    assert (
        critical.params["critical_budget_share"] == 0.5
        and shared.thresholds.critical >= shared.thresholds.warning
    )
    refused = [*args[:3], "--critical-budget-share", "0", "--version", "x"]
    assert main(refused) == 2
    assert "critical_budget_share" in capsys.readouterr().err
