"""The alert lifecycle as a pure-Python reference: event for event what the Lua script in ``service/alerts.py``
does in Redis (a property-based test drives both with the same scores). Offline evaluation and the
false-alert-rate calibration run scores through it, so they measure exactly what the service would raise.

Per stream: ``ok → pending → firing → ok``. A point at or over the warning threshold opens ``pending``; k of the
last n points at or over warning, or one at or over critical, make it ``firing``; a pending alert whose last n
points are all under warning is ``cancelled``. A firing alert escalates once to critical (an extra ``firing``
event with ``escalated``), and resolves after m points in a row under ``exit_ratio × warning`` (hysteresis).
Points whose ts is not after the last one seen are skipped. Thresholds are fixed, or follow the stream
(:class:`models.manifest.AdaptivePolicy`).

Arithmetic is plain IEEE double (+, −, ×, ÷, sqrt, in the Lua's order), so both sides agree to the bit.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from models.manifest import AlertPolicy, ScoreBaseline

STATES = ("ok", "pending", "firing")
LEVEL_CHARS = "012"  # normal, warning, critical; "-" for a skipped point


@dataclass(frozen=True)
class LevelThresholds:
    """The calibrated levels, the lifecycle policy, and (for adaptive thresholds) the validation baseline."""

    warning: float
    critical: float
    policy: AlertPolicy
    baseline: ScoreBaseline | None = None

    def __post_init__(self) -> None:
        if self.policy.thresholds == "adaptive" and self.baseline is None:
            raise ValueError("adaptive thresholds need the bundle's validation baseline")


@dataclass(frozen=True)
class AdaptiveConstants:
    """What the Lua receives for adaptive thresholds, computed once per call (same doubles on both sides)."""

    z_warning: float
    z_critical: float
    z_exit: float
    alpha: float
    sigma_floor: float
    warmup: int
    min_ratio: float
    max_ratio: float

    @classmethod
    def of(cls, levels: LevelThresholds) -> AdaptiveConstants:
        assert levels.baseline is not None
        base, adaptive = levels.baseline, levels.policy.adaptive
        return cls(
            z_warning=(math.sqrt(levels.warning) - base.root_mean) / base.root_std,
            z_critical=(math.sqrt(levels.critical) - base.root_mean) / base.root_std,
            z_exit=(math.sqrt(levels.warning * levels.policy.exit_ratio) - base.root_mean) / base.root_std,
            alpha=1.0 - 0.5 ** (1.0 / adaptive.half_life_points),
            sigma_floor=base.root_std * adaptive.sigma_floor_ratio,
            warmup=adaptive.warmup_points,
            min_ratio=adaptive.min_ratio,
            max_ratio=adaptive.max_ratio,
        )


@dataclass
class StreamAlertState:
    """One stream's lifecycle (and adaptive-threshold) state: what the Lua keeps in the stream's alert hash."""

    state: str = "ok"
    severity: str = "warning"
    started: float = 0.0
    peak: float = 0.0
    peak_sensors: str = ""
    flags: str = ""
    below: int = 0
    last_ts: float | None = None
    seen: int = 0  # adaptive: points learned from during the warm-up (capped at the warm-up length)
    mean: float = 0.0  # adaptive: mean of sqrt(score)
    var: float = 0.0  # adaptive: variance of sqrt(score)


@dataclass(frozen=True)
class LifecycleEvent:
    state: str  # pending, firing, cancelled, resolved
    severity: str
    started_ts: float
    ts: float
    peak_score: float
    sensors: str  # comma-joined top sensors at the peak
    escalated: bool
    threshold: float  # the level's threshold in effect at this point


@dataclass
class StepResult:
    events: list[LifecycleEvent] = field(default_factory=list)
    levels: list[str] = field(default_factory=list)  # one of "0", "1", "2", "-" per point


def stream_thresholds(
    state: StreamAlertState, levels: LevelThresholds, constants: AdaptiveConstants | None
) -> tuple[float, float, float]:
    """(warning, critical, exit) in effect for the stream's next point. Fixed: the calibrated levels and
    ``exit_ratio × warning``. Adaptive, after the warm-up: each at the standard score of sqrt(score) it has in
    the validation distribution, in the stream's own (exit at most warning)."""
    if constants is None or state.seen < constants.warmup:
        return levels.warning, levels.critical, levels.warning * levels.policy.exit_ratio
    sd = max(math.sqrt(state.var), constants.sigma_floor)
    root_w = state.mean + constants.z_warning * sd
    root_c = state.mean + constants.z_critical * sd
    root_e = max(state.mean + constants.z_exit * sd, 0.0)
    warning = min(
        max(root_w * root_w, levels.warning * constants.min_ratio), levels.warning * constants.max_ratio
    )
    critical = min(
        max(root_c * root_c, levels.critical * constants.min_ratio), levels.critical * constants.max_ratio
    )
    return warning, max(critical, warning), min(root_e * root_e, warning)


def advance(
    state: StreamAlertState,
    levels: LevelThresholds,
    points: Iterable[tuple[float, float, str]],
) -> StepResult:
    """Advance ``state`` in place over ``(ts, score, sensors)`` points; returns the events and per-point levels."""
    policy = levels.policy
    constants = AdaptiveConstants.of(levels) if policy.thresholds == "adaptive" else None
    k, n, m = policy.k, policy.n, policy.m
    out = StepResult()
    s = state
    for ts, score, sensors in points:
        if s.last_ts is not None and not ts > s.last_ts:
            out.levels.append("-")
            continue
        s.last_ts = ts
        warn, crit, exitv = stream_thresholds(s, levels, constants)
        over = score >= warn
        s.flags = (s.flags + ("1" if over else "0"))[-n:]
        hits = s.flags.count("1")
        if s.state == "ok" and over:
            s.state, s.severity, s.started, s.peak, s.peak_sensors, s.below = (
                "pending",
                "warning",
                ts,
                score,
                sensors,
                0,
            )
            out.events.append(_event(s, "pending", ts, False, warn, crit))
        if s.state == "pending":
            if score > s.peak:
                s.peak, s.peak_sensors = score, sensors
            if score >= crit:
                s.severity = "critical"
            if hits >= k or score >= crit:
                s.state = "firing"
                out.events.append(_event(s, "firing", ts, False, warn, crit))
            elif hits == 0:
                s.state = "ok"
                out.events.append(_event(s, "cancelled", ts, False, warn, crit))
        elif s.state == "firing":
            if score > s.peak:
                s.peak, s.peak_sensors = score, sensors
            if score >= crit and s.severity != "critical":
                s.severity = "critical"
                out.events.append(_event(s, "firing", ts, True, warn, crit))
            s.below = s.below + 1 if score < exitv else 0
            if s.below >= m:
                out.events.append(_event(s, "resolved", ts, False, warn, crit))
                s.state, s.flags, s.below, s.peak, s.peak_sensors = "ok", "", 0, 0.0, ""
        out.levels.append("2" if score >= crit else "1" if over else "0")
        if constants is not None:
            _learn(s, constants, score, warn)
    return out


def _learn(s: StreamAlertState, c: AdaptiveConstants, score: float, warn: float) -> None:
    """Update the stream's mean and variance of sqrt(score): every point of the warm-up (Welford), then only
    points under warning while no alert is open, with an exponential weight."""
    root = math.sqrt(score)
    if s.seen < c.warmup:
        s.seen = s.seen + 1
        d = root - s.mean
        s.mean = s.mean + d / s.seen
        s.var = s.var + (d * (root - s.mean) - s.var) / s.seen
    elif s.state == "ok" and score < warn:
        d = root - s.mean
        s.mean = s.mean + c.alpha * d
        s.var = (1 - c.alpha) * (s.var + c.alpha * d * d)


def _event(
    s: StreamAlertState, name: str, ts: float, escalated: bool, warn: float, crit: float
) -> LifecycleEvent:
    return LifecycleEvent(
        state=name,
        severity=s.severity,
        started_ts=s.started,
        ts=ts,
        peak_score=s.peak,
        sensors=s.peak_sensors,
        escalated=escalated,
        threshold=crit if s.severity == "critical" else warn,
    )


@dataclass(frozen=True)
class AlertSpan:
    """One firing alert over point indices ``[start, end)``: from its firing point to the point that resolved
    it (the series' end when it never resolved)."""

    start: int
    end: int
    critical: bool


def replay_series(scores: npt.ArrayLike, levels: LevelThresholds) -> list[AlertSpan]:
    """Run a whole series of per-point scores (NaN = unscored, skipped as the service never sees it) through
    a fresh stream's lifecycle, ts = point index; returns the firing alerts."""
    values = np.asarray(scores, dtype=np.float64)
    index = np.flatnonzero(~np.isnan(values))
    result = advance(
        StreamAlertState(), levels, zip(index.tolist(), values[index].tolist(), _blanks(), strict=False)
    )
    spans: list[AlertSpan] = []
    opened: int | None = None
    critical = False
    for event in result.events:
        if event.state == "firing" and not event.escalated:
            opened, critical = int(event.ts), event.severity == "critical"
        elif event.state == "firing":
            critical = True
        elif event.state == "resolved" and opened is not None:
            spans.append(AlertSpan(opened, int(event.ts), critical))
            opened = None
    if opened is not None:
        spans.append(AlertSpan(opened, values.size, critical))
    return spans


def _blanks() -> Iterable[str]:
    while True:
        yield ""
