"""Threshold calibration from validation scores only."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.calibrate import CalibrationError, calibrate, pot_threshold
from training.config import CalibrationConfig


def test_pot_threshold_approaches_the_exponential_quantile() -> None:
    scores = np.random.default_rng(0).exponential(size=20_000)
    threshold, params = pot_threshold(scores, risk=1e-4, level=0.98)
    assert threshold == pytest.approx(-math.log(1e-4), rel=0.1)  # the exact quantile of Exp(1)
    assert params["gamma"] == pytest.approx(0.0, abs=0.1)  # an exponential tail has shape 0


def test_calibrate_gives_ordered_levels_and_records_the_method() -> None:
    scores = np.random.default_rng(1).gamma(2.0, size=5_000)
    thresholds = calibrate(scores, CalibrationConfig())
    assert thresholds.critical > thresholds.warning > np.quantile(scores, 0.99)
    assert [level.name for level in thresholds.levels] == ["warning", "critical"]
    assert all(level.method == "pot" for level in thresholds.levels)
    assert thresholds.validation_stats["n"] == 5_000


def test_quantile_calibration_uses_the_plain_quantiles() -> None:
    scores = np.random.default_rng(2).normal(size=10_000)
    config = CalibrationConfig(method="quantile", warning_risk=0.01, critical_risk=0.001)
    thresholds = calibrate(scores, config)
    assert thresholds.warning == pytest.approx(np.quantile(scores, 0.99))
    assert thresholds.critical == pytest.approx(np.quantile(scores, 0.999))


def test_calibrate_ignores_unscored_points_and_refuses_too_few_scores() -> None:
    scores = np.full(1_000, np.nan)
    scores[:40] = 1.0
    with pytest.raises(CalibrationError, match="40 validation scores"):
        calibrate(scores, CalibrationConfig())
