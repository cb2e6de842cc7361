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

    ``limit`` starts at ``max_inflight`` and adapts: when a flood keeps the event loop saturated (reading and
    refusing requests costs time too), admitted requests slow down however few they are, so while requests
    are being refused and the admitted ones' mean time in the server stays above ``TARGET_S``, the limit
    shrinks by a quarter per ``STEP_S``. It grows by a quarter per step while they are fast again, and is
    back at ``max_inflight`` after a step without refusals (slow requests alone never shrink it)."""

    EXEMPT = frozenset(("/healthz", "/readyz", "/metrics"))
    TARGET_S = 0.5
    STEP_S = 0.25
    MIN_LIMIT = 4

    def __init__(self, app: ASGIApp, max_inflight: int, metrics: Metrics) -> None:
        self.app = app
        self.max_inflight = max_inflight
        self.metrics = metrics
        self.inflight = 0
        self.limit = max_inflight
        self._mean_s = 0.0  # exponentially weighted time in the server of admitted requests
        self._next_step = 0.0
        self._refused = 0  # since the last step

    def _adapt(self, duration_s: float) -> None:
        self._mean_s += 0.05 * (duration_s - self._mean_s)
        now = time.monotonic()
        if now < self._next_step:
            return
        self._next_step = now + self.STEP_S
        refused, self._refused = self._refused, 0
        if not refused:
            self.limit = self.max_inflight
        elif self._mean_s > self.TARGET_S:
            self.limit = max(self.MIN_LIMIT, self.limit * 3 // 4)
        elif self._mean_s < self.TARGET_S / 2:
            self.limit = min(self.max_inflight, self.limit + max(1, self.limit // 4))

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
        started = time.perf_counter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1
            self._adapt(time.perf_counter() - started)


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
