"""Scoring options fitted on validation windows only: per-sensor error scales and the level term's statistics.

The fitted numbers go into the manifest's ``ScoreDefinition``; ``models.scoring`` applies them identically
offline and in the service.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, model_validator

from models.manifest import FastSmoothing, LevelTerm, ScoreDefinition, check_two_speeds
from models.scoring import (
    F32,
    ModelOutput,
    Reconstruct,
    error_terms,
    recent_level,
    reconstruct_all,
    score_windows,
    window_ends,
)

IQR_TO_SIGMA = 1.349  # interquartile range of a normal distribution, in standard deviations


class ScoreOptions(BaseModel):
    """What ``vigil train --score`` asks for (JSON); the statistics behind it come from validation."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    standardise: Literal["none", "median", "q99"] = "none"  # divide each sensor's error by this statistic
    scale_floor: float = Field(0.1, gt=0)  # of the median over sensors of that statistic
    smoothing_alpha: float | None = Field(None, gt=0, le=1)
    # A second, faster causal average beside ``smoothing_alpha`` (larger alpha): each sensor's term is the larger
    # of the two, the fast one weighted so that both have the same 99th percentile of the score on validation.
    fast_smoothing_alpha: float | None = Field(None, gt=0, le=1)
    aggregation: Literal["mean", "top_k", "max"] = "mean"
    top_k: int | None = Field(None, ge=1)
    # "absolute": each sensor's term is the absolute error (and level deviation) instead of its square, so one
    # sensor's large error weighs less against many sensors' moderate ones (Hundman et al., KDD 2018, smooth
    # absolute prediction errors with an exponential average, as here).
    error: Literal["squared", "absolute"] = "squared"
    level_alpha: float | None = Field(None, gt=0, le=1)  # None: no level term
    # The level relative to the window's own slower causal average with this alpha instead of to validation:
    # a level change inside the window, not a level unlike training's (None: relative to validation).
    level_baseline_alpha: float | None = Field(None, gt=0, le=1)
    level_weight: float = Field(1.0, gt=0)
    level_scale_floor: float = Field(0.1, gt=0)  # in training standard deviations
    # Scale the level term so that its 99th percentile over the validation points equals the reconstruction
    # term's (times ``level_weight``): both have the same footprint on normal data and neither drowns the other.
    # Unbalanced, a near-constant sensor's level term (scale at the floor) is thousands of times a typical
    # reconstruction error, and every family's score becomes the same level detector.
    balance_level: bool = False

    @model_validator(mode="after")
    def _check(self) -> ScoreOptions:
        if self.fast_smoothing_alpha is not None:
            check_two_speeds(self.smoothing_alpha, self.fast_smoothing_alpha, "fast_smoothing_alpha")
        return self


# What `vigil train` fits unless told otherwise (`--score '{}'` gives the plain mean squared error): a causal
# exponential smoothing of each sensor's term at two speeds (alpha 0.1, and 0.3 weighted to the same validation
# tail) and a level term balanced against the reconstruction. On the 14 SMD machines (EVALUATION.md, every family
# trained once and scored each way, thresholds from validation only) smoothing and the level term lifted mean
# VUS-PR for every family (TVNet 0.443 -> 0.614, ConvTimeNet 0.428 -> 0.612, dense AE 0.487 -> 0.581), and the
# fast average beside the slow one lifted it again (TVNet 0.629, ConvTimeNet 0.628, dense AE 0.597) with alerts
# open 1.8x the labelled time instead of 2.1-2.4x.
DEFAULT_SCORE = ScoreOptions(
    smoothing_alpha=0.1, fast_smoothing_alpha=0.3, level_alpha=0.1, balance_level=True
)


def scored_windows(series: F32, window_length: int, stride: int) -> tuple[F32, npt.NDArray[np.intp]]:
    """The windows ``[N, L, C]`` the service would score over ``series`` and, per window, how many newest points
    it scores (parity rule)."""
    ends = window_ends(series.shape[0], window_length, stride)
    windows = np.stack([series[e - window_length + 1 : e + 1] for e in ends]).astype(np.float32)
    spans = np.array([window_length if e == window_length - 1 else stride for e in ends], dtype=np.intp)
    return windows, spans


def _scored_points(values: F32, spans: npt.NDArray[np.intp]) -> F32:
    """The scored points' rows ``[n, C]`` of per-window values ``[N, L, C]``."""
    return np.concatenate([values[i, -span:] for i, span in enumerate(spans)])


def fit_score_definition(
    windows: F32,
    spans: npt.NDArray[np.intp],
    outputs: ModelOutput,
    base: ScoreDefinition,
    options: ScoreOptions,
) -> ScoreDefinition:
    """``base`` with the options applied and their statistics fitted on validation ``windows`` [N, L, C] (as
    scored, with ``spans``) and the model's ``outputs`` for them."""
    update: dict[str, object] = {
        "smoothing_alpha": options.smoothing_alpha,
        "aggregation": options.aggregation,
        "top_k": options.top_k if options.aggregation == "top_k" else None,
        "error": options.error,
    }
    if options.error == "absolute" and base.kind == "reconstruction_mse":
        update["description"] = (
            "mean over sensors of the absolute reconstruction error in normalised space; "
            "a sensor's contribution is its share of that sum"
        )
    balance = options.level_alpha is not None and options.balance_level
    if options.standardise != "none" or balance:  # the scored points' reconstruction terms, once
        errors = _scored_points(error_terms(windows - outputs.reconstruction, options.error), spans)
    if options.standardise != "none":
        q = 0.5 if options.standardise == "median" else 0.99
        statistic = np.quantile(errors.astype(np.float64), q, axis=0)
        floor = options.scale_floor * float(np.median(statistic))
        update["sensor_scale"] = [float(v) for v in np.maximum(statistic, max(floor, 1e-12))]
    if options.level_alpha is not None:
        recent = _scored_points(
            recent_level(windows, options.level_alpha, options.level_baseline_alpha), spans
        ).astype(np.float64)
        center = np.median(recent, axis=0)
        spread = (np.quantile(recent, 0.75, axis=0) - np.quantile(recent, 0.25, axis=0)) / IQR_TO_SIGMA
        scale = np.maximum(spread, options.level_scale_floor)
        weight = options.level_weight
        if balance:
            sensor_scale = update.get("sensor_scale")
            divisor = np.asarray(sensor_scale if isinstance(sensor_scale, list) else 1.0, dtype=np.float64)
            point_errors = errors.astype(np.float64) / divisor
            deviations = (recent - center) / scale
            levels = np.abs(deviations) if options.error == "absolute" else np.square(deviations)
            reconstruction_tail = float(np.quantile(point_errors.mean(axis=1), 0.99))
            level_tail = float(np.quantile(levels.mean(axis=1), 0.99))
            weight *= max(reconstruction_tail, 1e-12) / max(level_tail, 1e-12)
        update["level"] = LevelTerm(
            alpha=options.level_alpha,
            baseline_alpha=options.level_baseline_alpha,
            center=[float(v) for v in center],
            scale=[float(v) for v in scale],
            weight=weight,
        )
    fitted = ScoreDefinition.model_validate({**base.model_dump(), **update})
    if options.fast_smoothing_alpha is None:
        return fitted
    return fitted.model_copy(
        update={
            "fast_smoothing": _fast_smoothing(windows, spans, outputs, fitted, options.fast_smoothing_alpha)
        }
    )


def _fast_smoothing(
    windows: F32, spans: npt.NDArray[np.intp], outputs: ModelOutput, fitted: ScoreDefinition, alpha: float
) -> FastSmoothing:
    """The fast average's weight: the 99th percentile of the validation points' score with the slow average
    alone over that with the fast one alone (``fitted`` is the definition with every other option)."""
    tails = [
        float(np.quantile(_scored_points(score_windows(windows, outputs, d).scores[..., None], spans), 0.99))
        for d in (fitted, fitted.model_copy(update={"smoothing_alpha": alpha}))
    ]
    return FastSmoothing(alpha=alpha, weight=max(tails[0], 1e-12) / max(tails[1], 1e-12))


def fit_for_series(
    series: F32 | list[F32],
    window_length: int,
    stride: int,
    reconstruct: Reconstruct,
    base: ScoreDefinition,
    options: ScoreOptions,
) -> ScoreDefinition:
    """``fit_score_definition`` over the windows the service would score on normalised validation series
    (one, or one per training part: windows never cross parts)."""
    if options == ScoreOptions():
        return base
    parts = [
        scored_windows(s, window_length, stride) for s in (series if isinstance(series, list) else [series])
    ]
    windows = np.concatenate([w for w, _ in parts])
    spans = np.concatenate([s for _, s in parts])
    return fit_score_definition(windows, spans, reconstruct_all(windows, reconstruct), base, options)
