"""Where a bundle's sensors come from: a Prometheus source description, and the rows it makes (torch-free).

A source is a list of PromQL queries, one per sensor and in the order of the bundle's ``feature_names``, each
returning one series per value of the label ``by`` (e.g. ``instance``: one stream per host), evaluated on a grid
of ``step_s`` (timestamps that are multiples of the step, so every reader sees the same grid). Training, the
backtest and the service's poller all turn query results into rows with :func:`align_rows`, so they agree to the
row.

The gap rule, per label value: a sensor without a value at a grid point takes its last value when that is at
most ``max_fill_steps`` steps old; a row any sensor cannot fill is a gap, and a gap splits the series into
segments (windows never cross one). Filling looks only backwards, so a row's fate depends only on what came
before it: a poller that reads a few steps before its first new row decides every row as a backtest would.
(Prometheus itself carries a plain selector's last sample forward for 5 minutes, its lookback; the rule applies
to what the queries return.)
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

F64 = npt.NDArray[np.float64]

LABEL_NAME = r"^[a-zA-Z_][a-zA-Z0-9_]*$"
SENSOR_NAME = r"^[A-Za-z_][A-Za-z0-9_.:-]{0,63}$"
# Stream ids the service accepts (service/schemas.py STREAM_ID_PATTERN); other characters of a label value
# become "_".
_NOT_IN_STREAM_ID = re.compile(r"[^A-Za-z0-9._:-]")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0, "y": 31536000.0}


class SourceError(ValueError):
    """A source description, or rows, that cannot be used; the message names the query or label value."""


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SourceQuery(_Frozen):
    """One sensor: its name (a feature name of the bundle) and the PromQL that gives it per label value."""

    name: str = Field(pattern=SENSOR_NAME)
    expr: str = Field(min_length=1)


class GapRule(_Frozen):
    """A sensor missing for at most ``max_fill_steps`` grid steps takes its last value; a longer gap splits."""

    max_fill_steps: int = Field(5, ge=0, le=10_000)


class PrometheusSource(_Frozen):
    """The sensors of a bundle as Prometheus queries. The server's URL is deployment-specific and not part of
    it: the service takes it from its settings, ``vigil train`` and ``vigil backtest`` from the command line."""

    kind: Literal["prometheus"] = "prometheus"
    queries: list[SourceQuery] = Field(min_length=1)
    by: str = Field("instance", pattern=LABEL_NAME)
    step_s: float = Field(gt=0)
    gap: GapRule = GapRule()
    preset: str | None = None  # the preset the queries came from, for the reader

    @field_validator("queries")
    @classmethod
    def _unique(cls, queries: list[SourceQuery]) -> list[SourceQuery]:
        seen: set[str] = set()
        for query in queries:
            if query.name in seen:
                raise ValueError(f"query {query.name!r} is named twice; each query is one sensor")
            seen.add(query.name)
        return queries

    @model_validator(mode="after")
    def _step(self) -> PrometheusSource:
        if round(self.step_s * 1000) != self.step_s * 1000:
            raise ValueError(f"step {self.step_s} s: Prometheus steps are whole milliseconds")
        return self

    @property
    def feature_names(self) -> list[str]:
        return [q.name for q in self.queries]

    def same_sensors(self, other: PrometheusSource) -> bool:
        """Same queries in the same order, same label, same step: the streams mean the same."""
        return (self.queries, self.by, self.step_s) == (other.queries, other.by, other.step_s)


@dataclass(frozen=True)
class Segment:
    """Consecutive usable grid rows of one label value: ``ts`` [n] epoch seconds, ``values`` [n, C]."""

    ts: F64
    values: F64

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    def since(self, ts: float) -> Segment:
        """The rows at or after ``ts``."""
        keep = self.ts >= ts
        return Segment(self.ts[keep], self.values[keep])


@dataclass(frozen=True)
class Samples:
    """What one query returned for one label value: ``ts`` [n] epoch seconds, ``values`` [n] (NaN allowed)."""

    ts: F64
    values: F64


def grid_bounds(start: float, end: float, step_s: float) -> tuple[float, float]:
    """The first and last multiples of the step within ``[start, end]``."""
    first = math.ceil(round(start / step_s, 6)) * step_s
    last = math.floor(round(end / step_s, 6)) * step_s
    return first, last


def align_rows(
    samples: list[Samples | None], start: float, end: float, step_s: float, max_fill_steps: int
) -> list[Segment]:
    """One label value's rows on the grid of ``[start, end]``: one entry of ``samples`` per query (None: the
    query returned nothing for it), filled forward and split at gaps (module docstring). Non-finite values
    count as missing."""
    first, last = grid_bounds(start, end, step_s)
    if last < first:
        return []
    n_rows = int(round((last - first) / step_s)) + 1
    table = np.full((n_rows, len(samples)), np.nan)
    for column, got in enumerate(samples):
        if got is None or got.ts.size == 0:
            continue
        index = np.rint((got.ts - first) / step_s).astype(np.int64)
        inside = (index >= 0) & (index < n_rows)
        table[index[inside], column] = got.values[inside]
    observed = np.isfinite(table)
    rows = np.arange(n_rows)[:, None]
    last_seen = np.maximum.accumulate(np.where(observed, rows, -1), axis=0)  # [T, C]
    fillable = (last_seen >= 0) & (rows - last_seen <= max_fill_steps)
    filled = np.take_along_axis(table, np.maximum(last_seen, 0), axis=0)
    usable = fillable.all(axis=1)
    ts = first + np.arange(n_rows) * step_s
    edges = np.diff(np.concatenate(([0], usable.astype(np.int8), [0])))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    return [
        Segment(np.ascontiguousarray(ts[a:b]), np.ascontiguousarray(filled[a:b]))
        for a, b in zip(starts.tolist(), stops.tolist(), strict=True)
    ]


def stream_id_of(label_value: str) -> str:
    """The stream id of a label value: itself when the service accepts it, else with ``_`` for each other
    character (and at most 128 characters)."""
    if not label_value:
        raise SourceError("an empty label value cannot name a stream")
    return _NOT_IN_STREAM_ID.sub("_", label_value)[:128]


def parse_duration(text: str) -> float:
    """Seconds of a Prometheus duration (``90s``, ``1m30s``, ``14d``) or of a plain number of seconds."""
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        parts = _DURATION.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise SourceError(f"{text!r} is not a duration (e.g. 60s, 5m, 1h30m, 14d)") from None
        seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
    if not math.isfinite(seconds) or seconds <= 0:
        raise SourceError(f"{text!r}: a duration must be positive")
    return seconds


def parse_time(text: str) -> float:
    """Epoch seconds of an RFC 3339 time (``2026-01-01T00:00:00Z``; no zone: UTC) or of a number."""
    value = text.strip()
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise SourceError(
            f"{text!r} is not a time (RFC 3339, e.g. 2026-01-01T00:00:00Z, or epoch s)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def format_time(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")
