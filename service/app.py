"""``create_app(settings)``: the lifespan builds every component and closes it on shutdown."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from redis.asyncio import BlockingConnectionPool, Redis
from redis.exceptions import RedisError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.alerts import AlertTracker
from service.deps import Components
from service.errors import PayloadTooLarge, StoreUnavailable, error_body, install_error_handlers
from service.metrics import Metrics
from service.registry import ModelRegistry
from service.responses import JSONBytesResponse
from service.routes import health, score, streams
from service.scorer import StreamScorer
from service.settings import Settings
from service.windows import WindowStore

log = logging.getLogger(__name__)


async def connect_redis(settings: Settings, attempts: int = 5) -> Redis:
    """A pooled client; start-up fails fast when Redis stays unreachable after a few tries."""
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_pool_size,
        timeout=settings.redis_timeout_s,
        socket_timeout=settings.redis_timeout_s,
        socket_connect_timeout=settings.redis_timeout_s,
    )
    redis = Redis(connection_pool=pool)
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


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = await connect_redis(settings)
        models = ModelRegistry(settings, metrics)
        try:
            models.load_all()
            windows = WindowStore(redis, settings.window_ttl_s)
            alerts = AlertTracker(redis, settings.alerts, settings.window_ttl_s)
            scorer = StreamScorer(
                models, windows, alerts, metrics, settings.max_points_per_request, settings.top_contributions
            )
            app.state.components = Components(settings, redis, metrics, models, windows, alerts, scorer)
            yield
        finally:
            models.close()  # drains queued batches before the connections go
            await redis.aclose()

    app = FastAPI(
        title="Vigil",
        version="0.1.0",
        summary="Streaming anomaly detection for multivariate sensor data",
        lifespan=lifespan,
        default_response_class=JSONBytesResponse,
    )
    install_error_handlers(app)
    for router in (score.router, streams.router, health.router):
        app.include_router(router)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    return app
