"""``disturbed_periods="auto"``: the held-out periods choose 0 or 1, each set aside in turn (training/disturbed.py)."""

from __future__ import annotations

import numpy as np
import pytest

from models.manifest import AlertPolicy, Thresholds
from training.calibrate import calibrate_held_out, count_alerts
from training.config import CalibrationConfig
from training.disturbed import Count, choose_disturbed


def _period(seed: int, days: int = 2) -> np.ndarray:
    """Per-minute scores: autocorrelated noise with a few bursts, as reconstruction errors are."""
    n = days * 1440
    rng = np.random.default_rng(seed)
    noise = np.convolve(rng.gamma(2.0, 0.05, size=n + 9), np.ones(10) / 10, mode="valid")
    for start in rng.integers(0, n - 20, size=6 * days):
        noise[start : start + rng.integers(1, 15)] += rng.gamma(2.0, 0.3)
    return noise


def _thresholds(warning: float) -> Thresholds:
    return Thresholds(warning=warning, critical=warning + 1.0, levels=[], validation_stats={})


def test_the_largest_setting_within_the_target_is_chosen_and_none_within_keeps_every_period() -> None:
    """The rule alone: pure functions stand for the calibration (setting d gives a warning of 10 - d) and the
    count (the set-aside period's alerts at that warning, as given)."""
    series: list[np.ndarray] = [np.zeros(1440) for _ in range(5)]  # one day each
    policy = AlertPolicy(k=1, n=1, m=1)
    rest_sizes: list[int] = []

    def calibrate_on(rest: list[np.ndarray], disturbed: int) -> tuple[Thresholds, AlertPolicy | None]:
        rest_sizes.append(len(rest))
        return _thresholds(10.0 - disturbed), policy

    def counting(per_setting: dict[float, int]) -> Count:
        def count(_: np.ndarray, thresholds: Thresholds, __: AlertPolicy) -> int:
            return per_setting[round(thresholds.warning)]

        return count

    low = choose_disturbed(series, 1.0, 60.0, calibrate_on, counting({10: 0, 9: 1}))
    assert low.chosen == 1 and low.out_of_period_per_day == {0: 0.0, 1: 1.0}  # 5 alerts in 5 days: within
    assert rest_sizes == [4] * 10  # every period but the one set aside, for each of the two settings
    high = choose_disturbed(series, 1.0, 60.0, calibrate_on, counting({10: 1, 9: 2}))
    assert high.chosen == 0 and high.out_of_period_per_day == {0: 1.0, 1: 2.0}
    none = choose_disturbed(series, 1.0, 60.0, calibrate_on, counting({10: 3, 9: 4}))
    assert none.chosen == 0  # none within: every period counts, the highest thresholds
    two = choose_disturbed(series[:2], 1.0, 60.0, calibrate_on, counting({10: 0, 9: 0}))
    assert two.out_of_period_per_day == {0: 0.0}  # with one period set aside, 1 would leave none counted


def test_auto_records_its_evidence_and_calibrates_every_period_with_the_setting_it_chose() -> None:
    """On real calibrations: each setting's rate is what thresholds calibrated without a period fire on it,
    the setting kept is the largest within the target, and the bundle's thresholds are those of the fixed
    setting on every period."""
    periods = [_period(seed) for seed in range(5)]
    periods[2] = periods[2] + np.where(
        np.arange(periods[2].size) % 120 < 4, 6.0, 0.0
    )  # a storm: a burst every 2 h
    auto = CalibrationConfig(disturbed_periods="auto")
    thresholds, policy = calibrate_held_out(periods, auto)
    record = thresholds.alert_calibration
    assert record is not None and record.disturbed_choice is not None and policy is not None
    days = 10.0
    for setting in (0, 1):
        fixed = CalibrationConfig(disturbed_periods=setting)
        alerts = 0
        for aside in range(5):
            rest_thresholds, rest_policy = calibrate_held_out(periods[:aside] + periods[aside + 1 :], fixed)
            assert rest_policy is not None
            alerts += count_alerts(periods[aside], rest_thresholds, rest_policy)
        assert record.disturbed_choice[str(setting)] == pytest.approx(alerts / days)
    within = [int(s) for s, rate in record.disturbed_choice.items() if rate <= 1.0]
    assert record.disturbed_periods == max(within, default=0)
    same, same_policy = calibrate_held_out(
        periods, CalibrationConfig(disturbed_periods=record.disturbed_periods)
    )
    assert (thresholds.warning, thresholds.critical, policy) == (same.warning, same.critical, same_policy)
    # the storm alerts wherever it is set aside, so it counts against both settings
    assert min(record.disturbed_choice.values()) > 1.0 and record.disturbed_periods == 0


def test_auto_is_a_valid_setting_without_folds_and_in_the_manifest() -> None:
    config = CalibrationConfig(cross_fit_folds=0, disturbed_periods="auto")  # one period: nothing to choose
    thresholds, _ = calibrate_held_out([_period(7)], config)
    assert thresholds.alert_calibration is not None
    assert thresholds.alert_calibration.disturbed_periods == 0
    assert thresholds.alert_calibration.disturbed_choice == {}
    assert CalibrationConfig.model_validate({"disturbed_periods": "auto"}).disturbed_periods == "auto"
    with pytest.raises(ValueError, match="disturbed_periods"):
        CalibrationConfig.model_validate({"disturbed_periods": "some"})
