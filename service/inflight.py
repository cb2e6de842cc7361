"""Bounds on the requests in progress: the whole process's (503) and each API key's share of it (429), so that one
key cannot hold every slot. Both are refused in :class:`InflightLimitMiddleware`, before routing, authentication
or the body: a refusal must cost far less than a served request, or shedding itself saturates the event loop."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from service.backlog import Flow, Step
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
    so while requests are being refused (:class:`service.backlog.Flow`) the limit is set each ``STEP_S`` to
    ``TARGET_S`` times the measured completion rate (never under ``MIN_LIMIT``): what the server can finish
    within ``TARGET_S``. A flood that saturates the event loop lowers the completion rate and with it the limit.
    After four quiet steps in a row the limit is back at ``max_inflight``.

    ``per_key`` (None: no bound) is the most requests one bearer token may have in progress, or what the token
    completes in ``TARGET_S`` at its usual rate where that is more (``Flow.slow_rate``), up to half of
    ``max_inflight`` (a key with every slot is never refused on its own, and its flood met only the server's
    limit: stateless windows at 120 % of their peak, 1,100 requests/s, were all admitted, p99 1.5 s);
    beyond it that token is answered 429 ``too_many_requests`` (Retry-After) at once. A fixed count alone refused a
    light key's requests in every stall longer than the share's worth of its arrivals (64 at 500 requests/s:
    128 ms; the soak, 1 % of its requests at 70 % of capacity, RELIABILITY.md), a stall its backlog drains from;
    a slow client's share stays ``per_key``, since its requests complete at no rate, and so does a token refused in
    its last step or retrying its refusals: a flood at three times capacity, let go between its bounds at the larger
    share, had its admitted requests wait twice as long (the slow overload test: p99 415 ms, 221 with the fixed
    share, 181 with this rule). The same law bounds each token's own
    wait: while a token floods (refused in two steps in a row, a burst of one step at 70 % of capacity being left
    alone; or its backlog grows while its requests spend over ``KEY_TARGET_S``), its bound is set each step to
    ``KEY_TARGET_S`` times the rate at which its requests complete (never under ``MIN_LIMIT``, never over
    ``per_key``), so one client that offers more than the server completes (the only client of a deployment, at
    120 % of its peak) waits about that long per request instead of its whole share's worth (64 batch requests
    of 100 items: about 0.9 s). Not while the token retries its refusals in a tight loop (``Flow.RETRY_SHARE``):
    then its refusals, not its admitted work, load the event loop, and fewer slots would only multiply them; it
    keeps ``per_key``. A growing backlog engages the bound before the share fills (refusals alone engaged it only then,
    and every request admitted meanwhile waited behind that queue: accepted p99 1.8-2.2 s for batches at 120 %,
    BENCHMARKS.md); a standing one does not: a closed loop of 32 clients holds 32 requests whatever their wait,
    and bounding it only turns the clients' retries into refusals that cost the event loop (tried: the peak fell
    by half, BENCHMARKS.md).
    The token is read from the raw ``Authorization`` header, not authenticated here: an unknown token gets its
    401 from the route, before its body is read. A token's refusals do not lower the global limit: they are that
    client's excess, not the server's overload. The global limit alone let one key's slow bodies fill every slot
    (260 connections that sent 13 bytes of a 100 000-byte body made every other client's POST /score a 503 while
    they were held); refused in a route dependency instead of here, one key's flood at three times capacity cost
    the event loop so much that the requests it admitted waited seconds."""

    EXEMPT = frozenset(("/healthz", "/readyz", "/metrics"))
    TARGET_S = 0.25
    # A refused token's bound: the mean time its admitted requests spend in the server. Little's law bounds the
    # mean, and a request's time varies with the inference round it joins, so the mean is held at 100 ms for a
    # p99 within the 250 ms that issue 17 asks at 120 % of capacity (one key's binary requests: p99 292-313 ms
    # with the fixed share, 194-214 ms with this bound; BENCHMARKS.md).
    KEY_TARGET_S = 0.1
    STEP_S = 0.25
    IDLE_S = 2 * STEP_S

    def __init__(
        self,
        app: ASGIApp,
        max_inflight: int,
        metrics: Metrics,
        per_key: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.clock = clock
        self.max_inflight = max_inflight
        self.metrics = metrics
        self.per_key = per_key
        self.inflight = 0
        self.held: Counter[bytes] = Counter()  # requests in progress per bearer token
        self.limit = max_inflight
        self.key_limits: dict[bytes, int] = {}  # the tokens bounded under their share now
        self.key_shares: dict[bytes, int] = {}  # the tokens whose share is over per_key now
        self._step_started = clock()
        self._flow = Flow(self.TARGET_S, burst_steps=1, by_growth=False)
        self._tally = Tally(self._step_started)
        # Tokens holding requests, refused or bounded: their flows, and their counts in the step under way.
        self._key_flows: dict[bytes, Flow] = {}
        self._key_tallies: dict[bytes, Tally] = {}

    def _key_tally(self, token: bytes, now: float) -> Tally:
        tally = self._key_tallies.get(token)
        if tally is None:
            tally = self._key_tallies[token] = Tally(now)
        return tally

    def _key_bound(self, token: bytes | None) -> int | None:
        """The most requests ``token`` may hold now: its flood's bound, else its share; None: no bound."""
        if token is None or self.per_key is None:
            return None
        bound = self.key_limits.get(token)
        return self.key_shares.get(token, self.per_key) if bound is None else bound

    def admit(self, token: bytes | None, now: float) -> tuple[int, str, str] | None:
        """Takes a slot for a request of ``token`` arriving at ``now``, or gives the refusal: (status, code,
        message)."""
        if now - self._step_started > self.IDLE_S and (self.key_limits or self.limit < self.max_inflight):
            self._forget_flows()  # nothing completed for a while: a request after a pause meets no old bound
        if self.inflight >= self.limit:
            self._tally.refused += 1
            return 503, Overloaded.code, f"server busy: {self.inflight} requests in progress"
        bound = self._key_bound(token)
        if token is not None and bound is not None and self.held[token] >= bound:
            tally = self._key_tally(token, now)
            tally.refused += 1
            flow = self._key_flows.get(token)
            if flow is not None and flow.retrying(tally.refused, tally.completed):
                self.key_limits.pop(token, None)  # a retry loop: the share again, at once
                self.metrics.bounded_keys.set(len(self.key_limits))
            message = f"this API key has {self.held[token]} requests in progress; at most {bound} now"
            return 429, TooManyRequests.code, message
        self._tally.hold(self.inflight, now)
        self.inflight += 1
        if token is not None:
            self._key_tally(token, now).hold(self.held[token], now)
            self.held[token] += 1
        return None

    def release(self, token: bytes | None, now: float, sojourn_s: float) -> None:
        """Gives back the slot :meth:`admit` took, at ``now``, for a request that spent ``sojourn_s`` in the
        server; once a step has passed, sets the bounds for the next one."""
        self._tally.hold(self.inflight, now)
        self._tally.complete(sojourn_s)
        self.inflight -= 1
        if token is not None:
            tally = self._key_tally(token, now)
            tally.hold(self.held[token], now)
            tally.complete(sojourn_s)
            self.held[token] -= 1
            if not self.held[token]:
                del self.held[token]
        elapsed = now - self._step_started
        if elapsed < self.STEP_S:
            return
        self._step_started = now
        # The server's own refusals only: one token's excess is that client's, not the server's overload.
        bounded = self._flow.step(self._tally.close(self.inflight, now, elapsed), guard_retries=False)
        self.limit = self._flow.bound(self.max_inflight) if bounded else self.max_inflight
        if self._flow.engaged is not None:
            self.metrics.inflight_bounds.labels("server", self._flow.engaged).inc()
        if self.per_key is not None:
            self._adapt_keys(now, elapsed, self.per_key)
        if elapsed > self.IDLE_S:
            self._forget_flows()

    def _forget_flows(self) -> None:
        """After over ``IDLE_S`` without a completion (the load stopped), every flow starts afresh: a
        bound set for the flood before would meet whatever load comes next (measured: a closed loop of 32
        connections starting under a bound of 4 left by a finished flood was refused 3,912 times in its first
        step)."""
        self._flow = Flow(self.TARGET_S, burst_steps=1, by_growth=False)
        self.limit = self.max_inflight
        self._key_flows.clear()
        self.key_limits = {}
        self.metrics.bounded_keys.set(0)

    def _adapt_keys(self, now: float, elapsed: float, per_key: int) -> None:
        """Each token's step is recorded in its flow; the flooded ones get the bound their own completion rate
        allows, the others are back at their share. A token that holds nothing, completed nothing in the step
        and is neither refused nor bounded is forgotten: a later flow of its starts afresh."""
        self.key_limits, self.key_shares = {}, {}
        for token, tally in list(self._key_tallies.items()):
            flow = self._key_flows.get(token) or Flow(self.KEY_TARGET_S, burst_steps=2)
            step = tally.close(self.held.get(token, 0), now, elapsed)
            if flow.step(step):
                self.key_limits[token] = flow.bound(per_key)
            share = min(self.max_inflight // 2, int(self.TARGET_S * flow.slow_rate))
            if share > per_key and not flow.refused_steps and not flow.retried:
                self.key_shares[token] = share
            if flow.engaged is not None:
                self.metrics.inflight_bounds.labels("key", flow.engaged).inc()
            # Kept while the token completed anything in the step: a steady key caught between requests at the
            # step's end keeps its rates (a flow made afresh in a stall's step took the stall's rate as its own).
            if token in self.held or step.completed or not flow.idle:
                self._key_flows[token] = flow
            else:
                self._key_flows.pop(token, None)
                del self._key_tallies[token]
        self.metrics.bounded_keys.set(len(self.key_limits))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.EXEMPT:
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope) if self.per_key is not None else None
        started = self.clock()
        refusal = self.admit(token, started)
        if refusal is not None:
            await self._refuse(scope, receive, send, *refusal)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            now = self.clock()
            self.release(token, now, now - started)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str
    ) -> None:
        self.metrics.rejections.labels(code).inc()
        response = JSONBytesResponse(
            error_body(code, message), status_code=status, headers={"Retry-After": "1"}
        )
        await response(scope, receive, send)


@dataclass
class Tally:
    """One flow's counts in the step under way. The requests it holds are integrated over time: counted at the
    step's end alone they dipped by a round's worth whenever a round of batch requests had just completed (a
    closed loop of 32 read 24-31), which looked like growth."""

    since: float  # when the held count last changed, or the step began
    completed: int = 0
    refused: int = 0
    sojourn_s: float = 0.0
    held_s: float = 0.0  # requests held, integrated over the step's seconds

    def hold(self, held: int, now: float) -> None:
        """Integrates ``held``, the count since the last change, up to ``now``."""
        self.held_s += held * (now - self.since)
        self.since = now

    def complete(self, sojourn_s: float) -> None:
        self.completed += 1
        self.sojourn_s += sojourn_s

    def close(self, held: int, now: float, elapsed_s: float) -> Step:
        """The step as it ended at ``now`` (``held`` requests in progress), and the tally zeroed for the next."""
        self.hold(held, now)
        step = Step(self.completed, self.refused, self.held_s / elapsed_s, self.sojourn_s, elapsed_s)
        self.completed, self.refused, self.sojourn_s, self.held_s = 0, 0, 0.0, 0.0
        return step


def bearer_token(scope: Scope) -> bytes | None:
    """The credential of an ``Authorization: Bearer <token>`` header as sent, or None."""
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            return token.strip() or None if scheme.lower() == b"bearer" else None
    return None
