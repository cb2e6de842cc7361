"""Bounds on the requests in progress: the whole process's (503) and each API key's share of it (429), so that one
key cannot hold every slot. Both are refused in :class:`InflightLimitMiddleware`, before routing, authentication
or the body: a refusal must cost far less than a served request, or shedding itself saturates the event loop."""

from __future__ import annotations

import time
from collections import Counter

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
    the limit is back at ``max_inflight``.

    ``per_key`` (None: no bound) is the most requests one bearer token may have in progress; beyond it that
    token is answered 429 ``too_many_requests`` (Retry-After) at once. The token is read from the raw
    ``Authorization`` header, not authenticated here: an unknown token gets its 401 from the route, before its
    body is read. A token's refusals do not lower the global limit: they are that client's excess, not the
    server's overload. The global limit alone let one key's slow bodies fill every slot (260 connections that
    sent 13 bytes of a 100 000-byte body made every other client's POST /score a 503 while they were held);
    refused in a route dependency instead of here, one key's flood at three times capacity cost the event loop
    so much that the requests it admitted waited seconds."""

    EXEMPT = frozenset(("/healthz", "/readyz", "/metrics"))
    TARGET_S = 0.25
    STEP_S = 0.25
    MIN_LIMIT = 4

    def __init__(self, app: ASGIApp, max_inflight: int, metrics: Metrics, per_key: int | None = None) -> None:
        self.app = app
        self.max_inflight = max_inflight
        self.metrics = metrics
        self.per_key = per_key
        self.inflight = 0
        self.held: Counter[bytes] = Counter()  # requests in progress per bearer token
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
        token = bearer_token(scope) if self.per_key is not None else None
        if self.inflight >= self.limit:
            self._refused += 1
            message = f"server busy: {self.inflight} requests in progress"
            await self._refuse(scope, receive, send, 503, Overloaded.code, message)
            return
        if token is not None and self.held[token] >= self.per_key:  # type: ignore[operator]
            message = f"this API key has {self.held[token]} requests in progress; at most {self.per_key}"
            await self._refuse(scope, receive, send, 429, TooManyRequests.code, message)
            return
        self.inflight += 1
        if token is not None:
            self.held[token] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1
            if token is not None:
                self.held[token] -= 1
                if not self.held[token]:
                    del self.held[token]
            self._adapt()

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str
    ) -> None:
        self.metrics.rejections.labels(code).inc()
        response = JSONBytesResponse(
            error_body(code, message), status_code=status, headers={"Retry-After": "1"}
        )
        await response(scope, receive, send)


def bearer_token(scope: Scope) -> bytes | None:
    """The credential of an ``Authorization: Bearer <token>`` header as sent, or None."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() or None if scheme.lower() == b"bearer" else None
    return None
