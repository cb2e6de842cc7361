"""Alert-level metrics: firing spans measured against labelled events, worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from models.lifecycle import AlertSpan, LevelThresholds
from models.manifest import AlertPolicy
from training.alert_metrics import evaluate_alerts, event_runs, measure_alerts


def labels_with(n: int, *events: tuple[int, int]) -> np.ndarray:
    y = np.zeros(n, dtype=np.int8)
    for start, end in events:
        y[start:end] = 1
    return y


def test_event_runs_are_maximal_runs_of_ones() -> None:
    assert event_runs([0, 1, 1, 0, 1, 0, 0, 1]) == [(1, 3), (4, 5), (7, 8)]
    assert event_runs([0, 0]) == []


def test_measure_alerts_counts_recall_false_alerts_delay_and_time() -> None:
    # 1440 points at one a minute = one day; events at [100, 200) and [500, 520) and [900, 910).
    y = labels_with(1440, (100, 200), (500, 520), (900, 910))
    spans = [
        AlertSpan(90, 130, False),  # open before the first event: delay 0
        AlertSpan(150, 160, False),  # a second page for the same event
        AlertSpan(507, 530, True),  # seven points late
        AlertSpan(1000, 1010, False),  # false
        AlertSpan(1200, 1440, False),  # false, never resolved
    ]
    report = measure_alerts(spans, y, sampling_interval_s=60.0)
    assert report.n_events == 3 and report.events_detected == 2
    assert report.event_recall == pytest.approx(2 / 3)
    assert report.n_alerts == 5 and report.n_false_alerts == 2
    assert report.false_alerts_per_day == pytest.approx(2.0)
    assert report.median_delay_points == 3.5  # median of 0 and 7
    assert report.alerts_per_detected_event == pytest.approx(3 / 2)
    assert report.time_in_alert == pytest.approx((40 + 10 + 23 + 10 + 240) / 1440)
    assert report.labelled_share == pytest.approx(130 / 1440)


def test_measure_alerts_per_day_follows_the_sampling_interval() -> None:
    y = labels_with(1440)
    spans = [AlertSpan(10, 20, False)]
    assert measure_alerts(spans, y, 60.0).false_alerts_per_day == pytest.approx(1.0)
    assert measure_alerts(spans, y, 1.0).false_alerts_per_day == pytest.approx(60.0)
    with pytest.raises(ValueError, match="sampling_interval_s"):
        measure_alerts(spans, y, 0.0)


def test_measure_alerts_without_detections_reports_nan_delay() -> None:
    report = measure_alerts([], labels_with(100, (10, 20)), 60.0)
    assert report.event_recall == 0.0 and report.n_alerts == 0
    assert math.isnan(report.median_delay_points) and math.isnan(report.alerts_per_detected_event)


def test_evaluate_alerts_runs_the_scores_through_the_lifecycle() -> None:
    scores = np.full(300, 0.1)
    scores[:5] = np.nan  # unscored warm-up
    scores[100:110] = 2.0  # an anomaly the lifecycle fires on at its third point (k = 3)
    scores[200] = 5.0  # a lone critical point: a false alert
    y = labels_with(300, (100, 110))
    levels = LevelThresholds(1.0, 4.0, AlertPolicy(k=3, n=5, m=5))
    report = evaluate_alerts(scores, y, levels, 60.0)
    assert report.events_detected == 1 and report.median_delay_points == 2
    assert report.n_alerts == 2 and report.n_false_alerts == 1
    # resolved at the fifth point under exit: 114 (after 110..114) and 205 (after 201..205)
    assert report.time_in_alert == pytest.approx((114 - 102 + 205 - 200) / 300)


def test_the_alert_ceiling_is_the_best_recall_any_threshold_reaches_within_the_budget() -> None:
    """An oracle over thresholds: two events, one tall and one barely over the noise; a threshold low enough for
    the small one brings false alerts, so within one false alert a day only the tall one is reachable."""
    from models.lifecycle import LevelThresholds
    from models.manifest import AlertPolicy
    from training.alert_metrics import alert_ceiling, evaluate_alerts

    rng = np.random.default_rng(3)
    scores = rng.gamma(2.0, 0.5, size=4 * 1440)  # four days, one point a minute
    labels = np.zeros(scores.size, dtype=int)
    scores[1000:1060] += 30.0
    labels[1000:1060] = 1
    scores[3000:3060] += 1.0  # hardly over the noise
    labels[3000:3060] = 1
    levels = LevelThresholds(50.0, 100.0, AlertPolicy(k=3, n=5, m=10))  # calibrated too high: nothing fires
    assert evaluate_alerts(scores, labels, levels, 60.0).event_recall == 0.0
    ceiling = alert_ceiling(scores, labels, levels, 60.0, max_false_alerts_per_day=1.0)
    assert ceiling.event_recall == 0.5 and ceiling.false_alerts_per_day <= 1.0
    assert ceiling.time_in_alert <= 2.0 * labels.mean()
    at = evaluate_alerts(
        scores, labels, LevelThresholds(ceiling.warning, 2 * ceiling.warning, levels.policy), 60.0
    )
    assert at.event_recall == ceiling.event_recall
    generous = alert_ceiling(
        scores, labels, levels, 60.0, max_false_alerts_per_day=1e9, max_alert_time_ratio=1e9
    )
    assert generous.event_recall == 1.0  # without a budget, a low threshold catches both
