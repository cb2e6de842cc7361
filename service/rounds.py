"""One scoring round: the stream requests of distinct streams (one request, or one item per stream of a batch)
taken through the stream path together, so that many streams cost about what one does.

    validate (by the caller) → admission (queue room, before storing anything)
    → one round trip: every stream's append (one script call for all streams on one Redis, one per stream on a
      cluster; each claims the windows now due, see ``service.windows``)
    → one inference submission per model for every claimed window
    → one round trip: every stream's alert update, score history and commit (the commit happens only if the
      alert state saw the points, so a failed update leaves the windows for the stream's next request)
    → one round trip, only when events wait: the streams' outboxes to ``vigil:alerts``
    → again while a commit claimed windows that other requests stored meanwhile.

With thresholds that follow each stream, a point's level comes from the alert update, so that mode records
the score history in one more round trip. A failure fails the streams it touches, never the others.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from redis.exceptions import RedisError

from models.scoring import F32, levels_of, normalise, top_contributions_rows
from service.alerts import AlertTracker, AlertUpdate, Observed, PointColumns, alert_key
from service.codec import PointBatch
from service.errors import Overloaded, StoreUnavailable, VigilError
from service.history import ScoreHistory, pack_scores
from service.metrics import Metrics
from service.registry import ModelHandle
from service.results import AlertEventData, DroppedPoint, ScoredPoints, StreamResult
from service.roundtrip import RoundTrip
from service.windows import (
    ALERTS_PENDING,
    Append,
    AppendResult,
    Claim,
    DueWindow,
    StreamGeometry,
    WindowStore,
    meta_key,
)

log = logging.getLogger(__name__)

DROP_REASONS: dict[int, Literal["duplicate", "stale"]] = {1: "duplicate", 2: "stale"}


class _Tokens:
    """Claim tokens: unique across processes and replicas by a random 128-bit prefix (drawn again in a forked
    child), and within a process by a counter. A uuid4 per stream job was ~1 % of a 100-stream batch's samples."""

    def __init__(self) -> None:
        self.reseed()
        os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        self._prefix = secrets.token_hex(16)
        self._counter = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter):x}"


new_token = _Tokens()
LEVEL_NAMES = {"0": "normal", "1": "warning", "2": "critical"}


@dataclass
class StreamJob:
    """One stream request in a round: validated input, its claim token, and what it produced."""

    batch: PointBatch
    handle: ModelHandle
    values: F32
    token: str = field(default_factory=new_token)
    appended: AppendResult | None = None
    claim: Claim | None = None
    scored: list[ScoredPoints] = field(default_factory=list)
    events: list[AlertEventData] = field(default_factory=list)
    error: VigilError | None = None

    @property
    def stream_id(self) -> str:
        return self.batch.stream_id

    @property
    def geometry(self) -> StreamGeometry:
        m = self.handle.manifest
        return StreamGeometry(m.name, m.window_length, m.stride, m.n_features)

    def fail(self, error: VigilError) -> None:
        if self.error is None:
            self.error = error

    def result(self, top_k: int) -> StreamResult:
        assert self.appended is not None
        m = self.handle.manifest
        frontier = (
            self.claim if self.claim is not None and self.claim is not ALERTS_PENDING else self.appended.claim
        )
        scored = frontier.scored_points(m.window_length, m.stride)
        return StreamResult(
            stream_id=self.stream_id,
            model=m.name,
            version=m.version,
            accepted=self.appended.count_after - self.appended.count_before,
            dropped=[
                DroppedPoint(float(self.batch.ts[i]), DROP_REASONS[s])
                for i, s in enumerate(self.appended.status)
                if s
            ],
            pending=max(0, self.appended.count_after - scored),
            points=join_points(self.scored, m.feature_names, top_k),
            alerts=self.events,
        )


class ScoringRound:
    """Runs stream jobs of distinct streams through the stream path together (see the module docstring)."""

    def __init__(
        self,
        windows: WindowStore,
        alerts: AlertTracker,
        history: ScoreHistory,
        metrics: Metrics,
        top_k: int,
        unreleased: dict[str, str],
    ) -> None:
        self._windows = windows
        self._alerts = alerts
        self._history = history
        self._metrics = metrics
        self._top_k = top_k
        # Claims a failed request could not give up (Redis was down): freed before the stream's next append.
        self._unreleased = unreleased

    async def run(self, jobs: list[StreamJob]) -> None:
        """Take every job as far as it goes; a job's failure is in its ``error``."""
        self._admit(jobs)
        await self._release_stale([j for j in jobs if j.error is None])
        await self._append([j for j in jobs if j.error is None])
        active = [j for j in jobs if j.error is None and j.claim is not None and j.claim.windows]
        while active:
            scored = await self._infer(active)
            await self._settle(scored)
            active = [j for j in active if j.error is None and j.claim is not None and j.claim.windows]

    def _admit(self, jobs: list[StreamJob]) -> None:
        """Refuse before storing anything when a model's inference queue has no room for the round."""
        expected: dict[str, int] = {}
        for job in jobs:
            name = job.handle.name
            expected[name] = expected.get(name, 0) + len(job.batch.ts) // job.handle.manifest.stride + 1
        for job in jobs:
            if not job.handle.batcher.has_room(expected[job.handle.name]):
                job.fail(Overloaded(f"model {job.handle.name!r}: inference queue full"))

    async def _release_stale(self, jobs: list[StreamJob]) -> None:
        for job in jobs:
            stale = self._unreleased.pop(job.stream_id, None)
            if stale is not None and not await self._windows.release(job.stream_id, stale):
                self._unreleased[job.stream_id] = stale

    async def _append(self, jobs: list[StreamJob]) -> None:
        if not jobs:
            return
        trip = RoundTrip(self._windows.redis)
        decoders = self._windows.queue_appends(
            trip, [Append(j.stream_id, j.geometry, j.batch.ts, j.values, j.token) for j in jobs]
        )
        started = time.perf_counter()
        try:
            replies = await trip.execute()
        except RedisError as exc:
            self._metrics.redis_errors.labels("append").inc()
            for job in jobs:
                job.fail(StoreUnavailable(f"window store unavailable: {type(exc).__name__}"))
            return
        self._metrics.redis_latency.labels("append").observe(time.perf_counter() - started)
        for job, decode in zip(jobs, decoders, strict=True):
            try:
                job.appended = decode(replies)
            except VigilError as exc:
                job.fail(exc)
                continue
            job.claim = job.appended.claim
            name = job.handle.name
            self._metrics.points_received.labels(name).inc(len(job.batch.ts))
            for status in job.appended.status:
                if status:
                    self._metrics.points_dropped.labels(DROP_REASONS[status]).inc()
            if job.appended.abandoned_windows:
                log.error(
                    "stream %s: %d unscored windows given up (backlog over its bound after failures)",
                    job.stream_id,
                    job.appended.abandoned_windows,
                )

    async def _infer(self, jobs: list[StreamJob]) -> list[tuple[StreamJob, ScoredBlock]]:
        """One submission per model version for every claimed window of the round; returns each job's scored block."""
        # By handle, not by name: during a hot reload one batch may hold leases on two versions of a model
        # (items naming it and items leaving the model out lease it apart), each scored by its own version.
        by_model: dict[int, list[StreamJob]] = {}
        for job in jobs:
            by_model.setdefault(id(job.handle), []).append(job)
        out: list[tuple[StreamJob, ScoredBlock]] = []
        for group in by_model.values():
            handle = group[0].handle
            windows = [w for job in group for w in _claimed(job)]
            try:
                result = await handle.batcher.submit(
                    normalise(np.stack([w.values for w in windows]), handle.manifest.normalisation)
                )
            except VigilError as exc:
                for job in group:
                    if not job.scored:
                        job.fail(exc)
                    # Else a later pass: the windows other requests made due while this one held the claim. Its
                    # own points are scored, committed and answered; those windows go to the stream's next
                    # request, as for the requests that stored them (answered with them pending).
                    job.claim = None
                    await self._give_back(job)
                continue
            # Each window's newest ``span`` points, all windows of the group in one array per field: one top-k
            # pass and one list conversion for the group, then each job takes its slice.
            spans = [window.span for window in windows]
            ts = np.concatenate([w.ts[-span:] for w, span in zip(windows, spans, strict=True)]).tolist()
            rows = range(len(windows))
            scores = np.concatenate([result.scores[r, -span:] for r, span in zip(rows, spans, strict=True)])
            shares = np.concatenate(
                [result.contributions[r, -span:] for r, span in zip(rows, spans, strict=True)]
            )
            top_index, top_share = top_contributions_rows(shares, self._top_k)
            score_list = scores.tolist()
            start = row = 0
            for job in group:
                claimed = len(_claimed(job))
                end = start + sum(spans[row : row + claimed])
                block = ScoredBlock(
                    ts[start:end], score_list[start:end], top_index[start:end], top_share[start:end]
                )
                out.append((job, block))
                start, row = end, row + claimed
        return out

    async def _settle(self, scored: list[tuple[StreamJob, ScoredBlock]]) -> None:
        """Alerts, history and commit of every scored job in one round trip; then the outboxes."""
        trip = RoundTrip(self._windows.redis)
        pending: list[tuple[StreamJob, ScoredBlock, Any, Any, Any]] = []
        for job, block in scored:
            handle = job.handle
            points = PointColumns(block.ts, block.scores, _sensor_lists(block, handle.manifest.feature_names))
            fence = meta_key(job.stream_id)  # a stream deleted meanwhile gets no state back from this request
            observe = self._alerts.queue_observe(
                trip, job.stream_id, handle.name, handle.levels, points, fence=fence
            )
            record = None
            if handle.levels.policy.thresholds == "fixed":
                record = self._history.queue_record(
                    trip, job.stream_id, _records(block, _fixed_levels(block, job)), fence=fence
                )
            assert job.claim is not None
            commit = self._windows.queue_commit(
                trip,
                job.stream_id,
                job.geometry,
                job.token,
                job.claim.windows[-1].end_index,
                seen=(alert_key(job.stream_id), repr(block.ts[-1])),
            )
            pending.append((job, block, observe, record, commit))
        started = time.perf_counter()
        try:
            replies = await trip.execute()
        except RedisError:
            self._metrics.redis_errors.labels("alerts").inc()
            for job, block, *_ in pending:
                job.scored.append(
                    block.with_levels(_fixed_levels(block, job), job.handle.manifest.feature_names)
                )
                await self._answered_not_committed(job)
            return
        self._metrics.redis_latency.labels("alerts").observe(time.perf_counter() - started)
        observed: list[Observed] = []
        late_history: list[tuple[StreamJob, list[bytes]]] = []
        for job, block, observe, record, commit in pending:
            update: AlertUpdate | None
            try:
                done = observe(replies)
            except Exception:  # noqa: BLE001 - side path: alerts never break scoring
                self._metrics.redis_errors.labels("alerts").inc()
                update = None
            else:
                observed.append(done)
                update = done.update
                self._count_transitions(job.handle.name, update)
            levels = _levels(block, job, update)
            scored_points = block.with_levels(levels, job.handle.manifest.feature_names)
            job.scored.append(scored_points)
            self._count_levels(job.handle.name, scored_points)
            if record is not None:
                record(replies)
            else:
                late_history.append((job, _records(block, levels)))
            try:
                claim = commit(replies)
            except VigilError:  # the store refused or failed
                claim = ALERTS_PENDING
            if claim is ALERTS_PENDING:
                await self._answered_not_committed(job)
            else:
                job.claim = claim
            if update is not None:
                job.events.extend(update.events)
        await self._alerts.publish(observed)
        if late_history:
            trip = RoundTrip(self._windows.redis)
            checks = [
                self._history.queue_record(trip, job.stream_id, records, fence=meta_key(job.stream_id))
                for job, records in late_history
            ]
            try:
                replies = await trip.execute()
            except RedisError:
                return
            for check in checks:
                check(replies)

    async def _answered_not_committed(self, job: StreamJob) -> None:
        """Scores answered whose commit did not happen (the round trip failed, or the alert update did): the
        stream's next request (any replica) scores these windows again and applies them to its alerts (the
        tracker skips the points it already saw), so they are answered at least once, the same each time. The
        answer counts their points as pending, which says so."""
        assert job.claim is not None and job.claim.windows
        job.claim = Claim([], job.claim.windows[0].end_index)
        await self._give_back(job)

    async def _give_back(self, job: StreamJob) -> None:
        if not await self._windows.release(job.stream_id, job.token):
            self._unreleased[job.stream_id] = job.token

    def _count_transitions(self, model: str, update: AlertUpdate) -> None:
        for event in update.events:
            self._metrics.alert_transitions.labels(model, event["state"], event["severity"]).inc()
            if event["state"] == "firing" and not event["escalated"]:
                self._metrics.alerts_firing.labels(model).inc()
            elif event["state"] == "resolved":
                self._metrics.alerts_firing.labels(model).dec()

    def _count_levels(self, model: str, points: ScoredPoints) -> None:
        count_levels(self._metrics, model, points)


def count_levels(metrics: Metrics, model: str, points: ScoredPoints) -> None:
    metrics.points_scored.labels(model).inc(len(points))
    warnings = len(points.levels) - points.levels.count("normal")
    criticals = points.levels.count("critical")
    if warnings:
        metrics.scores_above.labels(model, "warning").inc(warnings)
    if criticals:
        metrics.scores_above.labels(model, "critical").inc(criticals)


def _claimed(job: StreamJob) -> list[DueWindow]:
    assert job.claim is not None
    return job.claim.windows


@dataclass(frozen=True)
class ScoredBlock:
    """Scored points in ts order: their scores and top contributions ``[n, k]`` (sensor index, share)."""

    ts: list[float]
    scores: list[float]
    top_index: npt.NDArray[np.intp]
    top_share: F32

    def with_levels(self, levels: list[str], sensor_names: list[str]) -> ScoredPoints:
        return ScoredPoints(self.ts, self.scores, levels, self.top_index, self.top_share, sensor_names)


def block_of(ts: npt.NDArray[np.float64], scores: F32, shares: F32, top_k: int) -> ScoredBlock:
    top_index, top_share = top_contributions_rows(shares, top_k)
    return ScoredBlock(ts.tolist(), scores.tolist(), top_index, top_share)


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


def _sensor_lists(block: ScoredBlock, names: list[str]) -> list[str]:
    """Each point's top sensors by name, joined by ``,`` (as the alert script keeps them)."""
    named: list[list[str]] = np.array(names, dtype=object)[block.top_index].tolist()
    return [",".join(row) for row in named]


def _fixed_levels(block: ScoredBlock, job: StreamJob) -> list[str]:
    levels = job.handle.levels
    return levels_of(block.scores, levels.warning, levels.critical)


def _levels(block: ScoredBlock, job: StreamJob, update: AlertUpdate | None) -> list[str]:
    """Each point's level: against the stream's own thresholds when they follow the stream (the alert update
    says which were in effect), else against the model's calibrated ones."""
    fixed = _fixed_levels(block, job)
    if (
        update is not None
        and job.handle.levels.policy.thresholds == "adaptive"
        and len(update.levels) == len(fixed)
    ):
        return [LEVEL_NAMES.get(c, f) for c, f in zip(update.levels, fixed, strict=True)]
    return fixed


def _records(block: ScoredBlock, levels: list[str]) -> list[bytes]:
    return pack_scores(block.ts, block.scores, levels, block.top_index, block.top_share)
