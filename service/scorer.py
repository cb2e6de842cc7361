"""The scoring use cases: a stream's points, a stateless window, many streams at once.

Stream path: validate → a scoring round (``service.rounds``: append, batch the due windows, score, alerts,
history, commit).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from contextlib import ExitStack
from typing import cast

import numpy as np
import numpy.typing as npt

from models.manifest import Normalisation
from models.scoring import F32, levels_of, normalise
from service.alerts import AlertTracker
from service.codec import BadItem, PointBatch, WindowInput
from service.errors import BadInput, EarlierItemFailed, PayloadTooLarge, VigilError
from service.history import ScoreHistory
from service.metrics import Metrics
from service.registry import ModelHandle, ModelRegistry
from service.results import BatchItem, ItemError, StreamResult, WindowResult
from service.rounds import ScoringRound, StreamJob, block_of, count_levels
from service.windows import WindowStore

log = logging.getLogger(__name__)

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


def validate_range(values: F32, norm: Normalisation, field: str) -> F32:
    """Values ``[n, C]`` within ``Z_MAX`` training scales of each sensor's mean; returns them normalised. Further
    out, finite float32 input overflows in normalised space: its score would be inf or NaN (served as ``null``,
    level normal)."""
    with np.errstate(over="ignore", invalid="ignore"):
        normalised = normalise(values, norm)
        far = ~(np.abs(normalised) <= Z_MAX)
    if far.any():
        raise BadInput(
            f"{field}.{int(np.argmax(far.any(axis=1)))}.values: a value lies more than {Z_MAX:g} training "
            "scales from its sensor's mean; the model cannot score it"
        )
    return normalised


MAX_ABS_TS = 1e19  # epoch nanoseconds reach 1e19 in the year 2286


def validate_ts(ts: npt.NDArray[np.float64], starts: npt.NDArray[np.intp] | None = None) -> None:
    """Finite, within ``MAX_ABS_TS`` and strictly increasing; ``starts`` (the first index of every request after
    the first, when ``ts`` joins several) exempts the steps between requests."""
    if not np.isfinite(ts).all():
        raise BadInput(f"points.{int(np.argmin(np.isfinite(ts)))}.ts: must be a finite number")
    far = np.abs(ts) > MAX_ABS_TS
    if far.any():
        raise BadInput(
            f"points.{int(np.argmax(far))}.ts: beyond ±{MAX_ABS_TS:g} (epoch ns reach 1e19 in 2286)"
        )
    steps = np.diff(ts)
    if starts is not None:
        steps[starts - 1] = 1.0  # another request's first point: no order against the one before
    if (steps <= 0).any():
        raise BadInput(
            f"points.{int(np.argmax(steps <= 0)) + 1}.ts: timestamps must strictly increase within a request"
        )


class StreamScorer:
    """The scoring use cases. Stream requests go through :class:`service.rounds.ScoringRound`: one request is a
    round of one stream, a batch is rounds of one item per stream (a stream's items keep their order)."""

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
        self._metrics = metrics
        self._max_points = max_points
        self._top_k = top_k
        # Claims a failed request could not give up (Redis was down): freed before the stream's next append.
        self._round = ScoringRound(windows, alerts, history, metrics, top_k, unreleased={})

    def _job(self, batch: PointBatch, handle: ModelHandle) -> StreamJob:
        """Validate a stream request against its model; raises :class:`BadInput` naming the field."""
        manifest = handle.manifest
        values = validate_values(batch.values, manifest.n_features, "points")
        validate_range(values, manifest.normalisation, "points")
        validate_ts(batch.ts)
        return StreamJob(batch, handle, values)

    def _jobs_checked_together(
        self, batches: list[PointBatch], handle: ModelHandle
    ) -> list[StreamJob] | None:
        """The checks of :meth:`_job` run once over the points of every batch (same model) joined: one numpy
        pass instead of a dozen small calls per item (over a thousand for a 100-item ``/score/batch``). None when any
        check fails, or the rows are ragged: then each batch is checked alone and only the bad ones fail, with
        their own message."""
        manifest = handle.manifest
        arrays = [batch.values for batch in batches]
        if not all(isinstance(values, np.ndarray) and len(values) for values in arrays):
            return None
        starts = np.cumsum([len(batch.ts) for batch in batches])[:-1]
        try:
            values = validate_values(np.concatenate(arrays), manifest.n_features, "points")
            validate_range(values, manifest.normalisation, "points")
            validate_ts(np.concatenate([batch.ts for batch in batches]), starts)
        except (BadInput, ValueError):  # ValueError: widths differ, np.concatenate refuses
            return None
        parts = np.split(values, starts)
        return [StreamJob(batch, handle, part) for batch, part in zip(batches, parts, strict=True)]

    async def score_points(self, batch: PointBatch) -> StreamResult:
        """Append a stream's points and score every window now due: the new ones and any that an earlier
        request stored but did not get scored (see ``service.windows``): scoring is as durable as storage."""
        if len(batch.ts) > self._max_points:
            raise PayloadTooLarge(
                f"points: {len(batch.ts)} points in one request; at most {self._max_points}"
            )
        with self._models.lease(batch.model) as handle:
            job = self._job(batch, handle)
            await self._round.run([job])
            if job.error is not None:
                raise job.error
            return job.result(self._top_k)

    async def score_window(self, request: WindowInput) -> WindowResult:
        """Stateless: score every row of one whole window; no stream, no alerts."""
        with self._models.lease(request.model) as handle:
            manifest = handle.manifest
            window = request.window
            if window.shape[0] != manifest.window_length:
                raise BadInput(f"window: {window.shape[0]} rows, the model expects {manifest.window_length}")
            values = validate_values(window, manifest.n_features, "window")
            normalised = validate_range(values, manifest.normalisation, "window")
            result = await handle.batcher.submit(normalised[None])
            ts = np.arange(manifest.window_length, dtype=np.float64)
            block = block_of(ts, result.scores[0], result.contributions[0], self._top_k)
            levels = handle.levels
            points = block.with_levels(
                levels_of(result.scores[0], levels.warning, levels.critical), manifest.feature_names
            )
            count_levels(self._metrics, manifest.name, points)
            return WindowResult(manifest.name, manifest.version, points)

    async def score_many(self, items: list[PointBatch | BadItem]) -> list[BatchItem]:
        """One result per item; a bad item fails alone, with the items of its stream after it (stored, their
        newer points would make the failed item's stale for good, so its retry could never be stored). Round r
        takes the r-th item of every stream, so items of one stream run in order and each round costs about one
        stream's round trips."""
        total = sum(len(i.ts) for i in items if isinstance(i, PointBatch))
        if total > self._max_points:
            raise PayloadTooLarge(f"items: {total} points in one request; at most {self._max_points}")
        results: list[BatchItem] = [BatchItem(None) for _ in items]
        queues: dict[str, list[int]] = defaultdict(list)
        failed: dict[str, tuple[int, VigilError]] = {}  # stream -> its first failed item and the error

        def fail(index: int, stream_id: str | None, exc: VigilError) -> None:
            results[index] = _item_error(stream_id, exc)
            if stream_id is not None and (stream_id not in failed or index < failed[stream_id][0]):
                failed[stream_id] = (index, exc)

        for index, item in enumerate(items):
            if isinstance(item, BadItem):
                fail(index, item.stream_id, item.error)
            else:
                queues[item.stream_id].append(index)
        with ExitStack() as leases:
            handles: dict[str | None, ModelHandle] = {}
            for position in range(max((len(q) for q in queues.values()), default=0)):
                by_model: dict[str | None, list[int]] = defaultdict(list)
                for queue in queues.values():
                    if position >= len(queue):
                        continue
                    index = queue[position]
                    item = items[index]
                    assert isinstance(item, PointBatch)
                    earlier = failed.get(item.stream_id)
                    if earlier is not None and earlier[0] < index:
                        results[index] = _item_error(item.stream_id, _after_failed(item.stream_id, *earlier))
                        continue
                    try:
                        if item.model not in handles:
                            handles[item.model] = leases.enter_context(self._models.lease(item.model))
                    except VigilError as exc:
                        fail(index, item.stream_id, exc)
                    else:
                        by_model[item.model].append(index)
                jobs: list[tuple[int, StreamJob]] = []
                for model, indices in by_model.items():
                    batches = [cast(PointBatch, items[index]) for index in indices]
                    together = self._jobs_checked_together(batches, handles[model])
                    if together is not None:
                        jobs.extend(zip(indices, together, strict=True))
                        continue
                    for index, batch in zip(indices, batches, strict=True):
                        try:
                            jobs.append((index, self._job(batch, handles[model])))
                        except VigilError as exc:
                            fail(index, batch.stream_id, exc)
                jobs.sort(key=lambda pair: pair[0])  # the items' order, as when each was checked alone
                await self._round.run([job for _, job in jobs])
                for index, job in jobs:
                    if job.error is not None:
                        fail(index, job.stream_id, job.error)
                    else:
                        results[index] = BatchItem(job.stream_id, job.result(self._top_k))
        return results


def _after_failed(stream_id: str, index: int, exc: VigilError) -> EarlierItemFailed:
    return EarlierItemFailed(
        f"not stored: item {index} of stream {stream_id!r} failed before it ({exc.code}); send both again, "
        "in order",
        exc.status,
    )


def _item_error(stream_id: str | None, exc: VigilError) -> BatchItem:
    return BatchItem(stream_id, error=ItemError(exc.code, exc.detail, exc.status))
