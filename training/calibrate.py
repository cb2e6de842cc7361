"""Alert thresholds from validation (held-out normal) scores only: POT (Siffer et al. 2017) or quantiles."""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from libspot import Spot

from models.manifest import ThresholdLevel, Thresholds
from training.config import CalibrationConfig


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
    return Thresholds(warning=warning, critical=critical, levels=levels, validation_stats=stats)
