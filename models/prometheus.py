"""Reading a source's sensors from Prometheus's HTTP API (``/api/v1/query_range``), torch-free.

``fetch_rows`` runs every query of a :class:`models.source.PrometheusSource` over a range, in pieces of at most
``MAX_STEPS_PER_QUERY`` steps (Prometheus refuses more than 11,000 points per series and query), groups each
query's series by the source's label, and aligns them into segments per label value (``models.source``).
Training, ``vigil backtest`` and the service's poller all read through it.

Every error names the query it was running: :class:`SourceUnreachable` (no answer, or a 5xx: retry later),
:class:`QueryRejected` (Prometheus refused the PromQL: fix it), :class:`QueryFailed` (an answer Vigil cannot
use: a series without the label, several series for one label value, a value that is not a number),
:class:`QueryEmpty` (no series at all over the range, when data is required).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import numpy as np

from models.source import (
    PrometheusSource,
    Samples,
    Segment,
    SourceError,
    SourceQuery,
    align_rows,
    grid_bounds,
    stream_id_of,
)

MAX_STEPS_PER_QUERY = 10_000  # Prometheus's limit is 11,000 points per series and query


class PrometheusError(SourceError):
    """A query that could not be answered; ``query`` is its sensor name."""

    def __init__(self, query: str, detail: str) -> None:
        super().__init__(f"query {query!r}: {detail}")
        self.query = query
        self.detail = detail


class SourceUnreachable(PrometheusError):
    """No answer, a timeout or a 5xx: the server may come back."""


class QueryRejected(PrometheusError):
    """Prometheus refused the expression (HTTP 400, ``bad_data``): the PromQL is wrong."""


class QueryFailed(PrometheusError):
    """An answer Vigil cannot use, or an evaluation error (HTTP 422)."""


class QueryEmpty(PrometheusError):
    """No series over the range."""


def redact(url: str) -> str:
    """``url`` without credentials, for logs, errors and metrics."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class SourceRows:
    """Rows of every label value over a range: segments in time order, by stream id (label values in order)."""

    segments: dict[str, list[Segment]]
    label_values: dict[str, str]  # stream id -> the label value it came from
    # Label values left out of a lenient read (``fetch_rows(lenient=True)``) -> why; a strict read raises instead.
    refused: dict[str, str] = field(default_factory=dict)

    def n_rows(self) -> int:
        return sum(len(s) for segments in self.segments.values() for s in segments)


class PrometheusClient:
    """A synchronous client of one Prometheus (``url`` as ``http://host:9090``, optionally with a path prefix
    and credentials). One per thread of use."""

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise SourceError(f"Prometheus URL {redact(url)!r} must start with http:// or https://")
        self.url = url.rstrip("/")
        self.name = redact(self.url)
        self._http = httpx.Client(timeout=timeout_s)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PrometheusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _get(self, query: SourceQuery, path: str, params: dict[str, str]) -> dict[str, Any]:
        try:
            response = self._http.get(f"{self.url}{path}", params=params)
        except httpx.HTTPError as exc:
            raise SourceUnreachable(
                query.name, f"Prometheus at {self.name} did not answer ({type(exc).__name__}: {exc})"
            ) from exc
        try:
            body: dict[str, Any] = response.json()
        except ValueError:
            body = {}
        error = f"{body.get('errorType', 'error')}: {body.get('error', response.text[:200])}"
        if response.status_code >= 500:
            raise SourceUnreachable(
                query.name, f"Prometheus at {self.name} answered {response.status_code} ({error})"
            )
        if response.status_code == 400:
            raise QueryRejected(query.name, f"Prometheus refused {query.expr!r}: {error}")
        if response.status_code != 200 or body.get("status") != "success":
            raise QueryFailed(query.name, f"{query.expr!r} failed with HTTP {response.status_code} ({error})")
        return body

    def check(self, query: SourceQuery, at: float) -> None:
        """Evaluate ``query`` once at ``at``: raises :class:`QueryRejected` when the PromQL is wrong."""
        self._get(query, "/api/v1/query", {"query": query.expr, "time": _fmt(at)})

    def query_range(
        self,
        query: SourceQuery,
        by: str,
        start: float,
        end: float,
        step_s: float,
        refused: dict[str, str] | None = None,
    ) -> dict[str, Samples]:
        """The query's series over the grid of ``[start, end]``, by value of label ``by``. A series Vigil cannot
        use raises :class:`QueryFailed`, or, when ``refused`` is given, is left out and recorded there (its
        label value, or ``<no by>``, -> why)."""
        first, last = grid_bounds(start, end, step_s)
        pieces: dict[str, list[tuple[list[float], list[float]]]] = {}
        piece_start = first
        while piece_start <= last:
            piece_end = min(last, piece_start + (MAX_STEPS_PER_QUERY - 1) * step_s)
            body = self._get(
                query,
                "/api/v1/query_range",
                {
                    "query": query.expr,
                    "start": _fmt(piece_start),
                    "end": _fmt(piece_end),
                    "step": _fmt(step_s),
                },
            )
            for value, (ts, values) in _parse_matrix(query, by, body, refused).items():
                pieces.setdefault(value, []).append((ts, values))
            piece_start = piece_end + step_s
        return {
            value: Samples(
                np.asarray([t for ts, _ in parts for t in ts], dtype=np.float64),
                np.asarray([v for _, vs in parts for v in vs], dtype=np.float64),
            )
            for value, parts in pieces.items()
            if refused is None or value not in refused  # refused in a later piece: left out whole
        }


def _fmt(value: float) -> str:
    return repr(round(value, 3))


def _parse_matrix(
    query: SourceQuery, by: str, body: dict[str, Any], refused: dict[str, str] | None = None
) -> dict[str, tuple[list[float], list[float]]]:
    data = body.get("data") or {}
    if data.get("resultType") != "matrix":
        raise QueryFailed(
            query.name, f"{query.expr!r} gave a {data.get('resultType')!r}, not a range of series"
        )

    def refuse(value: str, reason: str) -> None:
        if refused is None:
            raise QueryFailed(query.name, reason)
        refused.setdefault(value, f"{query.name}: {reason}")

    out: dict[str, tuple[list[float], list[float]]] = {}
    for series in data.get("result", []):
        labels: dict[str, str] = series.get("metric", {})
        value = labels.get(by)
        if value is None:
            refuse(
                f"<no {by}>",
                f"{query.expr!r} returned a series without the label {by!r} ({labels}); aggregate with "
                f"`sum by ({by}) (…)` or keep the label",
            )
            continue
        if value in out or (refused is not None and value in refused):
            refuse(
                value,
                f"{query.expr!r} returned several series for {by}={value!r} ({labels} and another); each "
                f"query must give one series per {by}: aggregate, e.g. `sum by ({by}) (…)`",
            )
            out.pop(value, None)
            continue
        ts: list[float] = []
        values: list[float] = []
        for stamp, text in series.get("values", []):
            number = _number(text)
            if number is None:
                refuse(value, f"{query.expr!r} returned {text!r} for {by}={value!r} at {stamp}: not a number")
                break
            ts.append(float(stamp))
            values.append(number if math.isfinite(number) else math.nan)
        else:
            out[value] = (ts, values)
    return out


def _number(text: Any) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def fetch_rows(
    client: PrometheusClient,
    source: PrometheusSource,
    start: float,
    end: float,
    require_data: bool = False,
    lenient: bool = False,
) -> SourceRows:
    """The source's rows over ``[start, end]``. Queries are read from ``max_fill_steps`` before ``start`` so the
    first rows are filled (and split) exactly as in a longer read. ``require_data``: a query without any series
    raises :class:`QueryEmpty` (training; a poller takes an empty answer as missing data). ``lenient`` (the
    poller): a label value that any query answers unusably (several series, a value that is not a number), or
    two label values on one stream id, leave those values out (``SourceRows.refused``) instead of failing the
    read for every value."""
    lookback = start - source.gap.max_fill_steps * source.step_s
    refused: dict[str, str] | None = {} if lenient else None
    per_query: list[dict[str, Samples]] = []
    for query in source.queries:
        got = client.query_range(query, source.by, lookback, end, source.step_s, refused)
        if require_data and not got:
            raise QueryEmpty(
                query.name,
                f"{query.expr!r} returned no series between {start:.0f} and {end:.0f} at {client.name}",
            )
        per_query.append(got)
    values = sorted({value for got in per_query for value in got} - set(refused or ()))
    if refused is not None:
        values = _one_value_per_stream(values, refused)
    streams: dict[str, str] = {}
    segments: dict[str, list[Segment]] = {}
    for value in values:
        stream = _stream_id(value, streams)
        rows = align_rows(
            [got.get(value) for got in per_query], lookback, end, source.step_s, source.gap.max_fill_steps
        )
        kept = [s for s in (segment.since(start) for segment in rows) if len(s)]
        streams[stream] = value
        segments[stream] = kept
    return SourceRows(segments, streams, refused or {})


def _one_value_per_stream(values: list[str], refused: dict[str, str]) -> list[str]:
    """``values`` less those that share a stream id with another (each recorded in ``refused``)."""
    by_stream: dict[str, list[str]] = {}
    for value in values:
        by_stream.setdefault(stream_id_of(value), []).append(value)
    for stream, shared in by_stream.items():
        if len(shared) > 1:
            for value in shared:
                refused[value] = (
                    f"label values {', '.join(map(repr, shared))} all map to stream id {stream!r}"
                )
    return [value for value in values if value not in refused]


def _stream_id(value: str, taken: dict[str, str]) -> str:
    stream = stream_id_of(value)
    if stream in taken:
        raise SourceError(f"label values {taken[stream]!r} and {value!r} both map to stream id {stream!r}")
    return stream
