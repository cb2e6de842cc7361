"""Source polling: every step, the service reads each source-backed model's sensors from Prometheus and feeds
each label value's new rows into the stream path (``StreamScorer.score_points``, stream id = the label value), so
scores, contributions, alerts, history, the feed and Alertmanager delivery work as for ``POST /score``.

- **One poller per source.** Replicas (and workers) compete for a lease per model in Redis
  (``service.lease``); the holder polls and renews it every third of ``lease_s`` and before each stream's rows,
  another takes over within ``lease_s`` when it dies, at once when it stops cleanly. A poll that finds the lease
  gone stops, and only a holder writes the cursor; two pollers at once would be harmless to the points (the
  window store drops duplicate and stale points), not to a window one of them restarts.
- **Progress in Redis.** The newest grid row fed (``vigil:source:{<model>}:cursor``): a new holder or a restarted
  service continues from there.
- **A poll** reads ``[cursor, now - settle_s]`` (plus the fill rule's look-back, ``models.prometheus.fetch_rows``)
  and feeds the rows after the cursor. A segment that does not extend the stream's window (a gap longer than
  the fill rule, rows skipped beyond ``catch_up_s``, rows left out or refused, a window that does not reach the
  cursor's row) restarts the window (its alert state and history stay), as ``vigil backtest`` scores each
  segment from its start: the two agree point for point.
- **Failures** (Prometheus unreachable, a query refused, the stream path overloaded, Redis down) are counted,
  reported by ``/readyz`` per source and retried after a doubling backoff with jitter; the cursor stays, so the
  missed range is read when the source returns (rows older than ``catch_up_s`` are skipped).

Polling never blocks scoring: Prometheus is read in a worker thread, the rows go through the same path as a
client's points.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import secrets
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from redis.asyncio import Redis
from redis.exceptions import RedisError

from models.manifest import Manifest
from models.prometheus import (
    PrometheusClient,
    QueryFailed,
    QueryRejected,
    SourceUnreachable,
    fetch_rows,
    redact,
)
from models.source import Segment, SourceError, format_time
from service.codec import PointBatch
from service.errors import BadInput, ModelMismatch, PayloadTooLarge, UnknownModel, VigilError
from service.lease import Lease
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.scorer import StreamScorer
from service.settings import SourceClock, SourceSettings
from service.tasks import stop_task, stop_tasks
from service.windows import WindowStore

log = logging.getLogger(__name__)

LEVELS = {"normal": 0, "warning": 1, "critical": 2}
MAX_REFUSED_SHOWN = 20  # refused label values /readyz lists per source (all are counted)
SUPERVISE_S = 1.0  # how often the set of source-backed models is checked (reloads may add or drop one)


def cursor_key(model: str) -> str:
    return f"vigil:source:{{{model}}}:cursor"


def lease_key(model: str) -> str:
    return f"vigil:source:{{{model}}}:lease"


def poller_name() -> str:
    """This process as a lease holder: host, pid and a random suffix (pids repeat across containers)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class LeaseLost(Exception):
    """Another replica holds the source's lease now: this poll stops where it is."""


class Clock:
    """Wall-clock time, or the shifted clock of ``VIGIL_SOURCES__CLOCK``."""

    def __init__(self, shifted: SourceClock | None) -> None:
        self._shifted = shifted
        self.speed = shifted.speed if shifted else 1.0

    def now(self) -> float:
        if self._shifted is None:
            return time.time()
        return self._shifted.origin + (time.time() - self._shifted.at) * self._shifted.speed


@dataclass
class SourceStatus:
    """What ``/readyz`` says about one source, as this process sees it."""

    prometheus: str
    state: str = "starting"  # standby (another replica polls), ok, failing, unconfigured
    polling: bool = False
    cursor: float | None = None
    lag_s: float | None = None
    failures: int = 0
    error: str | None = None
    last_success_at: float | None = None  # time.monotonic()
    # Label values the last poll left out (a query answered them unusably) -> why; the other values are fed.
    refused: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "prometheus": self.prometheus,
            "state": self.state,
            "polling": self.polling,
            "cursor": format_time(self.cursor) if self.cursor is not None else None,
            "lag_s": self.lag_s,
            "consecutive_failures": self.failures,
            "error": self.error,
            "last_success_s_ago": (
                round(time.monotonic() - self.last_success_at, 3)
                if self.last_success_at is not None
                else None
            ),
            "refused": dict(sorted(self.refused.items())[:MAX_REFUSED_SHOWN]),
            "refused_count": len(self.refused),
        }


class SourcePoller:
    """Polls every loaded bundle that has a source; ``start()`` once per app, ``stop()`` on shutdown."""

    def __init__(
        self,
        redis: Redis,
        settings: SourceSettings,
        models: ModelRegistry,
        scorer: StreamScorer,
        windows: WindowStore,
        metrics: Metrics,
        max_points: int,
        replica: str,
    ) -> None:
        self._redis = redis
        self._settings = settings
        self._models = models
        self._scorer = scorer
        self._windows = windows
        self._metrics = metrics
        self._max_points = max_points
        self._replica = replica
        self._clock = Clock(settings.clock)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._status: dict[str, SourceStatus] = {}
        self._exported: dict[str, set[str]] = {}
        self._supervisor: asyncio.Task[None] | None = None
        # Set by stop(): every loop ends on it, even where a cancellation reached a Redis call and came out as
        # a connection error (the loops catch those to keep polling).
        self._stopping = asyncio.Event()

    def sources(self) -> dict[str, str | None]:
        """Source-backed models loaded now, with their Prometheus URL (None: not configured)."""
        return {
            h.name: self._settings.url_for(h.name)
            for h in self._models.all()
            if h.manifest.source is not None
        }

    async def check_queries(self) -> None:
        """Evaluate every query of every source once: a query Prometheus refuses stops start-up, named. An
        unreachable Prometheus does not (it is retried, and /readyz says so)."""
        for name, url in self.sources().items():
            source = self._models.get(name).manifest.source
            if url is None or source is None:
                log.warning(
                    "model %s reads Prometheus but VIGIL_SOURCES__PROMETHEUS_URL is not set: no polling", name
                )
                continue
            client = PrometheusClient(url, min(self._settings.timeout_s, 5.0))
            try:
                for query in source.queries:
                    await asyncio.to_thread(client.check, query, self._clock.now())
            # unreachable, or a refusal for now (429, 503, …): not a refusal of the query
            except (SourceUnreachable, QueryFailed) as exc:
                log.warning("model %s: %s; polling will retry", name, exc)
            except QueryRejected as exc:
                raise QueryRejected(exc.query, f"model {name!r}: {exc.detail}") from exc
            finally:
                client.close()

    async def start(self) -> None:
        await self.check_queries()
        self._supervisor = asyncio.create_task(self._supervise(), name="source-poller")

    async def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the pollers (each gives its lease up); waits at most ``timeout_s`` (a Redis that hangs must
        not hold the shutdown)."""
        self._stopping.set()
        tasks = [*self._tasks.values(), *([self._supervisor] if self._supervisor is not None else [])]
        await stop_tasks(tasks, timeout_s, "source pollers")
        self._tasks.clear()

    def status(self) -> dict[str, dict[str, Any]]:
        return {name: status.as_dict() for name, status in sorted(self._status.items())}

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less when stop() is called."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), max(0.0, seconds))

    async def _supervise(self) -> None:
        while not self._stopping.is_set():
            wanted = self.sources()
            for name, url in wanted.items():
                task = self._tasks.get(name)
                if task is not None:
                    if not task.done():
                        continue
                    if not task.cancelled() and task.exception() is not None:
                        log.error("source %s: poller failed; restarting it", name, exc_info=task.exception())
                if url is None:
                    self._status[name] = SourceStatus("", state="unconfigured")
                    continue
                self._metrics.initialise_source(name)
                self._status[name] = SourceStatus(redact(url))
                self._tasks[name] = asyncio.create_task(self._run(name, url), name=f"source-poller:{name}")
            for name in [n for n in self._tasks if n not in wanted]:
                # a model no longer loaded: its poller ends (one cancel can be lost: service/tasks.py)
                await stop_task(self._tasks.pop(name), 5.0, f"source poller {name}")
                self._status.pop(name, None)
            await self._pause(SUPERVISE_S)

    async def _run(self, name: str, url: str) -> None:
        """Hold the model's lease and poll while holding it."""
        s = self._settings
        status = self._status[name]
        lease = Lease(self._redis, lease_key(name), self._replica, s.lease_s)
        client = PrometheusClient(url, s.timeout_s)
        renew_s = s.lease_s / 3
        next_poll = 0.0
        try:
            while not self._stopping.is_set():
                try:
                    holding = await lease.hold()
                except (RedisError, OSError) as exc:
                    log.warning("source %s: lease unavailable (%s)", name, type(exc).__name__)
                    holding = False
                if holding != status.polling:
                    log.info("source %s: %s polling", name, "started" if holding else "stopped")
                    if not holding:
                        self._unexport(name)
                status.polling = holding
                self._metrics.source_leader.labels(name).set(1 if holding else 0)
                if not holding:
                    status.state, status.refused = "standby", {}
                    self._metrics.source_refused_series.labels(name).set(0)
                    await self._pause(renew_s)
                    continue
                if time.monotonic() >= next_poll:
                    next_poll = time.monotonic() + await self._attempt(name, client, status, lease)
                    if status.cursor is not None:  # grows while polls fail
                        status.lag_s = round(self._clock.now() - status.cursor, 3)
                        self._metrics.source_lag.labels(name).set(status.lag_s)
                await self._pause(min(next_poll - time.monotonic(), renew_s))
        except UnknownModel:
            log.info("source %s: the model is no longer loaded", name)
        finally:
            # Off the event loop: a fetch still running in a worker thread holds the client's connection pool
            # (up to its timeout), and closing it here would stall every request and the shutdown meanwhile.
            await asyncio.to_thread(client.close)
            self._metrics.source_leader.labels(name).set(0)
            self._unexport(name)
            with contextlib.suppress(RedisError, OSError):
                await lease.release()

    async def _attempt(
        self, name: str, client: PrometheusClient, status: SourceStatus, lease: Lease
    ) -> float:
        """One poll; returns the seconds until the next (the next settled row, or the backoff)."""
        manifest = self._models.get(name).manifest
        try:
            behind = await self._poll(name, manifest, client, status, lease)
        except LeaseLost:
            log.warning("source %s: the lease passed to another replica during a poll; standing by", name)
            self._metrics.source_polls.labels(name, "lease_lost").inc()
            return 0.0
        except (SourceError, VigilError, RedisError, OSError) as exc:
            return self._failed(name, status, exc)
        except Exception as exc:  # noqa: BLE001 - an answer this code did not foresee fails the poll, not the poller
            log.exception("source %s: poll failed unexpectedly", name)
            return self._failed(name, status, exc)
        if status.failures:
            log.info("source %s: polling again after %d failed poll(s)", name, status.failures)
        status.failures, status.state, status.error = 0, "ok", None
        status.last_success_at = time.monotonic()
        self._metrics.source_polls.labels(name, "ok").inc()
        return 0.0 if behind else self._until_next_row(manifest)

    def _failed(self, name: str, status: SourceStatus, exc: Exception) -> float:
        """Count a failed poll; returns the backoff before the next (doubling, with jitter)."""
        status.failures += 1
        status.state = "failing"
        status.error = str(exc) if isinstance(exc, SourceError | VigilError) else type(exc).__name__
        self._metrics.source_polls.labels(name, "failed").inc()
        level = logging.WARNING if status.failures == 1 else logging.DEBUG
        log.log(level, "source %s: poll failed (%s); retrying with backoff", name, status.error)
        s = self._settings
        backoff = min(s.backoff_max_s, s.backoff_initial_s * 2.0 ** (status.failures - 1))
        return backoff * random.uniform(0.5, 1.0)

    def _until_next_row(self, manifest: Manifest) -> float:
        """Real seconds until the next row settles (or the configured poll interval)."""
        s = self._settings
        if s.poll_interval_s is not None or manifest.source is None:
            return (s.poll_interval_s or SUPERVISE_S) / self._clock.speed
        step = manifest.source.step_s
        now = self._clock.now()
        next_row = (math.floor((now - s.settle_s) / step) + 1) * step
        return max(0.0, next_row + s.settle_s - now) / self._clock.speed

    async def _poll(
        self, name: str, manifest: Manifest, client: PrometheusClient, status: SourceStatus, lease: Lease
    ) -> bool:
        """Read the rows since the cursor, at most ``max_rows_per_poll`` of them, and feed them; True when more
        rows have settled (a catch-up goes on at once, a bounded piece at a time). The lease is renewed before
        each stream's rows and the cursor written only while it is held (one Lua call): a poll longer than the
        lease (a slow Prometheus, a pause) stops, unrecorded, once another replica holds it, instead of
        restarting windows the other has fed or moving the cursor back."""
        s = self._settings
        source = manifest.source
        if source is None:  # a reload cannot drop the source (service.registry); nothing to read if it did
            return False
        step = source.step_s
        now = self._clock.now()
        settled = math.floor((now - s.settle_s) / step) * step
        raw = await self._redis.get(cursor_key(name))
        cursor = float(raw) if raw is not None else None
        if cursor is None:
            start = s.start_at if s.start_at is not None else settled - (manifest.window_length - 1) * step
            first_new = math.ceil(start / step) * step
        else:
            first_new = cursor + step
        oldest = math.ceil((settled - s.catch_up_s) / step) * step
        if cursor is None and s.start_at is None:
            oldest = min(oldest, first_new)  # a first window is always read whole: it is what scores at once
        if first_new < oldest:
            log.warning(
                "source %s: %d rows older than the catch-up limit (%g s) skipped",
                name,
                round((oldest - first_new) / step),
                s.catch_up_s,
            )
            first_new = oldest
        end = min(settled, first_new + (s.max_rows_per_poll - 1) * step)
        if end >= first_new:
            rows = await asyncio.to_thread(fetch_rows, client, source, first_new - step, end, lenient=True)
            self._note_refused(name, status, rows.refused)
            for stream, segments in rows.segments.items():
                for segment in segments:
                    new = segment.since(first_new)
                    if not len(new):
                        continue
                    if not await lease.hold():
                        raise LeaseLost(name)
                    if not await self._continues(stream, segment, first_new, step):
                        try:
                            restarted = await self._windows.restart(stream, name)
                        except ModelMismatch as exc:  # a stream of another model: left alone, never deleted
                            self._refuse(name, stream, len(new), exc.detail)
                            continue
                        if restarted and cursor is not None:
                            self._metrics.source_gaps.labels(name).inc()
                    await self._feed(name, stream, new)
            if not await lease.write_if_held(cursor_key(name), repr(end)):
                raise LeaseLost(name)
            cursor = end
        status.cursor = cursor
        return end < settled

    def _note_refused(self, name: str, status: SourceStatus, refused: dict[str, str]) -> None:
        """Log each label value when a poll first leaves it out, and when it is read again."""
        for value in refused.keys() - status.refused.keys():
            log.warning("source %s: %s left out: %s", name, value, refused[value])
        for value in status.refused.keys() - refused.keys():
            log.info("source %s: %s read again", name, value)
        status.refused = refused
        self._metrics.source_refused_series.labels(name).set(len(refused))

    async def _continues(self, stream: str, segment: Segment, first_new: float, step: float) -> bool:
        """Whether the segment's new rows extend the stream's window: the segment runs through the row before
        them, and the window already holds that row (its newest point at it or later: rows of a retried poll
        are dropped as duplicates). Not so after a gap in the data, rows skipped beyond the catch-up limit, rows
        of the stream a poll left out or the stream path refused, or a stream no replica has fed yet: the
        window restarts, as the backtest starts each segment anew."""
        if segment.ts[0] >= first_new:
            return False
        newest = await self._windows.last_ts(stream)
        return newest is not None and newest >= first_new - 1.5 * step  # half a step for float grids

    async def _feed(self, name: str, stream: str, rows: Segment) -> None:
        """Send one stream's rows through the stream path. Points it refuses (a value out of range, a stream id
        bound to another model) are logged and counted, never retried (the rest of the stream's rows in this
        poll with them: its window then ends before them, so its next rows restart it); an overloaded or
        unreachable store fails the poll, which then retries from the same cursor."""
        for first in range(0, len(rows), self._max_points):
            chunk = slice(first, first + self._max_points)
            batch = PointBatch(stream, name, rows.ts[chunk], np.ascontiguousarray(rows.values[chunk]))
            try:
                result = await self._scorer.score_points(batch)
            except (BadInput, ModelMismatch, PayloadTooLarge) as exc:
                self._refuse(name, stream, len(rows.ts) - first, exc.detail)
                return
            self._metrics.source_points.labels(name, "fed").inc(len(batch.ts))
            if len(result.points):
                self._export(name, stream, result.points.scores[-1], result.points.levels[-1])

    def _refuse(self, name: str, stream: str, n_points: int, detail: str) -> None:
        log.warning("source %s: stream %s refused %d point(s): %s", name, stream, n_points, detail)
        self._metrics.source_points.labels(name, "refused").inc(n_points)

    def _export(self, name: str, stream: str, score: float, level: str) -> None:
        s = self._settings
        exported = self._exported.setdefault(name, set())
        if not s.export_scores or not math.isfinite(score):
            return
        if stream not in exported:
            if sum(len(e) for e in self._exported.values()) >= s.max_exported_streams:
                return
            exported.add(stream)
        self._metrics.stream_score.labels(name, stream).set(score)
        self._metrics.stream_level.labels(name, stream).set(LEVELS.get(level, 0))

    def _unexport(self, name: str) -> None:
        for stream in self._exported.pop(name, set()):
            with contextlib.suppress(KeyError):
                self._metrics.stream_score.remove(name, stream)
                self._metrics.stream_level.remove(name, stream)
