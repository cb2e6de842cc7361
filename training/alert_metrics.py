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
