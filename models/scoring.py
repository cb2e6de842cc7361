"""The one scoring function, shared by calibration, offline evaluation and the service (torch-free).

The parity rule: windows end at stream indices L-1, L-1+s, L-1+2s, ...; the first window scores all its
L points, each later window scores its s newest points. A point's score comes from per-sensor terms (the
squared reconstruction error in normalised space, optionally standardised, with a level term, smoothed
causally within the window, optionally at two speeds) aggregated over sensors
(``models.manifest.ScoreDefinition``); a sensor's contribution is its share of those terms. Every step is per
window and per sample, so a window scores the same alone, in any batch, streamed in any chunking, or offline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from models.manifest import Normalisation, ScoreDefinition

F32 = npt.NDArray[np.float32]
Reconstruct = Callable[[F32], "ModelOutput"]


@dataclass(frozen=True)
class ModelOutput:
    """What a model returns for windows ``[B, L, C]``.

    ``reconstruction``: [B, L, C] in normalised space. ``association``: [B, L] per-step weights that sum to
    one over L (only for association-weighted score definitions), else None.
    """

    reconstruction: F32
    association: F32 | None = None


@dataclass(frozen=True)
class WindowScores:
    """``scores``: [B, L] per-point scores; ``contributions``: [B, L, C] per-sensor shares (rows sum to 1)."""

    scores: F32
    contributions: F32


@dataclass(frozen=True)
class SeriesScores:
    """Per-point scores of a whole series; points no window has reached yet are NaN."""

    scores: F32  # [T]
    contributions: F32  # [T, C]


def normalise(values: npt.NDArray[np.floating], norm: Normalisation) -> F32:
    """Raw sensor values ``[..., C]`` → normalised float32 ``[..., C]``. Same ops online and offline."""
    mean = np.asarray(norm.mean, dtype=np.float32)
    scale = np.asarray(norm.scale, dtype=np.float32)
    return ((np.asarray(values, dtype=np.float32) - mean) / scale).astype(np.float32, copy=False)


def causal_average(values: F32, alpha: float) -> F32:
    """Exponential average along the time axis of ``values`` [B, L, C], from each window's first point:
    ``y[0] = x[0]``, ``y[t] = alpha·x[t] + (1 − alpha)·y[t − 1]``. Only earlier points of the same window count."""
    a, b = np.float32(alpha), np.float32(1.0 - alpha)
    # Time-major and in place: each step is two ufunc calls on one contiguous [B, C] block, and every value is
    # rounded exactly as in ``a·x[t] + b·y[t − 1]`` evaluated step by step (tested bit for bit). It runs for
    # every scored window, twice with the level term; the profile of stateless windows had the strided form at
    # 8 % of the server's samples.
    steps = np.ascontiguousarray(np.moveaxis(values, 1, 0), dtype=np.float32)
    weighted = a * steps
    out = np.empty_like(steps)
    out[0] = steps[0]
    carry = np.empty_like(steps[0])
    for t in range(1, steps.shape[0]):
        np.multiply(out[t - 1], b, out=carry)
        np.add(weighted[t], carry, out=out[t])
    return np.moveaxis(out, 0, 1)


def recent_level(windows: F32, alpha: float, baseline_alpha: float | None) -> F32:
    """Each point's recent level per sensor: the causal average with ``alpha``, less the slower causal average
    with ``baseline_alpha`` when given (a level change inside the window). Only earlier points count."""
    recent = causal_average(windows, alpha)
    if baseline_alpha is None:
        return recent
    out: F32 = recent - causal_average(windows, baseline_alpha)
    return out


def error_terms(differences: F32, error: str) -> F32:
    """Squared (``error`` "squared") or absolute differences, float32."""
    out: F32 = (
        np.abs(differences) if error == "absolute" else np.square(differences, dtype=np.float32)
    ).astype(np.float32, copy=False)
    return out


def sensor_terms(windows: F32, output: ModelOutput, definition: ScoreDefinition) -> F32:
    """Per-sensor, per-point terms ``[B, L, C]`` before aggregation (see ``ScoreDefinition``)."""
    terms = error_terms(windows - output.reconstruction, definition.error)
    if definition.sensor_scale is not None:
        terms = np.divide(terms, np.asarray(definition.sensor_scale, dtype=np.float32), dtype=np.float32)
    if definition.level is not None:
        level = definition.level
        center = np.asarray(level.center, dtype=np.float32)
        scale = np.asarray(level.scale, dtype=np.float32)
        deviation: F32 = ((recent_level(windows, level.alpha, level.baseline_alpha) - center) / scale).astype(
            np.float32, copy=False
        )
        terms = terms + np.float32(level.weight) * error_terms(deviation, definition.error)
    if definition.smoothing_alpha is not None:
        smoothed = causal_average(terms, definition.smoothing_alpha)
        fast = definition.fast_smoothing
        if fast is not None:
            quick = causal_average(terms, fast.alpha)
            smoothed = np.maximum(smoothed, np.multiply(quick, np.float32(fast.weight), out=quick))
        terms = smoothed
    out: F32 = terms.astype(np.float32, copy=False)
    return out


def score_windows(windows: F32, output: ModelOutput, definition: ScoreDefinition) -> WindowScores:
    """Per-point scores and per-sensor shares for windows ``[B, L, C]`` and their model output."""
    terms = sensor_terms(windows, output, definition)  # [B, L, C]
    total = terms.sum(axis=-1, dtype=np.float32)  # [B, L]
    n_features = np.float32(windows.shape[-1])
    if definition.aggregation == "max":
        scores = terms.max(axis=-1)
    elif definition.aggregation == "top_k":
        k = min(definition.top_k or 1, terms.shape[-1])
        largest = -np.partition(-terms, k - 1, axis=-1)[..., :k]
        scores = np.sort(largest, axis=-1).sum(axis=-1, dtype=np.float32) / np.float32(k)
    else:
        scores = total / n_features
    if definition.kind == "association_weighted_mse":
        if output.association is None:
            raise ValueError("score definition needs the model's association output")
        scores = scores * output.association
    safe_total = np.where(total > 0, total, np.float32(1.0))[..., None]
    contributions = np.where(total[..., None] > 0, terms / safe_total, np.float32(1.0) / n_features)
    return WindowScores(scores.astype(np.float32, copy=False), contributions.astype(np.float32, copy=False))


def window_ends(n_points: int, window_length: int, stride: int, first_index: int = 0) -> list[int]:
    """Stream indices in ``[first_index, n_points)`` at which a window ends and must be scored."""
    first_end = window_length - 1
    if n_points <= first_end:
        return []
    start = max(first_index, first_end)
    offset = (start - first_end) % stride
    if offset:
        start += stride - offset
    return list(range(start, n_points, stride))


def scored_span(end_index: int, window_length: int, stride: int) -> int:
    """How many of the newest points of the window ending at ``end_index`` it scores."""
    return window_length if end_index == window_length - 1 else stride


def pending_points(n_points: int, window_length: int, stride: int) -> int:
    """Points held but not yet scored: those after the last window end."""
    if n_points < window_length:
        return n_points
    return (n_points - window_length) % stride


def score_series(
    series: F32,
    window_length: int,
    stride: int,
    reconstruct: Reconstruct,
    definition: ScoreDefinition,
    batch_size: int = 256,
) -> SeriesScores:
    """Offline scoring of a normalised series ``[T, C]`` with exactly the service's windowing."""
    n_points, n_features = series.shape
    scores = np.full(n_points, np.nan, dtype=np.float32)
    contributions = np.full((n_points, n_features), np.nan, dtype=np.float32)
    ends = window_ends(n_points, window_length, stride)
    for chunk_start in range(0, len(ends), batch_size):
        chunk = ends[chunk_start : chunk_start + batch_size]
        windows = np.stack([series[e - window_length + 1 : e + 1] for e in chunk]).astype(np.float32)
        result = score_windows(windows, reconstruct(windows), definition)
        for row, end in enumerate(chunk):
            span = scored_span(end, window_length, stride)
            scores[end - span + 1 : end + 1] = result.scores[row, -span:]
            contributions[end - span + 1 : end + 1] = result.contributions[row, -span:]
    return SeriesScores(scores, contributions)


def reconstruct_all(windows: F32, reconstruct: Reconstruct, batch_size: int = 256) -> ModelOutput:
    """The model's output for many windows ``[N, L, C]``, run ``batch_size`` at a time."""
    parts = [reconstruct(windows[i : i + batch_size]) for i in range(0, len(windows), batch_size)]
    association = None
    if parts and parts[0].association is not None:
        association = np.concatenate([np.asarray(p.association) for p in parts]).astype(np.float32)
    return ModelOutput(np.concatenate([p.reconstruction for p in parts]).astype(np.float32), association)


def level_of(score: float, warning: float, critical: float) -> str:
    if score >= critical:
        return "critical"
    if score >= warning:
        return "warning"
    return "normal"


LEVELS: tuple[str, str, str] = ("normal", "warning", "critical")
_LEVEL_NAMES = np.array(LEVELS, dtype=object)


def levels_of(scores: npt.ArrayLike, warning: float, critical: float) -> list[str]:
    """:func:`level_of` of every score at once, compared in float64 as ``level_of`` compares Python floats (a
    float32 comparison would round the thresholds); NaN is normal."""
    values = np.asarray(scores, dtype=np.float64)
    codes = np.where(values >= critical, 2, np.where(values >= warning, 1, 0))
    names: list[str] = _LEVEL_NAMES[codes].tolist()
    return names


def top_contributions_rows(shares: F32, k: int) -> tuple[npt.NDArray[np.intp], F32]:
    """For every row of ``shares`` [..., C]: the ``k`` largest shares and their sensor indices, largest first,
    ties in sensor order (lower index first). ``k`` passes of ``argmax`` over all rows at once, each taking the
    largest share left and masking it: for the small ``k`` served (3 of 38 sensors) a third of the cost of a
    partition and a sort per row (``bench.parse_cost``), and it runs on the event loop for every scored block."""
    k = min(k, shares.shape[-1])
    lead = shares.shape[:-1]
    left = np.array(shares, dtype=np.float32).reshape(-1, shares.shape[-1])  # a copy: masked as taken
    rows = np.arange(left.shape[0])
    index = np.empty((left.shape[0], k), dtype=np.intp)
    share = np.empty((left.shape[0], k), dtype=np.float32)
    for rank in range(k):
        taken = left.argmax(axis=-1)
        index[:, rank] = taken
        share[:, rank] = left[rows, taken]
        left[rows, taken] = -np.inf
    return index.reshape(*lead, k), share.reshape(*lead, k)
