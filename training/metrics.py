"""Offline detection metrics: ranking (AUC-PR, AUC-ROC, VUS-PR, VUS-ROC), thresholded (point, event,
point-adjusted) and sensor attribution (HitRate@P%). numpy only.

Conventions shared by every function:
- ``scores``: [T] float, higher is more anomalous; NaN marks an unscored point (the warm-up before the first
  window). NaN points are dropped before any metric and the rest is treated as one contiguous series (for a
  warm-up prefix that is the same as trimming it). ``labels``: [T] of 0/1.
- At a threshold a point is predicted anomalous iff ``score >= threshold`` (at or over, as the service and the
  alert lifecycle count a point at a level; strictly over until 2026-12-07).
- A ranking metric is NaN when it is undefined (AUC-PR without an anomaly; AUC-ROC and VUS without both
  classes). A precision, recall or F1 whose denominator is empty is 0 (scikit-learn's ``zero_division=0``).
- Malformed input (shapes, labels other than 0/1, bad segments) raises ``ValueError``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]
Segments = Sequence[tuple[int, int, Sequence[int]]]  # (start, end exclusive, 0-based sensors); Segment fits

VUS_N_THRESHOLDS = 250  # TSB-AD's `thre`
HIT_RATE_PS = (1.0, 1.5)  # OmniAnomaly reports HitRate@100% and @150%


class PRF(NamedTuple):
    precision: float
    recall: float
    f1: float


class Segment(NamedTuple):
    """An interpretation label: rows ``[start, end)`` and the 0-based indices of the sensors at fault."""

    start: int
    end: int
    sensors: tuple[int, ...]


@dataclass(frozen=True)
class VUS:
    """Volume under the range-PR and range-ROC surfaces (TSB-AD's 'VUS-PR' and 'VUS-ROC')."""

    pr: float
    roc: float


def _prepare(scores: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[F64, Bools]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"scores and labels must be 1-D and equally long, got {s.shape} and {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    scored = ~np.isnan(s)
    return s[scored], y[scored].astype(bool)


def _runs(mask: Bools) -> tuple[I64, I64]:
    """Maximal runs of True: (starts, exclusive ends)."""
    edges = np.diff(np.concatenate(([0], mask.astype(np.int8), [0])))
    return np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)


def _touched(runs: tuple[I64, I64], mask: Bools) -> Bools:
    """For each run ``[start, end)``, whether ``mask`` holds a True inside it."""
    before = np.concatenate(([0], np.cumsum(mask)))
    return before[runs[1]] > before[runs[0]]


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


def _prf(predicted: Bools, truth: Bools) -> PRF:
    hits = float(np.count_nonzero(predicted & truth))
    precision = _ratio(hits, float(np.count_nonzero(predicted)))
    recall = _ratio(hits, float(np.count_nonzero(truth)))
    return PRF(precision, recall, _ratio(2 * precision * recall, precision + recall))


def _counts_at_distinct_scores(s: F64, y: Bools) -> tuple[F64, F64]:
    """Cumulative (true, false) positives when predicting ``score >= v``, for each distinct v high to low."""
    order = np.argsort(-s, kind="stable")
    ranked = s[order]
    last_of_value = np.append(np.flatnonzero(ranked[1:] != ranked[:-1]), s.size - 1)
    tps = np.cumsum(y[order])[last_of_value].astype(np.float64)
    return tps, (last_of_value + 1) - tps


def auc_pr(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Average precision, step-wise, ties grouped (scikit-learn's ``average_precision_score``)."""
    s, y = _prepare(scores, labels)
    n_pos = int(y.sum())
    if n_pos == 0:
        return math.nan
    tps, fps = _counts_at_distinct_scores(s, y)
    recall = tps / n_pos
    return float(np.sum(np.diff(recall, prepend=0.0) * (tps / (tps + fps))))


def auc_roc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Area under the ROC curve, trapezoids between distinct scores (scikit-learn's ``roc_auc_score``)."""
    s, y = _prepare(scores, labels)
    n_pos = int(y.sum())
    if n_pos in (0, s.size):
        return math.nan
    tps, fps = _counts_at_distinct_scores(s, y)
    tpr = np.concatenate(([0.0], tps / n_pos))
    fpr = np.concatenate(([0.0], fps / (s.size - n_pos)))
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def _soft_labels(truth: F64, starts: I64, lasts: I64, buffer: int) -> F64:
    """Labels with a sqrt(1 - d/buffer) ramp at distances d = 1..buffer//2 outside each run, capped at 1."""
    half = buffer // 2
    if half == 0:
        return truth
    distance = np.arange(1, half + 1)
    ramp = np.sqrt(1 - distance / buffer)
    where = np.concatenate(((lasts[:, None] + distance).ravel(), (starts[:, None] - distance).ravel()))
    weight = np.tile(ramp, 2 * starts.size)
    inside = (where >= 0) & (where < truth.size)
    bump = np.bincount(where[inside], weights=weight[inside], minlength=truth.size)
    return np.minimum(truth + bump, 1.0)


def _zone_peaks(s: F64, starts: I64, lasts: I64, half: int) -> F64:
    """Highest score in each zone: runs widened by ``half`` on both sides, overlapping ones merged."""
    zone_starts = np.maximum(starts - half, 0)
    zone_lasts = np.minimum(lasts + half, s.size - 1)
    opens = np.concatenate(([True], zone_starts[1:] > zone_lasts[:-1]))
    closes = np.concatenate((opens[1:], [True]))
    bounds = np.column_stack((zone_starts[opens], zone_lasts[closes] + 1)).ravel()
    return np.maximum.reduceat(np.append(s, -np.inf), bounds)[::2]


def volume_under_surface(scores: npt.ArrayLike, labels: npt.ArrayLike, sliding_window: int = 100) -> VUS:
    """VUS-PR and VUS-ROC exactly as TSB-AD 1.5 computes them (``get_metrics``, ``version='opt'``).

    Paparrizos et al., "Volume Under the Surface" (VLDB 2022), as TSB-AD implements it: for every buffer
    w = 0..sliding_window the labels get a sqrt(1 - d/w) ramp on d = 1..w//2 points either side of each
    run (summed where ramps meet, capped at 1). Thresholds: 250 scores taken from the descending sort at
    ``linspace(0, T-1, 250)`` positions, predicting ``score >= t``. At each, with soft labels l and
    prediction p: TP = sum(l*p); labelled mass = P + sum over non-anomalous points of l*p; P' = (P + mass)/2;
    TPR = min(TP/P', 1) * existence, where existence is the share of zones (runs widened by w//2, merged where
    they touch) holding a predicted point; FPR = (#p - TP)/(T - P'); precision = TP/#p. ROC area: trapezoids
    over (0,0), the 250 points, (1,1). PR area: sum of (TPR_k - TPR_{k-1}) * precision_k over the 250 points
    from TPR_0 = 0. Both are averaged over the sliding_window + 1 buffers. NaN if labels hold one class only.
    """
    if sliding_window < 0:
        raise ValueError(f"sliding_window must be >= 0, got {sliding_window}")
    s, y = _prepare(scores, labels)
    n, n_pos = s.size, int(y.sum())
    if n_pos in (0, n):
        return VUS(math.nan, math.nan)
    order = np.argsort(-s, kind="stable")
    ranked = s[order]
    thresholds = ranked[np.linspace(0, n - 1, VUS_N_THRESHOLDS).astype(int)]
    n_pred = n - np.searchsorted(ranked[::-1], thresholds, side="left")  # every point with score >= t
    top = n_pred - 1  # the predicted points are exactly the first n_pred of the stable descending order
    hits_on_runs = np.cumsum(y[order])[top]
    truth = y.astype(np.float64)
    starts, ends = _runs(y)
    lasts = ends - 1
    pr, roc = np.empty(sliding_window + 1), np.empty(sliding_window + 1)
    for buffer in range(sliding_window + 1):
        tp = np.cumsum(_soft_labels(truth, starts, lasts, buffer)[order])[top]
        peaks = np.sort(_zone_peaks(s, starts, lasts, buffer // 2))
        existence = (peaks.size - np.searchsorted(peaks, thresholds, side="left")) / peaks.size
        labelled_mass = n_pos + tp - hits_on_runs  # the runs in full plus the ramp on predicted points
        positives = (n_pos + labelled_mass) / 2
        tpr = np.minimum(tp / positives, 1.0) * existence
        fpr = (n_pred - tp) / (n - positives)
        tpr_curve = np.concatenate(([0.0], tpr, [1.0]))
        fpr_curve = np.concatenate(([0.0], fpr, [1.0]))
        roc[buffer] = np.sum(np.diff(fpr_curve) * (tpr_curve[1:] + tpr_curve[:-1]) / 2)
        pr[buffer] = np.sum(np.diff(tpr_curve[:-1]) * (tp / n_pred))
    return VUS(float(pr.mean()), float(roc.mean()))


def vus_pr(scores: npt.ArrayLike, labels: npt.ArrayLike, sliding_window: int = 100) -> float:
    """TSB-AD's VUS-PR (see ``volume_under_surface``)."""
    return volume_under_surface(scores, labels, sliding_window).pr


def vus_roc(scores: npt.ArrayLike, labels: npt.ArrayLike, sliding_window: int = 100) -> float:
    """TSB-AD's VUS-ROC (see ``volume_under_surface``)."""
    return volume_under_surface(scores, labels, sliding_window).roc


def point_prf(scores: npt.ArrayLike, labels: npt.ArrayLike, threshold: float) -> PRF:
    """Point-wise precision, recall and F1 of ``score >= threshold`` (a point is at a level from its threshold up,
    as the service and the lifecycle count it), without any adjustment."""
    s, y = _prepare(scores, labels)
    return _prf(s >= threshold, y)


def event_prf(scores: npt.ArrayLike, labels: npt.ArrayLike, threshold: float) -> PRF:
    """Event-wise precision, recall and F1 of ``score >= threshold``.

    An event is a maximal run of 1s in ``labels``, an alarm a maximal run of predicted points. Recall: share
    of events holding at least one predicted point. Precision: share of alarms overlapping at least one
    event. F1: their harmonic mean. A run split by removed NaN points is joined (see module docstring).
    """
    s, y = _prepare(scores, labels)
    predicted = s >= threshold
    found, true_alarms = _touched(_runs(y), predicted), _touched(_runs(predicted), y)
    precision = float(true_alarms.mean()) if true_alarms.size else 0.0
    recall = float(found.mean()) if found.size else 0.0
    return PRF(precision, recall, _ratio(2 * precision * recall, precision + recall))


def point_adjusted_f1(scores: npt.ArrayLike, labels: npt.ArrayLike, threshold: float) -> PRF:
    """Point-adjusted precision, recall and F1 (Xu et al. 2018): a labelled run with any point over the
    threshold counts as predicted in full, then point-wise P/R/F1. Inflated by design: see MODELS.md 4.3."""
    s, y = _prepare(scores, labels)
    predicted = s >= threshold
    starts, ends = _runs(y)
    found = _touched((starts, ends), predicted)
    cover = np.zeros(s.size + 1, dtype=np.int64)
    np.add.at(cover, starts[found], 1)
    np.add.at(cover, ends[found], -1)
    return _prf(predicted | (np.cumsum(cover)[:-1] > 0), y)


def hit_rate(contributions: npt.ArrayLike, labels: npt.ArrayLike, segments: Segments, p: float) -> float:
    """HitRate@P% (Su et al., OmniAnomaly, KDD 2019) of per-sensor contributions ``[T, C]``.

    For every (segment, row) with row in ``[start, end)``, ``labels[row] == 1`` and finite contributions,
    with G the segment's 0-based sensors: take the k = floor(p * |G|) sensors of highest contribution (ties:
    lower index first) and score |top-k ∩ G| / |G|. Returns the mean over those rows, NaN if there are none.
    ``p`` is a fraction: 1.0 for HitRate@100%, 1.5 for @150% (k may exceed |G|). Every labelled row counts,
    detected or not. Raises ``ValueError`` on shapes, ``p <= 0`` or a sensor index out of range.
    """
    c = np.asarray(contributions, dtype=np.float64)
    y = np.asarray(labels)
    if c.ndim != 2 or y.shape != (c.shape[0],):
        raise ValueError(f"contributions must be [T, C] and labels [T], got {c.shape} and {y.shape}")
    if not p > 0:
        raise ValueError(f"p must be positive, got {p}")
    per_row: list[F64] = []
    for start, end, sensors in segments:
        truth = np.unique(np.asarray(sensors, dtype=np.int64))
        if truth.size == 0:
            continue
        if truth[0] < 0 or truth[-1] >= c.shape[1]:
            raise ValueError(f"segment {start}-{end}: sensor index outside 0..{c.shape[1] - 1}")
        rows = np.arange(max(start, 0), min(end, c.shape[0]))
        block = c[rows]
        block = block[(y[rows] == 1) & np.isfinite(block).all(axis=1)]
        k = math.floor(p * truth.size + 1e-9)  # the epsilon keeps e.g. 1.1 * 10 from flooring to 10
        top = np.argsort(-block, axis=1, kind="stable")[:, :k]
        per_row.append(np.isin(top, truth).sum(axis=1) / truth.size)
    hits = np.concatenate(per_row) if per_row else np.empty(0)
    return float(hits.mean()) if hits.size else math.nan


def parse_interpretation_labels(text: str) -> list[Segment]:
    """Parse SMD's ``interpretation_label`` lines ``start-end:s1,s2,...`` (rows ``[start, end)`` from 0,
    sensors from 1) into segments with 0-based sensors. Blank lines are skipped; a bad line raises
    ``ValueError`` naming its line number."""
    segments: list[Segment] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        try:
            span, _, listed = line.partition(":")
            start, end = (int(v) for v in span.split("-"))
            sensors = tuple(int(v) - 1 for v in listed.split(","))
        except ValueError as exc:
            raise ValueError(f"line {number}: cannot parse {line!r}") from exc
        if not 0 <= start < end or min(sensors) < 0:
            raise ValueError(f"line {number}: need 0 <= start < end and sensors >= 1, got {line!r}")
        segments.append(Segment(start, end, sensors))
    return segments


@dataclass(frozen=True)
class DetectionReport:
    """Every metric of one scored series. ``n_points`` counts scored points, ``n_events`` labelled runs
    among them; hit rates are None without contributions and segments."""

    n_points: int
    n_unscored: int
    n_events: int
    threshold: float
    sliding_window: int
    auc_pr: float
    auc_roc: float
    vus_pr: float
    vus_roc: float
    point: PRF
    event: PRF
    point_adjusted: PRF
    hit_rate_100: float | None = None
    hit_rate_150: float | None = None

    def as_dict(self) -> dict[str, float | int | None]:
        """Flat, JSON-ready: ``point``, ``event`` and ``point_adjusted`` become ``<name>_precision`` etc."""
        flat: dict[str, float | int | None] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, PRF):
                flat.update({f"{f.name}_{key}": v for key, v in value._asdict().items()})
            else:
                flat[f.name] = value
        return flat


def evaluate_scores(
    scores: npt.ArrayLike,
    labels: npt.ArrayLike,
    warning_threshold: float,
    contributions: npt.ArrayLike | None = None,
    segments: Segments | None = None,
    sliding_window: int = 100,
) -> DetectionReport:
    """All metrics for ``scores`` [T] (NaN = unscored) against ``labels`` [T] at ``warning_threshold``.

    Hit rates @100% and @150% need both ``contributions`` [T, C] and ``segments``; rows of unscored points
    are left out of them. Raises ``ValueError`` on malformed input or when only one of the two is given.
    """
    if (contributions is None) != (segments is None):
        raise ValueError("hit rates need both contributions and segments")
    s, y = _prepare(scores, labels)
    unscored = np.isnan(np.asarray(scores, dtype=np.float64))
    hit_rates: list[float | None] = [None, None]
    if contributions is not None and segments is not None:
        c = np.array(contributions, dtype=np.float64)
        if c.ndim == 2 and c.shape[0] == unscored.size:
            c[unscored] = np.nan
        hit_rates = [hit_rate(c, labels, segments, p) for p in HIT_RATE_PS]
    vus = volume_under_surface(s, y, sliding_window)
    return DetectionReport(
        n_points=int(s.size),
        n_unscored=int(unscored.sum()),
        n_events=int(_runs(y)[0].size),
        threshold=float(warning_threshold),
        sliding_window=sliding_window,
        auc_pr=auc_pr(s, y),
        auc_roc=auc_roc(s, y),
        vus_pr=vus.pr,
        vus_roc=vus.roc,
        point=point_prf(s, y, warning_threshold),
        event=event_prf(s, y, warning_threshold),
        point_adjusted=point_adjusted_f1(s, y, warning_threshold),
        hit_rate_100=hit_rates[0],
        hit_rate_150=hit_rates[1],
    )
