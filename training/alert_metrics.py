"""Alerts as an operator lives them: a scored series run through the alert lifecycle (``models.lifecycle``, the
reference equal to the service's Lua), then measured against labelled anomaly events.

- **event recall**: labelled events (maximal runs of 1s) overlapped by a firing alert;
- **time in alert**: share of the series' points inside firing alerts, beside the share labelled anomalous;
- **false alerts per day**: firing alerts that overlap no labelled event, per day of data
  (``points × sampling_interval_s / 86400``);
- **median detection delay**: points from a detected event's start to the first firing point inside it
  (0 when an alert was already firing when it started);
- **alerts per detected event**: firing alerts that overlap an event, per event they detect (1.0: one page per
  incident; more: the incident was paged in pieces).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass

import numpy as np
import numpy.typing as npt

from models.lifecycle import AlertSpan, LevelThresholds, replay_series

SECONDS_PER_DAY = 86_400.0


@dataclass(frozen=True)
class AlertReport:
    n_points: int
    days: float
    n_events: int
    events_detected: int
    event_recall: float  # NaN without labelled events
    n_alerts: int
    n_false_alerts: int
    false_alerts_per_day: float
    time_in_alert: float
    labelled_share: float
    median_delay_points: float  # NaN when no event was detected
    alerts_per_detected_event: float  # NaN when no event was detected

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def event_runs(labels: npt.ArrayLike) -> list[tuple[int, int]]:
    """Labelled events: maximal runs of 1s as ``[start, end)``."""
    y = np.asarray(labels).astype(np.int8)
    edges = np.diff(np.concatenate(([0], y, [0])))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist(), strict=True))


def measure_alerts(spans: list[AlertSpan], labels: npt.ArrayLike, sampling_interval_s: float) -> AlertReport:
    """Alert-level figures of firing ``spans`` over a series with per-point ``labels`` (0/1)."""
    if sampling_interval_s <= 0:
        raise ValueError(f"sampling_interval_s must be positive, got {sampling_interval_s}")
    y = np.asarray(labels)
    n_points = int(y.size)
    events = event_runs(y)
    delays: list[int] = []
    true_alerts = 0
    for span in spans:
        if any(span.start < end and span.end > start for start, end in events):
            true_alerts += 1
    for start, end in events:
        overlapping = [s for s in spans if s.start < end and s.end > start]
        if overlapping:
            delays.append(max(0, min(s.start for s in overlapping) - start))
    in_alert = np.zeros(n_points, dtype=bool)
    for span in spans:
        in_alert[span.start : span.end] = True
    days = n_points * sampling_interval_s / SECONDS_PER_DAY
    false_alerts = len(spans) - true_alerts
    return AlertReport(
        n_points=n_points,
        days=days,
        n_events=len(events),
        events_detected=len(delays),
        event_recall=len(delays) / len(events) if events else math.nan,
        n_alerts=len(spans),
        n_false_alerts=false_alerts,
        false_alerts_per_day=false_alerts / days if days else math.nan,
        time_in_alert=float(in_alert.mean()) if n_points else math.nan,
        labelled_share=float(np.mean(y == 1)) if n_points else math.nan,
        median_delay_points=float(statistics.median(delays)) if delays else math.nan,
        alerts_per_detected_event=true_alerts / len(delays) if delays else math.nan,
    )


def evaluate_alerts(
    scores: npt.ArrayLike, labels: npt.ArrayLike, levels: LevelThresholds, sampling_interval_s: float
) -> AlertReport:
    """Run ``scores`` (NaN = unscored) through a fresh stream's lifecycle and measure its alerts."""
    return measure_alerts(replay_series(scores, levels), labels, sampling_interval_s)


@dataclass(frozen=True)
class AlertCeiling:
    """The best event recall any single warning threshold reaches on a labelled series within an alert budget,
    with the lifecycle fixed (critical at the calibrated critical/warning ratio). An **oracle**: the threshold is
    chosen on the labelled data itself, so it is never a result to report as detection quality. It separates
    the two reasons a deployment misses its target: scores that cannot meet it at any threshold (the ceiling is
    low too), or calibrated thresholds that do not transfer to the test period (the ceiling is high)."""

    event_recall: float  # NaN without labelled events; 0.0 when no threshold stays within the budget
    false_alerts_per_day: float
    time_in_alert: float
    warning: float  # the threshold that reached it (NaN if none)
    max_false_alerts_per_day: float
    max_alert_time_ratio: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def alert_ceiling(
    scores: npt.ArrayLike,
    labels: npt.ArrayLike,
    levels: LevelThresholds,
    sampling_interval_s: float,
    max_false_alerts_per_day: float = 1.0,
    max_alert_time_ratio: float = 2.0,
    n_candidates: int = 40,
) -> AlertCeiling:
    """:class:`AlertCeiling` over warning thresholds at the score quantiles ``1 - 10**-x``, x in [1, 4], with
    fixed thresholds: at most ``max_false_alerts_per_day`` false alerts a day and time in alert at most
    ``max_alert_time_ratio`` times the labelled share."""
    values = np.asarray(scores, dtype=np.float64)
    finite = values[np.isfinite(values)]
    ratio = levels.critical / levels.warning if levels.warning > 0 else 1.0
    policy = levels.policy.model_copy(update={"thresholds": "fixed"})
    best: tuple[float, float, float, float] | None = None  # recall, false/day, time in alert, warning
    for warning in (
        np.unique(np.quantile(finite, 1.0 - np.logspace(-1, -4, n_candidates))) if finite.size else []
    ):
        candidate = LevelThresholds(float(warning), float(warning) * max(ratio, 1.0), policy)
        report = evaluate_alerts(values, labels, candidate, sampling_interval_s)
        if math.isnan(report.event_recall):
            return AlertCeiling(
                math.nan, math.nan, math.nan, math.nan, max_false_alerts_per_day, max_alert_time_ratio
            )
        within = (
            report.false_alerts_per_day <= max_false_alerts_per_day
            and report.time_in_alert <= max_alert_time_ratio * report.labelled_share
        )
        if within and (best is None or report.event_recall > best[0]):
            best = (report.event_recall, report.false_alerts_per_day, report.time_in_alert, float(warning))
    if best is None:
        return AlertCeiling(0.0, math.nan, math.nan, math.nan, max_false_alerts_per_day, max_alert_time_ratio)
    return AlertCeiling(*best, max_false_alerts_per_day, max_alert_time_ratio)
