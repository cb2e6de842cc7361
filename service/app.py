"""``create_app(settings)``: the lifespan builds every component and closes it on shutdown."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.alerts import AlertTracker
from service.auth import KeyRing
from service.deps import Components
from service.errors import (
    Overloaded,
    PayloadTooLarge,
    StoreUnavailable,
    error_body,
    install_error_handlers,
)
from service.feed import FeedHub
from service.history import ScoreHistory
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.responses import JSONBytesResponse
from service.routes import feed, health, score, streams, ui
from service.schemas import BatchScoreRequest, StreamScoreRequest, WindowScoreRequest
from service.scorer import StreamScorer
from service.settings import Settings
from service.windows import WindowStore

log = logging.getLogger(__name__)


def redis_client(settings: Settings) -> Redis:
    """A pooled client for one Redis, or a cluster client when ``redis_cluster`` is set."""
    if settings.redis_cluster:
        cluster = RedisCluster.from_url(
            settings.redis_url,
            max_connections=settings.redis_pool_size,
            socket_timeout=settings.redis_timeout_s,
            socket_connect_timeout=settings.redis_timeout_s,
        )
        return cluster  # type: ignore[return-value]  # the commands Vigil uses share one interface
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_pool_size,
        timeout=settings.redis_timeout_s,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
    )
    return Redis(connection_pool=pool)


async def connect_redis(settings: Settings, attempts: int = 5) -> Redis:
    """Start-up fails fast when Redis stays unreachable after a few tries."""
    redis = redis_client(settings)
    for attempt in range(1, attempts + 1):
        try:
            await redis.ping()
            return redis
        except (RedisError, OSError) as exc:
            if attempt == attempts:
                await redis.aclose()
                raise StoreUnavailable(f"Redis unreachable after {attempts} attempts: {exc}") from exc
            await asyncio.sleep(0.2 * attempt)
    raise AssertionError("unreachable")


class MetricsMiddleware:
    """Counts requests and latency by route template (never by raw path: ids are unbounded)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", "unmatched")
            method = scope["method"]
            self.metrics.requests.labels(template, method, str(status)).inc()
            self.metrics.request_latency.labels(template, method).observe(time.perf_counter() - started)


class BodyLimitMiddleware:
    """Refuses bodies over ``max_bytes`` with 413 before they are parsed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise PayloadTooLarge(f"body: larger than {self.max_bytes} bytes")
            return message

        await self.app(scope, limited_receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = error_body(PayloadTooLarge.code, f"body: larger than {self.max_bytes} bytes")
        await JSONBytesResponse(body, status_code=413)(scope, receive, send)


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


def document_bodies(app: FastAPI) -> None:
    """Routes that read raw bodies (JSON or binary) still document their JSON schemas."""
    default_openapi = app.openapi

    def openapi() -> dict[str, object]:
        if app.openapi_schema is None:
            schema = default_openapi()
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (StreamScoreRequest, WindowScoreRequest, BatchScoreRequest):
                body = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(body.pop("$defs", {}))
                components[model.__name__] = body
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()
    metrics.initialise_service()
    if settings.auth_disabled:
        log.warning("authentication is DISABLED (VIGIL_AUTH_DISABLED): every route is open")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = await connect_redis(settings)
        models = ModelRegistry(settings, metrics)
        hub: FeedHub | None = None
        try:
            models.load_all()
            windows = WindowStore(redis, settings.window_ttl_s)
            alerts = AlertTracker(redis, settings.window_ttl_s, settings.alerts.stream_maxlen)
            history = ScoreHistory(redis, settings.history_points, settings.window_ttl_s)
            scorer = StreamScorer(
                models,
                windows,
                alerts,
                metrics,
                settings.max_points_per_request,
                settings.top_contributions,
                history,
            )
            hub = FeedHub(redis, alerts, settings.feed.client_buffer)
            await hub.start()
            app.state.feed = hub
            app.state.components = Components(
                settings, redis, metrics, models, windows, alerts, scorer, history
            )
            yield
        finally:
            if hub is not None:
                await hub.stop()
            models.close()  # drains queued batches before the connections go
            await redis.aclose()

    app = FastAPI(
        title="Vigil",
        version="0.1.0",
        summary="Streaming anomaly detection for multivariate sensor data",
        lifespan=lifespan,
        default_response_class=JSONBytesResponse,
    )
    app.state.keyring = KeyRing(settings.api_keys, settings.auth_disabled)
    install_error_handlers(app)
    for router in (score.router, streams.router, feed.router, health.router, ui.router):
        app.include_router(router)
    ui.install(app)  # the live view's static files and its on-demand reconstructor
    document_bodies(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(InflightLimitMiddleware, max_inflight=settings.max_inflight_requests, metrics=metrics)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    return app
