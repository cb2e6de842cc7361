"""The scoring use cases: a stream's points, a stateless window, many streams at once.

Stream path: validate → append to the window store → batch the due windows → score → alerts.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from models.lifecycle import LevelThresholds
from models.manifest import Normalisation
from models.scoring import F32, WindowScores, level_of, normalise, top_contributions_rows
from service.alerts import AlertTracker, AlertUpdate, ScoredPoint
from service.codec import PointBatch, WindowInput, stream_batch
from service.errors import BadInput, Overloaded, PayloadTooLarge, StoreUnavailable, VigilError
from service.history import ScoreHistory, pack_scores
from service.metrics import Metrics
from service.registry import ModelHandle, ModelRegistry
from service.results import (
    AlertEventData,
    BatchItem,
    DroppedPoint,
    ItemError,
    ScoredPoints,
    StreamResult,
    WindowResult,
)
from service.schemas import StreamScoreRequest
from service.windows import Claim, DueWindow, StreamGeometry, WindowStore

log = logging.getLogger(__name__)

DROP_REASONS: dict[int, Literal["duplicate", "stale"]] = {1: "duplicate", 2: "stale"}
F32_MAX = float(np.finfo(np.float32).max)
# Normalised magnitude beyond which squared reconstruction errors may overflow float32 (scores inf or NaN).
Z_MAX = 1e15


def validate_values(values: npt.NDArray[np.float64] | list[list[float]], n_features: int, field: str) -> F32:
    """``values`` [n, C] finite and within float32, with the model's sensor count; returns float32."""
    if isinstance(values, list):
        first_bad = next(i for i, row in enumerate(values) if len(row) != n_features)
        raise BadInput(
            f"{field}.{first_bad}.values: {len(values[first_bad])} values, the model expects {n_features}"
        )
    if values.ndim != 2 or values.shape[1] != n_features:
        width = values.shape[1] if values.ndim == 2 else 0
        raise BadInput(f"{field}.0.values: {width} values, the model expects {n_features}")
    bad = ~np.isfinite(values)
    if bad.any():
        raise BadInput(
            f"{field}.{int(np.argmax(bad.any(axis=1)))}.values: NaN or infinite values are not accepted"
        )
    over = np.abs(values) > F32_MAX
    if over.any():
        raise BadInput(f"{field}.{int(np.argmax(over.any(axis=1)))}.values: a value overflows float32")
    return values.astype(np.float32)


def validate_range(values: F32, norm: Normalisation, field: str) -> None:
    """Values ``[n, C]`` within ``Z_MAX`` training scales of each sensor's mean. Further out, finite float32
    input overflows in normalised space: its score would be inf or NaN (served as ``null``, level normal)."""
    with np.errstate(over="ignore", invalid="ignore"):
        far = ~(np.abs(normalise(values, norm)) <= Z_MAX)
    if far.any():
        raise BadInput(
            f"{field}.{int(np.argmax(far.any(axis=1)))}.values: a value lies more than {Z_MAX:g} training "
            "scales from its sensor's mean; the model cannot score it"
        )


MAX_ABS_TS = 1e19  # epoch nanoseconds reach 1e19 in the year 2286


def validate_ts(ts: npt.NDArray[np.float64]) -> None:
    if not np.isfinite(ts).all():
        raise BadInput(f"points.{int(np.argmin(np.isfinite(ts)))}.ts: must be a finite number")
    far = np.abs(ts) > MAX_ABS_TS
    if far.any():
        raise BadInput(
            f"points.{int(np.argmax(far))}.ts: beyond ±{MAX_ABS_TS:g} (epoch ns reach 1e19 in 2286)"
        )
    steps = np.diff(ts)
    if (steps <= 0).any():
        raise BadInput(
            f"points.{int(np.argmax(steps <= 0)) + 1}.ts: timestamps must strictly increase within a request"
        )


class StreamScorer:
    def __init__(
        self,
        models: ModelRegistry,
        windows: WindowStore,
        alerts: AlertTracker,
        metrics: Metrics,
        max_points: int,
        top_k: int,
        history: ScoreHistory,
    ) -> None:
        self._models = models
        self._windows = windows
        self._alerts = alerts
        self._history = history
        self._metrics = metrics
        self._max_points = max_points
        self._top_k = top_k
        # Claims a failed request could not give up (Redis was down): freed before the stream's next append.
        self._unreleased: dict[str, str] = {}

    def _collect(self, ts: npt.NDArray[np.float64], scores: F32, shares: F32) -> ScoredBlock:
        top_index, top_share = top_contributions_rows(shares, self._top_k)
        return ScoredBlock(ts.tolist(), scores.tolist(), top_index, top_share)

    async def _infer(self, handle: ModelHandle, raw_windows: F32) -> WindowScores:
        return await handle.batcher.submit(normalise(raw_windows, handle.manifest.normalisation))

    async def score_points(self, batch: PointBatch) -> StreamResult:
        """Append a stream's points and score every window now due: the new ones and any that an earlier
        request stored but did not get scored (see ``service.windows``): scoring is as durable as storage."""
        if len(batch.ts) > self._max_points:
            raise PayloadTooLarge(
                f"points: {len(batch.ts)} points in one request; at most {self._max_points}"
            )
        with self._models.lease(batch.model) as handle:
            manifest = handle.manifest
            values = validate_values(batch.values, manifest.n_features, "points")
            validate_range(values, manifest.normalisation, "points")
            validate_ts(batch.ts)
            geometry = StreamGeometry(
                manifest.name, manifest.window_length, manifest.stride, manifest.n_features
            )
            expected_windows = len(batch.ts) // manifest.stride + 1
            if not handle.batcher.has_room(expected_windows):  # refuse before storing anything
                raise Overloaded(f"model {manifest.name!r}: inference queue full")
            token = uuid.uuid4().hex
            stale = self._unreleased.pop(batch.stream_id, None)
            if stale is not None and not await self._windows.release(batch.stream_id, stale):
                self._unreleased[batch.stream_id] = stale
            started = time.perf_counter()
            try:
                appended = await self._windows.append(batch.stream_id, geometry, batch.ts, values, token)
            except StoreUnavailable:
                self._metrics.redis_errors.labels("append").inc()
                raise
            self._metrics.redis_latency.labels("append").observe(time.perf_counter() - started)
            if appended.abandoned_windows:
                log.error(
                    "stream %s: %d unscored windows given up (backlog over its bound after failures)",
                    batch.stream_id,
                    appended.abandoned_windows,
                )
            dropped = [
                DroppedPoint(float(batch.ts[i]), DROP_REASONS[s]) for i, s in enumerate(appended.status) if s
            ]
            self._metrics.points_received.labels(manifest.name).inc(len(batch.ts))
            for item in dropped:
                self._metrics.points_dropped.labels(item.reason).inc()

            scores: list[ScoredPoints] = []
            events: list[AlertEventData] = []
            claim: Claim | None = appended.claim
            try:
                while claim is not None and claim.windows:
                    more_scores, more_events = await self._score_claimed(
                        batch.stream_id, handle, claim.windows
                    )
                    scores.append(more_scores)
                    if more_events is None:
                        # The alert update failed (Redis): the scores are answered, but the windows stay
                        # uncommitted, so the stream's next request (any replica) scores them again and applies
                        # them to its alerts; the tracker skips the points it already saw.
                        raise _AlertsPending
                    events.extend(more_events)
                    claim = await self._windows.commit(
                        batch.stream_id, geometry, token, claim.windows[-1].end_index
                    )
            except _AlertsPending:
                if not await self._windows.release(batch.stream_id, token):
                    self._unreleased[batch.stream_id] = token
                claim = None
            except BaseException:
                # The next request scores these windows; if Redis is unreachable now, this process frees the
                # claim before its next append of the stream rather than leaving it to lapse.
                if not await self._windows.release(batch.stream_id, token):
                    self._unreleased[batch.stream_id] = token
                raise
            frontier = claim or appended.claim
            scored = frontier.scored_points(manifest.window_length, manifest.stride)
            return StreamResult(
                stream_id=batch.stream_id,
                model=manifest.name,
                version=manifest.version,
                accepted=appended.count_after - appended.count_before,
                dropped=dropped,
                pending=max(0, appended.count_after - scored),
                points=join_points(scores, manifest.feature_names, self._top_k),
                alerts=events,
            )

    async def _score_claimed(
        self, stream_id: str, handle: ModelHandle, windows: list[DueWindow]
    ) -> tuple[ScoredPoints, list[AlertEventData] | None]:
        """Score claimed windows, advance the stream's alerts and history; returns the points' scores and the
        alert events (None when the alert update failed: the windows must then not be committed)."""
        manifest = handle.manifest
        result = await self._infer(handle, np.stack([w.values for w in windows]))
        block = ScoredBlock.join(
            [
                self._collect(
                    window.ts[-window.span :],
                    result.scores[row, -window.span :],
                    result.contributions[row, -window.span :],
                )
                for row, window in enumerate(windows)
            ],
            self._top_k,
        )
        names = manifest.feature_names
        scored_points = [
            ScoredPoint(t, v, [names[i] for i in idx])
            for t, v, idx in zip(block.ts, block.scores, block.top_index.tolist(), strict=True)
        ]
        update = await self._observe_alerts(stream_id, handle, scored_points)
        points = block.with_levels(_levels(block, handle.levels, update), names)
        self._count_levels(manifest.name, points)
        await self._history.record(
            stream_id,
            pack_scores(points.ts, points.scores, points.levels, points.top_index, points.top_share),
        )
        return points, update.events if update else None

    async def score_window(self, request: WindowInput) -> WindowResult:
        """Stateless: score every row of one whole window; no stream, no alerts."""
        with self._models.lease(request.model) as handle:
            manifest = handle.manifest
            window = request.window
            if window.shape[0] != manifest.window_length:
                raise BadInput(f"window: {window.shape[0]} rows, the model expects {manifest.window_length}")
            values = validate_values(window, manifest.n_features, "window")
            validate_range(values, manifest.normalisation, "window")
            result = await self._infer(handle, values[None])
            ts = np.arange(manifest.window_length, dtype=np.float64)
            block = self._collect(ts, result.scores[0], result.contributions[0])
            points = block.with_levels(_levels(block, handle.levels, None), manifest.feature_names)
            self._count_levels(manifest.name, points)
            return WindowResult(manifest.name, manifest.version, points)

    async def score_many(self, items: list[StreamScoreRequest | BadInput]) -> list[BatchItem]:
        """One result per item; a bad item fails alone. Items of one stream run in order, streams in parallel."""
        total = sum(len(i.points) for i in items if isinstance(i, StreamScoreRequest))
        if total > self._max_points:
            raise PayloadTooLarge(f"items: {total} points in one request; at most {self._max_points}")
        results: list[BatchItem] = [BatchItem(None) for _ in items]
        by_stream: dict[str, list[int]] = defaultdict(list)
        for index, item in enumerate(items):
            if isinstance(item, BadInput):
                results[index] = _item_error(None, item)
            else:
                by_stream[item.stream_id].append(index)

        async def run_stream(indices: list[int]) -> None:
            for index in indices:
                item = items[index]
                assert isinstance(item, StreamScoreRequest)
                try:
                    results[index] = BatchItem(item.stream_id, await self.score_points(stream_batch(item)))
                except VigilError as exc:
                    results[index] = _item_error(item.stream_id, exc)

        await asyncio.gather(*(run_stream(indices) for indices in by_stream.values()))
        return results

    async def _observe_alerts(
        self, stream_id: str, handle: ModelHandle, points: list[ScoredPoint]
    ) -> AlertUpdate | None:
        """The stream's lifecycle over ``points``; None when Redis failed (logged and counted, never raised:
        alerts never break scoring)."""
        if not points:
            return AlertUpdate([], "")
        name = handle.manifest.name
        started = time.perf_counter()
        try:
            update = await self._alerts.observe(stream_id, name, handle.levels, points)
        except Exception:  # noqa: BLE001 - side path: alerts never break scoring
            log.exception("alert update of stream %s failed; the next request applies it", stream_id)
            self._metrics.redis_errors.labels("alerts").inc()
            return None
        self._metrics.redis_latency.labels("alerts").observe(time.perf_counter() - started)
        for event in update.events:
            self._metrics.alert_transitions.labels(name, event["state"], event["severity"]).inc()
            if event["state"] == "firing" and not event["escalated"]:
                self._metrics.alerts_firing.labels(name).inc()
            elif event["state"] == "resolved":
                self._metrics.alerts_firing.labels(name).dec()
        return update

    def _count_levels(self, model: str, points: ScoredPoints) -> None:
        self._metrics.points_scored.labels(model).inc(len(points))
        warnings = sum(1 for level in points.levels if level != "normal")
        criticals = sum(1 for level in points.levels if level == "critical")
        if warnings:
            self._metrics.scores_above.labels(model, "warning").inc(warnings)
        if criticals:
            self._metrics.scores_above.labels(model, "critical").inc(criticals)


class _AlertsPending(Exception):
    """Scored windows whose alert update failed: answered, not committed."""


@dataclass(frozen=True)
class ScoredBlock:
    """Scored points in ts order: their scores and top contributions ``[n, k]`` (sensor index, share)."""

    ts: list[float]
    scores: list[float]
    top_index: npt.NDArray[np.intp]
    top_share: F32

    @classmethod
    def join(cls, blocks: list[ScoredBlock], top_k: int) -> ScoredBlock:
        if len(blocks) == 1:
            return blocks[0]
        if not blocks:
            return cls([], [], np.empty((0, top_k), dtype=np.intp), np.empty((0, top_k), dtype=np.float32))
        return cls(
            [t for b in blocks for t in b.ts],
            [v for b in blocks for v in b.scores],
            np.concatenate([b.top_index for b in blocks]),
            np.concatenate([b.top_share for b in blocks]),
        )

    def with_levels(self, levels: list[str], sensor_names: list[str]) -> ScoredPoints:
        return ScoredPoints(self.ts, self.scores, levels, self.top_index, self.top_share, sensor_names)


def join_points(parts: list[ScoredPoints], sensor_names: list[str], top_k: int) -> ScoredPoints:
    """The scored points of several claimed batches, in order."""
    if len(parts) == 1:
        return parts[0]
    if not parts:
        empty = np.empty((0, min(top_k, len(sensor_names))))
        return ScoredPoints([], [], [], empty.astype(np.intp), empty.astype(np.float32), sensor_names)
    return ScoredPoints(
        [t for p in parts for t in p.ts],
        [v for p in parts for v in p.scores],
        [level for p in parts for level in p.levels],
        np.concatenate([p.top_index for p in parts]),
        np.concatenate([p.top_share for p in parts]),
        sensor_names,
    )


LEVEL_NAMES = {"0": "normal", "1": "warning", "2": "critical"}


def _levels(block: ScoredBlock, levels: LevelThresholds, update: AlertUpdate | None) -> list[str]:
    """Each point's level: against the stream's own thresholds when they follow the stream (the alert update
    says which were in effect), else against the model's calibrated ones."""
    if update is not None and levels.policy.thresholds == "adaptive" and len(update.levels) == len(block.ts):
        fixed = [level_of(v, levels.warning, levels.critical) for v in block.scores]
        return [LEVEL_NAMES.get(c, f) for c, f in zip(update.levels, fixed, strict=True)]
    return [level_of(v, levels.warning, levels.critical) for v in block.scores]


def _item_error(stream_id: str | None, exc: VigilError) -> BatchItem:
    return BatchItem(stream_id, error=ItemError(exc.code, exc.detail, exc.status))
