"""Bounds on the requests in progress: the whole process's (:class:`InflightLimitMiddleware`, 503) and each API
key's share of it (:class:`KeySlots`, 429), so that one key cannot hold every slot."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import Overloaded, TooManyRequests, error_body
from service.metrics import Metrics
from service.responses import JSONBytesResponse


class InflightLimitMiddleware:
    """Answers 503 ``overloaded`` (Retry-After) at once, before reading the body, while ``limit`` HTTP
    requests are in progress. Under overload the event loop and Redis fill before the inference queue does;
    without this bound every accepted request waits behind all the others, so latency, open sockets and
    memory grow with the offered load. Health and metrics stay answerable.

    ``limit`` starts at ``max_inflight`` and adapts to bound the time admitted requests spend in the server:
    by Little's law the mean time in the server is the requests in progress over the rate they complete at,
    so while requests are being refused the limit is set each ``STEP_S`` to ``TARGET_S`` times the measured
    completion rate (never under ``MIN_LIMIT``): what the server can finish within ``TARGET_S``. A flood that
    saturates the event loop lowers the completion rate and with it the limit. After a step without refusals
    the limit is back at ``max_inflight``."""

    EXEMPT = frozenset(("/healthz", "/readyz", "/metrics"))
    TARGET_S = 0.25
    STEP_S = 0.25
    MIN_LIMIT = 4

    def __init__(self, app: ASGIApp, max_inflight: int, metrics: Metrics) -> None:
        self.app = app
        self.max_inflight = max_inflight
        self.metrics = metrics
        self.inflight = 0
        self.limit = max_inflight
        self._rate = 0.0  # completions per second, exponentially weighted over steps
        self._completed = 0  # since the last step
        self._step_started = time.monotonic()
        self._refused = 0  # since the last step

    def _adapt(self) -> None:
        self._completed += 1
        now = time.monotonic()
        elapsed = now - self._step_started
        if elapsed < self.STEP_S:
            return
        rate = self._completed / elapsed
        self._rate = rate if self._rate == 0.0 else 0.5 * self._rate + 0.5 * rate
        refused, self._refused, self._completed, self._step_started = self._refused, 0, 0, now
        if refused:
            self.limit = max(self.MIN_LIMIT, min(self.max_inflight, int(self.TARGET_S * self._rate)))
        else:
            self.limit = self.max_inflight

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.EXEMPT:
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.limit:
            self._refused += 1
            self.metrics.rejections.labels(Overloaded.code).inc()
            body = error_body(Overloaded.code, f"server busy: {self.inflight} requests in progress")
            await JSONBytesResponse(body, status_code=503, headers={"Retry-After": "1"})(scope, receive, send)
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1
            self._adapt()


class KeySlots:
    """Requests in progress per API key, at most ``limit`` for each (None: no bound). The global in-flight
    limit alone let one key's slow bodies fill every slot (260 connections that sent 13 bytes of a
    100 000-byte body made every other client's POST /score a 503 while they were held); with a per-key
    share the others keep being served. Held from authentication (before the body is read) to the end of
    the request; refused with :class:`TooManyRequests` (429, Retry-After) at once."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.held: Counter[str] = Counter()

    @contextmanager
    def hold(self, key_name: str) -> Iterator[None]:
        if self.limit is not None and self.held[key_name] >= self.limit:
            raise TooManyRequests(
                f"key {key_name!r} has {self.held[key_name]} requests in progress; at most {self.limit}"
            )
        self.held[key_name] += 1
        try:
            yield
        finally:
            self.held[key_name] -= 1
            if not self.held[key_name]:
                del self.held[key_name]
