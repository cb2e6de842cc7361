"""Threshold calibration from validation scores only."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.manifest import AlertPolicy, Thresholds
from training.calibrate import CalibrationError, _alerts_by_series, calibrate, calibrate_alerts, pot_threshold
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


def _noisy_validation(seed: int, n: int = 6 * 1440) -> np.ndarray:
    """Six days of per-minute scores: autocorrelated noise with a few bursts, as reconstruction errors are."""
    rng = np.random.default_rng(seed)
    noise = np.convolve(rng.gamma(2.0, 0.05, size=n + 9), np.ones(10) / 10, mode="valid")
    for start in rng.integers(0, n - 20, size=12):
        noise[start : start + rng.integers(1, 15)] += rng.gamma(2.0, 0.3)
    return noise


def test_the_lifecycle_can_fire_on_the_shortest_incident_it_is_asked_to_page() -> None:
    """On validation (no incidents) the most sensitive lifecycle is the one needing most points over the
    threshold; bounded by ``min_incident_points`` the calibration keeps one that an incident that short fires."""
    from training.calibrate import CalibrationError, calibrate_alerts

    scores = _noisy_validation(5)
    unbounded = CalibrationConfig(min_incident_points=5)
    _, wide = calibrate_alerts(scores, calibrate(scores, unbounded), unbounded)
    assert wide.k == 5  # what the rule prefers when nothing bounds it
    for shortest in (1, 2, 3):
        config = CalibrationConfig(min_incident_points=shortest)
        _, policy = calibrate_alerts(scores, calibrate(scores, config), config)
        assert policy.k <= shortest
    with pytest.raises(CalibrationError, match="min_incident_points"):
        config = CalibrationConfig(lifecycle_grid=[(5, 8)])
        calibrate_alerts(scores, calibrate(scores, config), config)


def test_an_unlabelled_incident_in_validation_does_not_set_the_threshold() -> None:
    """A validation tail that holds one long incident (4 % of its points far above normal): the incident is one
    alert within the budget, not a level every alert must clear; a 1 % cap on time in alert would lift the
    warning threshold above the incident, blind to anything smaller."""
    from training.calibrate import calibrate_alerts

    scores = _noisy_validation(3)
    start = scores.size // 2
    scores[start : start + int(0.04 * scores.size)] += 50.0
    config = CalibrationConfig()
    thresholds, _ = calibrate_alerts(scores, calibrate(scores, config), config)
    strict = config.model_copy(update={"max_alert_share": 0.01})
    lifted, _ = calibrate_alerts(scores, calibrate(scores, strict), strict)
    assert thresholds.warning < 50.0 < lifted.warning
    assert thresholds.alert_calibration is not None and thresholds.alert_calibration.validation_alerts <= 6


@pytest.mark.parametrize("per_day", [0.5, 1.0, 3.0])
def test_false_alert_calibration_meets_its_budget_on_validation(per_day: float) -> None:
    from models.lifecycle import LevelThresholds, replay_series
    from training.calibrate import calibrate_alerts

    scores = _noisy_validation(3)
    config = CalibrationConfig(false_alerts_per_day=per_day)
    thresholds, policy = calibrate_alerts(scores, calibrate(scores, config), config)
    spans = replay_series(scores, LevelThresholds(thresholds.warning, thresholds.critical, policy))
    assert len(spans) <= per_day * 6
    assert sum(s.end - s.start for s in spans) <= config.max_alert_share * scores.size
    assert thresholds.alert_calibration is not None
    assert thresholds.alert_calibration.validation_alerts == len(spans)
    assert thresholds.alert_calibration.validation_days == pytest.approx(6.0)
    assert (policy.k, policy.n) in config.lifecycle_grid and policy.m in config.resolve_grid
    assert policy.k <= config.min_incident_points
    assert thresholds.levels[0].method == "false_alert_rate"
    assert thresholds.critical >= thresholds.warning


def test_false_alert_calibration_is_more_sensitive_with_a_larger_budget() -> None:
    from training.calibrate import calibrate_alerts

    scores = _noisy_validation(4)
    exceedance = []
    for per_day in (0.2, 1.0, 5.0):
        config = CalibrationConfig(false_alerts_per_day=per_day)
        thresholds, _ = calibrate_alerts(scores, calibrate(scores, config), config)
        exceedance.append(thresholds.levels[0].params["validation_exceedance"])
    assert exceedance == sorted(exceedance) and exceedance[0] < exceedance[-1]


def test_false_alert_calibration_does_not_accept_an_alert_that_never_closes() -> None:
    """One alert open over the whole validation part counts as a single alert: the time-in-alert bound, not the
    count, must refuse a threshold under the normal level."""
    from training.calibrate import calibrate_alerts

    rng = np.random.default_rng(5)
    scores = np.r_[rng.normal(1.0, 0.01, size=2 * 1440), rng.normal(2.0, 0.01, size=1440)]  # a level shift
    config = CalibrationConfig(false_alerts_per_day=1.0)
    thresholds, policy = calibrate_alerts(scores, calibrate(scores, config), config)
    assert thresholds.warning > np.quantile(scores[2 * 1440 :], 0.5), policy


def test_the_adaptive_policy_asked_for_is_recorded_with_the_calibrated_lifecycle() -> None:
    from models.manifest import AdaptivePolicy
    from training.calibrate import calibrate_alerts

    scores = _noisy_validation(6)
    config = CalibrationConfig(
        false_alerts_per_day=1.0, adaptive=AdaptivePolicy(min_ratio=1.0, warmup_points=50)
    )
    _, policy = calibrate_alerts(scores, calibrate(scores, config), config)
    assert policy.adaptive == AdaptivePolicy(min_ratio=1.0, warmup_points=50)
    _, default = calibrate_alerts(scores, calibrate(scores, CalibrationConfig()), CalibrationConfig())
    assert default.adaptive == AdaptivePolicy()


def _disturbed_periods(seed: int) -> list[np.ndarray]:
    """Five held-out periods of three days: four of them normal, one (the third) with 30 short bursts of 8 over
    a normal level of about 0.1 (an unlabelled incident storm, a deploy: what normal data often holds)."""
    periods = [_noisy_validation(seed + i, n=3 * 1440) for i in range(5)]
    rng = np.random.default_rng(seed)
    for start in rng.choice(np.arange(0, 3 * 1440 - 20, 140), size=30, replace=False):
        periods[2][start : start + 6] += 8.0
    return periods


def test_a_disturbed_period_is_left_out_of_the_alert_budget() -> None:
    """Counting every period, the storm's 30 alerts exceed a budget of 15 and lift the warning threshold over
    the bursts; with one period free to be disturbed the budget counts the four others (12 days: 12 alerts) and
    the threshold falls back under the bursts, each period but the storm within a rate of one a day."""
    from models.lifecycle import LevelThresholds, replay_series
    from training.calibrate import calibrate_alerts

    periods = _disturbed_periods(11)
    every = CalibrationConfig()
    counted_all, _ = calibrate_alerts(periods, calibrate(np.concatenate(periods), every), every)
    spared = CalibrationConfig(disturbed_periods=1)
    thresholds, policy = calibrate_alerts(periods, calibrate(np.concatenate(periods), spared), spared)
    assert thresholds.warning < 8.0 < counted_all.warning
    levels = LevelThresholds(thresholds.warning, thresholds.critical, policy)
    counts = [len(replay_series(p, levels)) for p in periods]
    assert counts[2] >= 25  # the storm still alerts: it is left out of the count, not hidden
    assert sum(counts) - counts[2] <= 12
    record = thresholds.alert_calibration
    assert record is not None and record.disturbed_periods == 1
    assert record.counted_per_day == pytest.approx((sum(counts) - counts[2]) / 12.0)
    assert record.achieved_per_day == pytest.approx(sum(counts) / 15.0)
    assert counted_all.alert_calibration is not None
    assert counted_all.alert_calibration.counted_per_day is None  # nothing left out


def test_disturbed_periods_must_leave_a_period_counted() -> None:
    from pydantic import ValidationError

    from training.calibrate import calibrate_alerts

    with pytest.raises(ValidationError, match="no held-out period counted"):
        CalibrationConfig(cross_fit_folds=2, disturbed_periods=3)
    scores = _noisy_validation(3)
    config = CalibrationConfig(disturbed_periods=1)  # one series: a validation part alone
    with pytest.raises(CalibrationError, match="leaves none of 1 held-out periods counted"):
        calibrate_alerts([scores], calibrate(scores, config), config)
    unscored = np.full(500, np.nan)  # a part too short for a window is no period
    with pytest.raises(CalibrationError, match="leaves none of 1 held-out periods counted"):
        calibrate_alerts([scores, unscored], calibrate(scores, config), config)


def test_the_budget_with_periods_left_out_never_breaks_when_alerts_only_fall() -> None:
    """The threshold search bisects, so fewer alerts in any period must never break a budget that more
    alerts kept: periods of unequal length (a validation part, fleet parts), counts at random."""
    from training.calibrate import AlertBudget

    rng = np.random.default_rng(0)
    for _ in range(2_000):
        days = tuple(float(d) for d in rng.uniform(0.5, 12.0, size=int(rng.integers(2, 7))))
        budget = AlertBudget(1.0, days, int(rng.integers(1, len(days))), max_share=1.0, points=1)
        more = [int(c) for c in rng.integers(0, 40, size=len(days))]
        fewer = [int(rng.integers(0, c + 1)) for c in more]
        if budget.allows(more, 0):
            assert budget.allows(fewer, 0), (days, budget.disturbed, more, fewer)
    # the case that ranking periods by alerts a day gets wrong: leaving out the 1-day period's 2 alerts a day
    budget = AlertBudget(1.0, (1.0, 10.0, 10.0), 1, max_share=1.0, points=1)
    assert budget.allows([2, 30, 9], 0) and budget.allows([2, 15, 9], 0)


def test_a_manifest_without_periods_left_out_is_written_as_before_them() -> None:
    """A server of an earlier release refuses manifest fields it does not know: the two fields of disturbed
    periods are written only when periods were left out, and either way the record loads back equal."""
    from models.manifest import AlertCalibration

    plain = AlertCalibration(
        target_per_day=1.0,
        achieved_per_day=0.9,
        validation_alerts=15,
        validation_days=16.5,
        sampling_interval_s=60.0,
        candidates_tried=9,
    )
    assert "disturbed_periods" not in plain.model_dump() and "counted_per_day" not in plain.model_dump()
    spared = plain.model_copy(update={"disturbed_periods": 1, "counted_per_day": 0.97})
    assert spared.model_dump(mode="json")["counted_per_day"] == 0.97
    for record in (plain, spared):
        assert AlertCalibration.model_validate(record.model_dump(mode="json")) == record


def test_the_warning_threshold_never_breaks_the_budget_its_critical_one_keeps() -> None:
    """The point-level critical threshold is rarely a score value; the warning search assumed its last
    candidate (a score just under critical) within budget, and it was not: 2 alerts in a day for a budget of
    one. The critical threshold, within budget, is now that last candidate (found by a review)."""
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.0, 1.0, 1440)  # one day at 60 s: one alert allowed
    scores[300:303] = 4.9  # a bump under the point-level critical threshold
    scores[900:903] = 10.0  # a burst over it: already the one alert
    config = CalibrationConfig(
        method="quantile",
        warning_risk=0.01,
        critical_risk=0.0017,
        false_alerts_per_day=1.0,
        cross_fit_folds=0,
    )
    point = calibrate(scores, config)
    assert 4.9 < point.critical < 10.0
    thresholds, policy = calibrate_alerts([scores], point, config)
    counts, _ = _alerts_by_series([scores], thresholds.warning, thresholds.critical, policy)
    assert sum(counts) <= 1 and thresholds.warning > 4.9


def test_tied_scores_put_the_thresholds_above_the_tie() -> None:
    """Constant (or coarse) validation scores: a threshold at the tied value makes every normal point at its
    level (from the threshold up), so a constant score was critical forever. It moves just above the tie."""
    config = CalibrationConfig(false_alerts_per_day=None, cross_fit_folds=0)
    for scores in (np.zeros(2000), np.full(2000, 0.5)):
        thresholds = calibrate(scores, config)
        assert thresholds.warning > scores[0] and thresholds.critical > scores[0]
    mostly = np.zeros(2000)
    mostly[::200] = np.linspace(1.0, 2.0, 10)
    thresholds = calibrate(mostly, config)
    assert np.mean(mostly >= thresholds.warning) <= 0.005  # the few real values, not the zeros
    smooth = np.random.default_rng(1).normal(size=5000)
    untouched = calibrate(smooth, CalibrationConfig(method="quantile", false_alerts_per_day=None))
    assert untouched.warning == pytest.approx(np.quantile(smooth, 1 - config.warning_risk))


def test_adaptive_calibration_meets_the_budget_with_the_thresholds_the_bundle_serves() -> None:
    """Five held-out periods of one stream at different noise scales (a quiet period and a loud one, as
    machines and weeks differ). Per-stream thresholds anchored where the fixed calibration put its levels fall
    on the quiet periods and break the budget there; calibrated with ``thresholds="adaptive"``, each period is
    replayed as a new stream that adapts from its own start, and the anchors it chooses keep the budget with
    the policy the bundle then serves."""
    from models.lifecycle import LevelThresholds

    periods = [
        _noisy_validation(40 + i, n=3 * 1440) * scale for i, scale in enumerate((0.3, 1.0, 1.0, 2.5, 0.5))
    ]
    budget = math.floor(1.0 * 15 + 1e-9)

    def alerts(thresholds: Thresholds, policy: AlertPolicy) -> int:
        counts, _ = _alerts_by_series(
            periods, thresholds.warning, thresholds.critical, policy, thresholds.baseline
        )
        return sum(counts)

    fixed_config = CalibrationConfig(false_alerts_per_day=1.0)
    fixed, fixed_policy = calibrate_alerts(
        periods, calibrate(np.concatenate(periods), fixed_config), fixed_config
    )
    assert fixed_policy.thresholds == "fixed" and alerts(fixed, fixed_policy) <= budget
    following = fixed_policy.model_copy(update={"thresholds": "adaptive"})
    assert alerts(fixed, following) > budget  # the fixed anchors, followed per stream, page far more

    config = CalibrationConfig(false_alerts_per_day=1.0, thresholds="adaptive")
    adaptive, policy = calibrate_alerts(periods, calibrate(np.concatenate(periods), config), config)
    assert policy.thresholds == "adaptive"
    assert alerts(adaptive, policy) <= budget
    assert adaptive.alert_calibration is not None and adaptive.alert_calibration.validation_alerts == alerts(
        adaptive, policy
    )
    assert adaptive.warning > fixed.warning  # the anchors rise to pay for following the quiet periods down
    # Anchors above every held-out score: the lifecycle is chosen by the share of points over the thresholds
    # each stream had in effect (the pooled share against the anchors was 0 for every lifecycle, a tie).
    assert adaptive.warning > max(float(p.max()) for p in periods)
    assert adaptive.levels[0].params["validation_exceedance"] > 0
    LevelThresholds(adaptive.warning, adaptive.critical, policy, adaptive.baseline)  # servable as recorded


def test_infinite_held_out_scores_are_refused_with_the_reason() -> None:
    """NaN marks a point no window scored; inf is a model whose reconstruction overflowed, whose thresholds
    would mean nothing (a review found one such case raised IndexError in the alert search)."""
    from training.calibrate import calibrate_held_out

    periods = [_noisy_validation(50 + i, n=1440) for i in range(3)]
    periods[1][100] = np.inf
    with pytest.raises(CalibrationError, match="1 held-out scores are infinite"):
        calibrate_held_out(periods, CalibrationConfig())


def test_a_critical_budget_share_puts_the_one_point_shortcut_within_its_share_of_the_budget() -> None:
    """With ``critical_budget_share`` the critical threshold is the lowest level whose one-point alerts alone
    stay within that share of the budget on the held-out data (here half of six a day: three), the warning
    threshold stays within the whole budget with it, and the manifest records the share and the point level."""
    scores = _noisy_validation(7)
    config = CalibrationConfig(false_alerts_per_day=1.0, critical_budget_share=0.5)
    point = calibrate(scores, config)
    thresholds, policy = calibrate_alerts(scores, point, config)
    only_critical, _ = _alerts_by_series([scores], thresholds.critical, thresholds.critical, policy, None)
    assert sum(only_critical) <= 3
    below = float(np.max(scores[scores < thresholds.critical]))  # the next lower level fires more often
    assert sum(_alerts_by_series([scores], below, below, policy, None)[0]) > 3
    both, _ = _alerts_by_series([scores], thresholds.warning, thresholds.critical, policy, None)
    assert sum(both) <= 6 and thresholds.warning <= thresholds.critical
    level = thresholds.levels[1]
    assert level.params["critical_budget_share"] == 0.5 and level.params["point_level"] == point.critical
    default, _ = calibrate_alerts(scores, point, CalibrationConfig(false_alerts_per_day=1.0))
    assert thresholds.critical < default.critical  # the tail estimate sits higher on these scores
