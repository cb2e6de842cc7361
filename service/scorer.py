"""The stream scoring use case: validate → append to the window store → batch → score → alerts."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from models.scoring import level_of, normalise, pending_points, top_contributions
from service.alerts import AlertTracker, ScoredPoint
from service.errors import BadInput, PayloadTooLarge, StoreUnavailable
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.schemas import StreamScoreRequest
from service.windows import WindowStore

DROP_REASONS = {1: "duplicate", 2: "stale"}


class StreamScorer:
    def __init__(
        self,
        models: ModelRegistry,
        windows: WindowStore,
        alerts: AlertTracker,
        metrics: Metrics,
        max_points: int,
        top_k: int,
    ) -> None:
        self._models = models
        self._windows = windows
        self._alerts = alerts
        self._metrics = metrics
        self._max_points = max_points
        self._top_k = top_k

    def _validated_arrays(
        self, request: StreamScoreRequest, n_features: int
    ) -> tuple[np.ndarray[Any, np.dtype[np.float64]], np.ndarray[Any, np.dtype[np.float32]]]:
        points = request.points
        if len(points) > self._max_points:
            raise PayloadTooLarge(f"points: {len(points)} points in one request; at most {self._max_points}")
        for i, point in enumerate(points):
            if len(point.values) != n_features:
                raise BadInput(f"points.{i}.values: {len(point.values)} values, the model expects {n_features}")
        ts = np.fromiter((p.ts for p in points), dtype=np.float64, count=len(points))
        values = np.asarray([p.values for p in points], dtype=np.float64)
        if not np.isfinite(ts).all():
            raise BadInput(f"points.{int(np.argmin(np.isfinite(ts)))}.ts: must be a finite number")
        bad = ~np.isfinite(values)
        if bad.any():
            row = int(np.argmax(bad.any(axis=1)))
            raise BadInput(f"points.{row}.values: NaN or infinite values are not accepted")
        if np.abs(values).max() > np.finfo(np.float32).max:
            raise BadInput("points.values: a value overflows float32")
        steps = np.diff(ts)
        if (steps <= 0).any():
            row = int(np.argmax(steps <= 0)) + 1
            raise BadInput(f"points.{row}.ts: timestamps must strictly increase within a request")
        return ts, values.astype(np.float32)

    async def score(self, request: StreamScoreRequest) -> dict[str, Any]:
        handle = self._models.get(request.model)
        manifest = handle.manifest
        ts, values = self._validated_arrays(request, manifest.n_features)
        started = time.perf_counter()
        try:
            appended = await self._windows.append(
                request.stream_id, manifest.name, manifest.window_length, manifest.stride, ts, values
            )
        except StoreUnavailable:
            self._metrics.redis_errors.labels("append").inc()
            raise
        self._metrics.redis_latency.labels("append").observe(time.perf_counter() - started)

        dropped = [
            {"ts": float(ts[i]), "reason": DROP_REASONS[s]} for i, s in enumerate(appended.status) if s != 0
        ]
        self._metrics.points_received.labels(manifest.name).inc(len(ts))
        for item in dropped:
            self._metrics.points_dropped.labels(item["reason"]).inc()

        scores: list[dict[str, Any]] = []
        scored_points: list[ScoredPoint] = []
        if appended.windows:
            stacked = normalise(np.stack([w.values for w in appended.windows]), manifest.normalisation)
            result = await handle.batcher.submit(stacked)
            thresholds = manifest.thresholds
            names = manifest.feature_names
            for row, window in enumerate(appended.windows):
                span = window.span
                for ts_value, score, shares in zip(
                    window.ts[-span:], result.scores[row, -span:], result.contributions[row, -span:], strict=True
                ):
                    top = top_contributions(shares, names, self._top_k)
                    score_f = float(score)
                    scores.append(
                        {
                            "ts": float(ts_value),
                            "score": score_f,
                            "level": level_of(score_f, thresholds.warning, thresholds.critical),
                            "contributions": [{"sensor": s, "share": share} for s, share in top],
                        }
                    )
                    scored_points.append(ScoredPoint(float(ts_value), score_f, [s for s, _ in top]))
            self._count_levels(manifest.name, scores)

        events: list[dict[str, Any]] = []
        if scored_points:
            try:
                events = await self._alerts.observe(
                    request.stream_id,
                    manifest.name,
                    manifest.thresholds.warning,
                    manifest.thresholds.critical,
                    scored_points,
                )
            except Exception:  # noqa: BLE001 - side path: alerts never break scoring
                self._metrics.redis_errors.labels("alerts").inc()
                events = []
            for event in events:
                self._metrics.alert_transitions.labels(manifest.name, event["state"], event["severity"]).inc()

        return {
            "stream_id": request.stream_id,
            "model": manifest.name,
            "version": manifest.version,
            "accepted": appended.count_after - appended.count_before,
            "dropped": dropped,
            "pending": pending_points(appended.count_after, manifest.window_length, manifest.stride),
            "scores": scores,
            "alerts": events,
        }

    def _count_levels(self, model: str, scores: list[dict[str, Any]]) -> None:
        self._metrics.points_scored.labels(model).inc(len(scores))
        warnings = sum(1 for s in scores if s["level"] != "normal")
        criticals = sum(1 for s in scores if s["level"] == "critical")
        if warnings:
            self._metrics.scores_above.labels(model, "warning").inc(warnings)
        if criticals:
            self._metrics.scores_above.labels(model, "critical").inc(criticals)
