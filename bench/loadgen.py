"""An open-loop HTTP/1.1 load generator: requests leave on a fixed arrival schedule whatever the server does.

Closed-loop tools (wrk, hey) wait for a response before sending the next request, so a slow server slows the
generator down and its latency is under-reported (coordinated omission). Here request ``i`` is due at
``t0 + offset_i`` (Poisson or uniform arrivals at ``rate`` per second) and its latency is measured from that
scheduled time, so time spent waiting for a free connection counts. Connections are keep-alive and carry one
request at a time; when none is idle a new one is opened, up to ``max_connections``; beyond that requests
queue in the generator (their latency keeps counting from their scheduled time).

The client is a minimal asyncio ``Protocol`` (uvloop when installed) that writes pre-built requests and parses
only the status line and ``Content-Length`` (or a chunked body's end): httpx costs too much per request to
drive a server at thousands of requests per second. Generator CPU is read with ``getrusage`` and reported,
because on a 2-core machine the generator competes with the server.

CLI (a fixed body)::

    .venv/bin/python -m bench.loadgen http://127.0.0.1:8000/score --body window.json --rate 200 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import resource
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

RequestFactory = Callable[[int], bytes]  # request index -> complete HTTP/1.1 request bytes


@dataclass(frozen=True)
class OpenLoopResult:
    offered_rps: float
    achieved_rps: float  # 2xx responses per second of the schedule's length
    sent: int
    ok: int
    errors: int  # non-2xx responses and failed connections
    unfinished: int  # no response within the drain timeout after the schedule ended
    p50_ms: float  # latency percentiles over every request sent; one without a response counts as inf
    p95_ms: float
    p99_ms: float
    max_ms: float
    service_p99_ms: float  # from the actual send, i.e. without generator-side queueing
    late_sends: int  # requests that left more than 2 ms after their scheduled time (generator lag)
    max_connections_used: int
    generator_cpu_pct: float  # % of one core
    statuses: dict[int, int] = field(default_factory=dict)
    ok_p99_ms: float = float("nan")  # answered 2xx only, from the scheduled send time
    refused_p99_ms: float = float("nan")  # answered 429/503 only (shed), from the scheduled send time
    # answered 2xx and scheduled SETTLE_S or more after the step began: the level once admission control has
    # reacted to a step in the offered load, beside ok_p99_ms over the whole step (its onset included)
    ok_settled_p99_ms: float = float("nan")

    def as_row(self) -> list[float | int]:
        return [self.offered_rps, self.achieved_rps, self.p50_ms, self.p95_ms, self.p99_ms, self.max_ms]


class _Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request in flight."""

    def __init__(self, owner: OpenLoopGenerator) -> None:
        self.owner = owner
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.inflight: tuple[float, float] | None = None  # (scheduled, sent)
        self.expected: int | None = None  # total bytes of the current response, once headers are in
        self.chunked = False
        self.body_start = 0
        self.status = 0
        self.idle_since = 0.0  # when it last became idle (perf_counter)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports are not asyncio's classes
        self.owner.on_idle(self)

    def send(self, scheduled: float, payload: bytes) -> None:
        assert self.transport is not None
        self.inflight = (scheduled, time.perf_counter())
        self.transport.write(payload)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.inflight is not None:
            if self.expected is None and not self._read_head():
                return
            if self.chunked and not self._find_chunked_end():
                return
            assert self.expected is not None
            if len(self.buffer) < self.expected:
                return
            del self.buffer[: self.expected]
            self.expected, self.chunked = None, False
            scheduled, sent = self.inflight
            self.inflight = None
            self.owner.on_response(self, self.status, scheduled, sent)

    def _read_head(self) -> bool:
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        head = bytes(self.buffer[:end]).lower()
        self.status = int(head[9:12])
        self.body_start = end + 4
        marker = head.find(b"\r\ncontent-length:")
        if marker >= 0:
            stop = head.find(b"\r\n", marker + 2)
            self.expected = self.body_start + int(head[marker + 17 : stop if stop >= 0 else None])
        else:
            self.chunked = b"transfer-encoding: chunked" in head
            self.expected = self.body_start
        return True

    def _find_chunked_end(self) -> bool:
        """A chunked body ends with a zero-size chunk; JSON bodies never contain a raw CRLF."""
        if self.buffer.startswith(b"0\r\n\r\n", self.body_start):
            self.expected = self.body_start + 5
        else:
            end = self.buffer.find(b"\r\n0\r\n\r\n", self.body_start)
            if end < 0:
                return False
            self.expected = end + 7
        self.chunked = False
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.on_lost(self)


class OpenLoopGenerator:
    # A connection idle this long is closed rather than reused: uvicorn closes keep-alive connections idle for
    # 5 s, and a request written as that close arrives is lost on the wire (3 of 255,120 in a 10-minute soak,
    # 2026-12-05: the idle pool is last in, first out, so its oldest connections sit idle between bursts).
    IDLE_LIMIT_S = 4.0

    def __init__(self, url: str, max_connections: int = 256, drain_timeout_s: float = 10.0) -> None:
        parsed = urlparse(url)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 80
        self.max_connections = max_connections
        self.drain_timeout_s = drain_timeout_s

    async def run(
        self,
        make_request: RequestFactory,
        rate: float,
        duration_s: float,
        poisson: bool = True,
        seed: int = 0,
        min_requests: int = 20,
    ) -> OpenLoopResult:
        """Send ``rate × duration_s`` requests on schedule; returns latencies from the scheduled times."""
        self._loop = asyncio.get_running_loop()
        self._make = make_request
        self._backlog: deque[tuple[int, float]] = deque()
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._opening = 0
        self._latencies: list[float] = []
        self._service: list[float] = []
        self._statuses: Counter[int] = Counter()
        self._by_status: list[tuple[int, float, float]] = []  # status, latency, scheduled time
        self._failed = 0
        self._late = 0
        self._peak_connections = 0
        self._done = asyncio.Event()
        self._outstanding = 0

        n = max(min_requests, int(rate * duration_s))  # low rates run longer, so percentiles mean something
        rng = np.random.default_rng(seed)
        gaps = rng.exponential(1.0 / rate, n) if poisson else np.full(n, 1.0 / rate)
        offsets = np.cumsum(gaps) - gaps[0]
        cpu_before = _cpu_seconds()
        gc_was_enabled = gc.isenabled()
        gc.disable()  # a collection pause would delay sends and be charged to the server
        try:
            t0 = time.perf_counter() + 0.05
            due = (t0 + offsets).tolist()
            index = 0
            while index < n:
                now = time.perf_counter()
                while index < n and due[index] <= now:
                    self._dispatch(index, due[index])
                    index += 1
                if index < n:
                    await asyncio.sleep(max(0.0, due[index] - time.perf_counter()))
            if self._outstanding:
                with contextlib.suppress(TimeoutError):  # what is still out counts as unfinished
                    await asyncio.wait_for(self._done.wait(), self.drain_timeout_s)
            wall = max(time.perf_counter() - t0, 1e-9)
            span = n / rate  # the nominal schedule length
        finally:
            if gc_was_enabled:
                gc.enable()
            for conn in list(self._open):
                if conn.transport is not None:
                    conn.transport.close()
        cpu = _cpu_seconds() - cpu_before
        ok = sum(c for s, c in self._statuses.items() if 200 <= s < 300)
        # A request without a response (failed connection, or still out at the end) counts as infinitely
        # slow, so overload shows in the percentiles instead of vanishing from them.
        lost = np.full(self._failed + self._outstanding, np.inf)
        latencies = np.concatenate([np.asarray(self._latencies) * 1000.0, lost])
        pct = np.percentile(latencies, [50, 95, 99], method="higher").tolist()
        service_p99 = float(np.percentile(self._service, 99) * 1000.0) if self._service else float("nan")
        return OpenLoopResult(
            offered_rps=rate,
            achieved_rps=ok / span,
            sent=n,
            ok=ok,
            errors=self._failed + sum(c for s, c in self._statuses.items() if not 200 <= s < 300),
            unfinished=self._outstanding,
            p50_ms=pct[0],
            p95_ms=pct[1],
            p99_ms=pct[2],
            max_ms=float(latencies.max()),
            service_p99_ms=service_p99,
            late_sends=self._late,
            max_connections_used=self._peak_connections,
            generator_cpu_pct=100.0 * cpu / wall,
            statuses=dict(self._statuses),
            ok_p99_ms=_p99_ms([t for s, t, _ in self._by_status if 200 <= s < 300]),
            refused_p99_ms=_p99_ms([t for s, t, _ in self._by_status if s in (429, 503)]),
            ok_settled_p99_ms=_p99_ms(
                [t for s, t, at in self._by_status if 200 <= s < 300 and at >= t0 + SETTLE_S]
            ),
        )

    # ---- connection bookkeeping (event-loop callbacks) ----------------------------------------------------
    def _dispatch(self, index: int, scheduled: float) -> None:
        self._outstanding += 1
        self._done.clear()
        while self._idle:
            conn = self._idle.pop()
            if time.perf_counter() - conn.idle_since < self.IDLE_LIMIT_S:
                self._send(conn, index, scheduled)
                return
            self._open.discard(conn)
            if conn.transport is not None:
                conn.transport.close()
        self._backlog.append((index, scheduled))
        if len(self._open) + self._opening < self.max_connections:
            self._opening += 1
            self._loop.create_task(self._connect())

    async def _connect(self) -> None:
        try:
            await self._loop.create_connection(lambda: _Connection(self), self.host, self.port)
        except OSError:
            self._opening -= 1
            if self._backlog:  # the request that wanted this connection fails; others keep waiting
                self._backlog.popleft()
                self._fail()
            return
        self._opening -= 1

    def _send(self, conn: _Connection, index: int, scheduled: float) -> None:
        if time.perf_counter() - scheduled > 0.002:
            self._late += 1
        conn.send(scheduled, self._make(index))

    def on_idle(self, conn: _Connection) -> None:
        self._open.add(conn)
        self._peak_connections = max(self._peak_connections, len(self._open))
        if self._backlog:
            self._send(conn, *self._backlog.popleft())
        else:
            conn.idle_since = time.perf_counter()
            self._idle.append(conn)

    def on_response(self, conn: _Connection, status: int, scheduled: float, sent: float) -> None:
        now = time.perf_counter()
        self._latencies.append(now - scheduled)
        self._service.append(now - sent)
        self._statuses[status] += 1
        self._by_status.append((status, now - scheduled, scheduled))
        self._finish_one()
        if self._backlog:
            self._send(conn, *self._backlog.popleft())
        else:
            conn.idle_since = now
            self._idle.append(conn)

    def on_lost(self, conn: _Connection) -> None:
        self._open.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        if conn.inflight is not None:
            conn.inflight = None
            self._fail()

    def _fail(self) -> None:
        self._failed += 1
        self._finish_one()

    def _finish_one(self) -> None:
        self._outstanding -= 1
        if self._outstanding == 0:
            self._done.set()


SETTLE_S = 1.0  # what an admission limit may take to follow a step in the offered load


def _p99_ms(latencies_s: list[float]) -> float:
    return float(np.percentile(latencies_s, 99) * 1000.0) if latencies_s else float("nan")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_open_loop(
    url: str,
    make_request: RequestFactory,
    rate: float,
    duration_s: float,
    poisson: bool = True,
    max_connections: int = 256,
) -> OpenLoopResult:
    """Run one fixed-rate step on a fresh event loop (uvloop when available)."""
    generator = OpenLoopGenerator(url, max_connections)
    coroutine = generator.run(make_request, rate, duration_s, poisson)
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(coroutine)
    except ImportError:
        return asyncio.run(coroutine)


def main() -> None:
    from bench.workload import http_request

    parser = argparse.ArgumentParser(description="open-loop load at a fixed arrival rate, one fixed body")
    parser.add_argument("url", help="e.g. http://127.0.0.1:8000/score")
    parser.add_argument("--body", type=Path, required=True)
    parser.add_argument("--content-type", default="application/json")
    parser.add_argument("--header", action="append", default=[], help="'Name: value' (repeatable)")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("--uniform", action="store_true", help="evenly spaced arrivals instead of Poisson")
    parser.add_argument("--max-connections", type=int, default=256)
    args = parser.parse_args()
    headers = {"Content-Type": args.content_type}
    headers.update(dict(h.split(":", 1) for h in args.header))
    payload = http_request(
        "POST",
        urlparse(args.url).path or "/",
        {k: v.strip() for k, v in headers.items()},
        args.body.read_bytes(),
    )
    result = run_open_loop(
        args.url, lambda _: payload, args.rate, args.duration, not args.uniform, args.max_connections
    )
    for name, value in result.__dict__.items():
        print(f"{name:>22}: {value}")


if __name__ == "__main__":
    main()
