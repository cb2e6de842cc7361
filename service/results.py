"""Typed results of the scoring use cases, and their two wire shapes.

The scorer keeps scored points columnar (one array per field, as numpy produced them); the routes render them
either as an object per point (the default JSON shape, ``service.schemas.PointScore``) or, on request
(``?format=columns``), as one array per field with the sensor names once (``service.schemas.ColumnScores``):
less to build and to parse when many points come back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypedDict

import numpy as np
import numpy.typing as npt

from models.scoring import F32

Shape = Literal["rows", "columns"]


class AlertEventData(TypedDict):
    """An alert lifecycle event as the tracker returns and the feed serves it (``service.schemas.AlertEvent``)."""

    id: str | None
    stream_id: str
    model: str
    state: str
    severity: str
    ts: float
    started_ts: float
    peak_score: float
    threshold: float
    sensors: list[str]
    escalated: bool


@dataclass(frozen=True)
class ScoredPoints:
    """Scored points in ts order: ``top_index``/``top_share`` ``[n, k]`` are each point's top sensors."""

    ts: list[float]
    scores: list[float]
    levels: list[str]
    top_index: npt.NDArray[np.intp]
    top_share: F32
    sensor_names: list[str]

    def __len__(self) -> int:
        return len(self.ts)

    def rows(self) -> list[dict[str, Any]]:
        """An object per point, its top sensors as objects: every point's contribution objects are made in one
        comprehension over all points, then each point takes its slice (half the cost of a comprehension per
        point for 100 points of 3 sensors: ``bench.parse_cost``)."""
        if not self.ts:  # most items of a batch request score nothing (a window is due every stride points)
            return []
        k = self.top_index.shape[1] if self.top_index.ndim == 2 else 0
        step = k or 1  # no sensors: every point's slice is empty
        names = np.array(self.sensor_names, dtype=object)[self.top_index.reshape(-1)].tolist()
        flat = [
            {"sensor": name, "share": share}
            for name, share in zip(names, self.top_share.reshape(-1).tolist(), strict=True)
        ]
        return [
            {"ts": ts, "score": score, "level": level, "contributions": flat[start : start + k]}
            for start, ts, score, level in zip(
                range(0, step * len(self.ts), step), self.ts, self.scores, self.levels, strict=True
            )
        ]

    def columns(self) -> dict[str, Any]:
        return {
            "ts": self.ts,
            "score": self.scores,
            "level": self.levels,
            "top_sensors": self.top_index,
            "top_shares": self.top_share,
        }

    def render(self, shape: Shape) -> list[dict[str, Any]] | dict[str, Any]:
        return self.rows() if shape == "rows" else self.columns()


@dataclass(frozen=True)
class DroppedPoint:
    ts: float
    reason: Literal["duplicate", "stale"]


@dataclass(frozen=True)
class StreamResult:
    """What a stream request did: points stored and dropped, scores of the windows it scored, alert events."""

    stream_id: str
    model: str
    version: str
    accepted: int
    dropped: list[DroppedPoint]
    pending: int
    points: ScoredPoints
    alerts: list[AlertEventData]

    def render(self, shape: Shape) -> dict[str, Any]:
        body: dict[str, Any] = {
            "stream_id": self.stream_id,
            "model": self.model,
            "version": self.version,
            "accepted": self.accepted,
            "dropped": [{"ts": d.ts, "reason": d.reason} for d in self.dropped],
            "pending": self.pending,
            "scores": self.points.render(shape),
            "alerts": self.alerts,
        }
        if shape == "columns":
            body["sensors"] = self.points.sensor_names
        return body


@dataclass(frozen=True)
class WindowResult:
    """A stateless window's scores (ts = row index)."""

    model: str
    version: str
    points: ScoredPoints

    def render(self, shape: Shape) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            "version": self.version,
            "scores": self.points.render(shape),
        }
        if shape == "columns":
            body["sensors"] = self.points.sensor_names
        return body


@dataclass(frozen=True)
class ItemError:
    code: str
    detail: str
    status: int


@dataclass(frozen=True)
class BatchItem:
    """One item of a batch request: its result, or the error that failed it alone."""

    stream_id: str | None
    result: StreamResult | None = None
    error: ItemError | None = None

    def render(self, shape: Shape) -> dict[str, Any]:
        if self.error is not None:
            error = {"code": self.error.code, "detail": self.error.detail, "status": self.error.status}
            return {"stream_id": self.stream_id, "error": error}
        assert self.result is not None
        return {"stream_id": self.stream_id, "result": self.result.render(shape)}
