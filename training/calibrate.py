"""Alert thresholds from validation (held-out normal) scores only.

Point level: POT (Siffer et al. 2017) or quantiles. Alert level: the warning threshold and lifecycle (k, n, m)
that the reference lifecycle (``models.lifecycle``, equal to the service's) says raise at most a target number
of alerts a day on the held-out parts (optionally leaving out the periods with the most alerts: an unlabelled
incident in "normal" data), choosing the most sensitive such setting; with fixed thresholds, or with
thresholds that follow each stream (each held-out period replayed as a new stream).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from itertools import repeat

import numpy as np
import numpy.typing as npt
from libspot import Spot

from models.lifecycle import LevelThresholds, StreamAlertState, advance, replay_series
from models.manifest import AlertCalibration, AlertPolicy, ScoreBaseline, ThresholdLevel, Thresholds
from training.config import CalibrationConfig
from training.disturbed import choose_disturbed


class CalibrationError(ValueError):
    pass


def pot_threshold(
    scores: npt.NDArray[np.float64], risk: float, level: float
) -> tuple[float, dict[str, float]]:
    """Peaks over threshold: GPD fitted to the excesses over the ``level`` quantile, threshold for risk q.

    libspot (by the method's author) fits by Grimshaw's trick; returns the threshold and the fit parameters.
    """
    spot = Spot(q=risk, low=False, discard_anomalies=True, level=level, max_excess=len(scores))
    spot.fit(scores)
    threshold = float(spot.anomaly_threshold)
    params = {
        "q": risk,
        "level": level,
        "initial_threshold": float(spot.excess_threshold),
        "gamma": float(spot.gamma),
        "sigma": float(spot.sigma),
        "n": float(len(scores)),
    }
    return threshold, params


def calibrate(validation_scores: npt.NDArray[np.floating], config: CalibrationConfig) -> Thresholds:
    """Warning and critical thresholds from per-point validation scores (NaN = unscored, ignored).

    POT falls back to the plain quantile for a level whose fit fails (not finite, or not above the POT initial
    level, i.e. no tail was fitted); the manifest records which method each level used.
    """
    scores = np.asarray(validation_scores, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    if scores.size < 50:
        raise CalibrationError(f"only {scores.size} validation scores; need at least 50 to calibrate")
    levels: list[ThresholdLevel] = []
    for name, risk in (("warning", config.warning_risk), ("critical", config.critical_risk)):
        quantile = float(np.quantile(scores, 1.0 - risk))
        value, method, params = quantile, "quantile", {"quantile": 1.0 - risk}
        if config.method == "pot":
            try:
                pot_value, pot_params = pot_threshold(scores, risk, config.pot_level)
            except (RuntimeError, ValueError):
                pot_value, pot_params = math.nan, {}
            if math.isfinite(pot_value) and pot_value > pot_params.get("initial_threshold", math.inf):
                value, method, params = pot_value, "pot", pot_params
        if np.count_nonzero(scores == value) > 1 and float(np.mean(scores >= value)) > 2 * risk:
            # Ties at the threshold (constant or coarse scores) would put far more than ``risk`` of the normal
            # points at or over it, since a point is at a level from the threshold up: every normal point of a
            # constant score would be critical. The threshold moves just above the tied value.
            above = scores[scores > value]
            value = float(above.min()) if above.size else float(np.nextafter(value, np.inf))
        levels.append(ThresholdLevel(name=name, value=value, method=method, params=params))
    warning, critical = levels[0].value, max(levels[1].value, levels[0].value)
    stats = {
        "n": float(scores.size),
        "mean": float(scores.mean()),
        "std": float(scores.std()),
        "p50": float(np.quantile(scores, 0.5)),
        "p99": float(np.quantile(scores, 0.99)),
        "p999": float(np.quantile(scores, 0.999)),
        "max": float(scores.max()),
    }
    return Thresholds(
        warning=warning,
        critical=critical,
        levels=levels,
        validation_stats=stats,
        baseline=validation_baseline(scores),
    )


def validation_baseline(validation_scores: npt.NDArray[np.floating]) -> ScoreBaseline:
    """Mean and std of sqrt(score) on validation: where per-stream (adaptive) thresholds start from."""
    roots = np.sqrt(np.maximum(np.asarray(validation_scores, dtype=np.float64), 0.0))  # scores are >= 0
    roots = roots[np.isfinite(roots)]
    return ScoreBaseline(root_mean=float(roots.mean()), root_std=max(float(roots.std()), 1e-12))


@dataclass(frozen=True)
class _Choice:
    policy: AlertPolicy
    warning: float
    critical: float
    alerts: int
    exceedance: float  # share of validation points at or over warning: higher is more sensitive
    counted_per_day: float  # alerts a day over the periods the budget counts


def _alerts_by_series(
    series: list[npt.NDArray[np.float64]],
    warning: float,
    critical: float,
    policy: AlertPolicy,
    baseline: ScoreBaseline | None = None,
) -> tuple[list[int], int]:
    """Firing alerts of each series, each a fresh stream, and the points all of them keep open (``baseline``:
    where adaptive thresholds start from)."""
    levels = LevelThresholds(warning, critical, policy, baseline)
    counts, open_points = [], 0
    for scores in series:
        spans = replay_series(scores, levels)
        counts.append(len(spans))
        open_points += sum(s.end - s.start for s in spans)
    return counts, open_points


def _replayed_exceedance(series: list[npt.NDArray[np.float64]], levels: LevelThresholds) -> float:
    """The share of held-out points at or over the warning threshold each stream had in effect when they came
    (per-stream thresholds: the pooled scores against the anchors say nothing once the anchors sit above them)."""
    over = total = 0
    for scores in series:
        index = np.flatnonzero(np.isfinite(scores))
        points = zip(index.tolist(), scores[index].tolist(), repeat(""), strict=False)
        marks = advance(StreamAlertState(), levels, points).levels
        over += sum(mark in ("1", "2") for mark in marks)
        total += len(marks)
    return over / total if total else 0.0


@dataclass(frozen=True)
class AlertBudget:
    """At most ``per_day`` alerts a day over the held-out series, each a period of ``days[i]`` days, leaving out
    the ``disturbed`` periods with the most alerts beyond their own share of the budget (``per_day`` times
    their days; with periods of one length, those with the most alerts a day); all alerts together open at
    most ``max_share`` of the points. Leaving out the largest excesses is the most lenient choice of periods,
    so the budget stays monotone in the threshold (fewer alerts in any period never break it), as the
    bisection in ``_lowest_within`` needs; ranking by alerts a day is not, with periods of unequal length."""

    per_day: float
    days: tuple[float, ...]
    disturbed: int
    max_share: float
    points: int

    def counted(self, counts: list[int]) -> tuple[int, float]:
        """The alerts and days of the periods the budget counts."""
        by_excess = sorted(range(len(counts)), key=lambda i: counts[i] - self.per_day * self.days[i])
        kept = by_excess[: len(counts) - self.disturbed]
        return sum(counts[i] for i in kept), sum(self.days[i] for i in kept)

    def allows(self, counts: list[int], open_points: int) -> bool:
        alerts, days = self.counted(counts)
        return (
            alerts <= math.floor(self.per_day * days + 1e-9) and open_points <= self.max_share * self.points
        )


def _within(
    series: list[npt.NDArray[np.float64]],
    budget: AlertBudget,
    policy: AlertPolicy,
    baseline: ScoreBaseline,
    warning: float,
    critical: float,
) -> bool:
    """Within the alert budget: an alert that never closes is one alert, so the count alone would accept a
    threshold under the normal level; the share of points in alert rejects it."""
    counts, open_points = _alerts_by_series(series, warning, critical, policy, baseline)
    return budget.allows(counts, open_points)


def _same(within: Callable[[float, float], bool], critical: float) -> bool:
    return within(critical, critical)


def _under(within: Callable[[float, float], bool], critical: float, warning: float) -> bool:
    return within(warning, critical)


def _lowest_within(candidates: npt.NDArray[np.float64], within: Callable[[float], bool]) -> float:
    """The lowest of ascending ``candidates`` that is ``within`` budget, by bisection (alerts only grow as the
    threshold falls; the last candidate must be within)."""
    lo, hi = 0, len(candidates) - 1
    if within(float(candidates[lo])):
        return float(candidates[lo])
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if within(float(candidates[mid])):
            hi = mid
        else:
            lo = mid
    return float(candidates[hi])


def calibrate_alerts(
    validation_scores: npt.NDArray[np.floating] | list[npt.NDArray[np.floating]],
    point: Thresholds,
    config: CalibrationConfig,
) -> tuple[Thresholds, AlertPolicy]:
    """Thresholds and lifecycle for at most ``config.false_alerts_per_day`` alerts a day on validation.

    For each lifecycle of the grid that fires within ``config.min_incident_points`` points (k at most that),
    the lowest warning threshold within the budget (at most that many alerts,
    open together for at most ``config.max_alert_share`` of the validation points), with the point-level critical
    threshold in place, raised when critical points alone exceed the budget; the lifecycle kept is the
    most sensitive one: the largest share of validation points at or over its warning threshold (ties: smaller
    k, then smaller m). Several held-out series (the validation part, the cross-fitted blocks, each training
    part of a fleet) are replayed as streams of their own, their alerts and days added up, less the
    ``config.disturbed_periods`` series that ``AlertBudget`` leaves out. Never sees test data.
    """
    assert config.false_alerts_per_day is not None
    assert config.disturbed_periods != "auto", "calibrate_held_out resolves 'auto' first"
    parts = validation_scores if isinstance(validation_scores, list) else [validation_scores]
    arrays = [np.asarray(p, dtype=np.float64) for p in parts]
    series = [a for a in arrays if np.isfinite(a).any()]  # a part too short for a window scores nothing
    scores = np.concatenate(series)
    finite = np.sort(scores[np.isfinite(scores)])
    days = finite.size * config.sampling_interval_s / 86_400.0
    if config.disturbed_periods >= len(series):
        raise CalibrationError(
            f"disturbed_periods={config.disturbed_periods} leaves none of {len(series)} held-out periods counted"
        )
    budget = AlertBudget(
        per_day=config.false_alerts_per_day,
        days=tuple(int(np.isfinite(s).sum()) * config.sampling_interval_s / 86_400.0 for s in series),
        disturbed=config.disturbed_periods,
        max_share=config.max_alert_share,
        points=sum(s.size for s in series),
    )
    baseline = validation_baseline(finite)
    top = float(finite[-1]) * (1 + 1e-6) + 1e-12  # over every validation score
    candidates = np.unique(finite[finite.size // 2 :])  # never below the median
    if config.thresholds == "adaptive":
        # Per-stream thresholds fall to min_ratio of the anchors: only anchors up to top / min_ratio are sure to
        # raise no alert at all, so the candidates go on geometrically up to there.
        candidates = np.append(candidates, top * np.geomspace(1.0, 1.0 / config.adaptive.min_ratio, 33))
    else:
        candidates = np.append(candidates, top)  # no alert at all
    choices: list[_Choice] = []
    grid = [(k, n) for k, n in config.lifecycle_grid if k <= config.min_incident_points]
    if not grid:
        raise CalibrationError(
            f"no lifecycle in {config.lifecycle_grid} fires within min_incident_points="
            f"{config.min_incident_points} points"
        )
    for k, n in grid:
        for m in config.resolve_grid:
            policy = AlertPolicy(
                k=k,
                n=n,
                m=m,
                exit_ratio=config.exit_ratio,
                thresholds=config.thresholds,
                adaptive=config.adaptive,
            )
            within = partial(_within, series, budget, policy, baseline)
            if config.critical_budget_share is not None:
                share = replace(budget, per_day=budget.per_day * config.critical_budget_share)
                critical = _lowest_within(
                    candidates, partial(_same, partial(_within, series, share, policy, baseline))
                )
            else:
                critical = max(point.critical, float(candidates[0]))
                if not within(critical, critical):
                    critical = _lowest_within(candidates[candidates >= critical], partial(_same, within))
            # The critical threshold itself is the last candidate: it is within the budget (checked above), and a
            # score just under it need not be (a point-level critical is rarely a score value).
            under = np.append(candidates[candidates < critical], critical)
            warning = _lowest_within(under, partial(_under, within, critical))
            counts, _ = _alerts_by_series(series, warning, critical, policy, baseline)
            counted, counted_days = budget.counted(counts)
            if config.thresholds == "adaptive":
                exceedance = _replayed_exceedance(
                    series, LevelThresholds(warning, critical, policy, baseline)
                )
            else:
                exceedance = float(np.mean(finite >= warning))
            choices.append(
                _Choice(
                    policy,
                    warning,
                    critical,
                    sum(counts),
                    exceedance,
                    counted / counted_days if counted_days else 0.0,
                )
            )
    best = max(choices, key=lambda c: (c.exceedance, -c.policy.k, -c.policy.m, -c.warning))
    params = {
        "false_alerts_per_day": config.false_alerts_per_day,
        "k": float(best.policy.k),
        "n": float(best.policy.n),
        "m": float(best.policy.m),
        "validation_exceedance": best.exceedance,
    }
    warning_level = ThresholdLevel(
        name="warning", value=best.warning, method="false_alert_rate", params=params
    )
    critical_level = point.levels[1]
    if config.critical_budget_share is not None:
        critical_level = ThresholdLevel(
            name="critical",
            value=best.critical,
            method="false_alert_rate",
            params={
                **params,
                "critical_budget_share": config.critical_budget_share,
                "point_level": point.critical,
            },
        )
    elif best.critical != point.critical:
        critical_level = ThresholdLevel(
            name="critical",
            value=best.critical,
            method="false_alert_rate",
            params={**params, "raised_from": point.critical},
        )
    thresholds = Thresholds(
        warning=best.warning,
        critical=best.critical,
        levels=[warning_level, critical_level],
        validation_stats=point.validation_stats,
        baseline=baseline,
        alert_calibration=AlertCalibration(
            target_per_day=config.false_alerts_per_day,
            achieved_per_day=best.alerts / days if days else 0.0,
            validation_alerts=best.alerts,
            validation_days=days,
            sampling_interval_s=config.sampling_interval_s,
            candidates_tried=len(choices),
            disturbed_periods=config.disturbed_periods,
            counted_per_day=best.counted_per_day if config.disturbed_periods else None,
        ),
    )
    return thresholds, best.policy


def calibrate_held_out(
    series: list[npt.NDArray[np.floating]], config: CalibrationConfig
) -> tuple[Thresholds, AlertPolicy | None]:
    """Point-level thresholds over every held-out series, then (with a false-alert target) the alert-level
    warning threshold and lifecycle replaying each series as a stream of its own: what `vigil train` and `vigil
    calibrate` write into a bundle."""
    pooled = np.concatenate(series)
    # NaN is a point no window scored; an infinite score is a model that overflowed
    if np.isinf(pooled).any():
        raise CalibrationError(
            f"{int(np.isinf(pooled).sum())} held-out scores are infinite: the model's reconstruction overflowed"
        )
    thresholds = calibrate(pooled, config)
    if config.false_alerts_per_day is None:
        return thresholds, None
    if config.disturbed_periods == "auto":
        return _calibrate_auto(series, thresholds, config)
    return calibrate_alerts(series, thresholds, config)


def count_alerts(scores: npt.NDArray[np.floating], thresholds: Thresholds, policy: AlertPolicy) -> int:
    """Alerts that ``scores``, replayed as a new stream, fire at ``thresholds`` through ``policy``."""
    series = [np.asarray(scores, dtype=np.float64)]
    counts, _ = _alerts_by_series(
        series, thresholds.warning, thresholds.critical, policy, thresholds.baseline
    )
    return counts[0]


def _calibrate_auto(
    series: list[npt.NDArray[np.floating]], point: Thresholds, config: CalibrationConfig
) -> tuple[Thresholds, AlertPolicy]:
    """``disturbed_periods="auto"``: the setting the held-out periods choose (training/disturbed.py), then the
    calibration on every period with it; the manifest records the rates behind the choice."""
    assert config.false_alerts_per_day is not None

    def calibrate_on(
        rest: list[npt.NDArray[np.floating]], disturbed: int
    ) -> tuple[Thresholds, AlertPolicy | None]:
        return calibrate_held_out(rest, config.model_copy(update={"disturbed_periods": disturbed}))

    usable = [s for s in series if np.isfinite(np.asarray(s, dtype=np.float64)).any()]
    choice = choose_disturbed(
        usable, config.false_alerts_per_day, config.sampling_interval_s, calibrate_on, count_alerts
    )
    thresholds, policy = calibrate_alerts(
        series, point, config.model_copy(update={"disturbed_periods": choice.chosen})
    )
    assert thresholds.alert_calibration is not None
    calibration = thresholds.alert_calibration.model_copy(
        update={"disturbed_choice": {str(d): rate for d, rate in choice.out_of_period_per_day.items()}}
    )
    return thresholds.model_copy(update={"alert_calibration": calibration}), policy
