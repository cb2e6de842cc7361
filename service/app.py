"""``create_app(settings)``: the lifespan builds every component and closes it on shutdown."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service import looplag
from service.alerts import AlertTracker
from service.auth import KeyRing
from service.catalog import StreamCatalog
from service.deps import Components
from service.errors import (
    PayloadTooLarge,
    RequestTimeout,
    StoreUnavailable,
    error_body,
    install_error_handlers,
)
from service.feed import FeedHub
from service.gcpolicy import freeze_startup_objects
from service.history import ScoreHistory
from service.inflight import InflightLimitMiddleware
from service.metrics import Metrics
from service.notify import AlertDelivery, replica_name
from service.peak import peak_context
from service.poller import SourcePoller, poller_name
from service.redis_clients import BLOCKING_READ_S, redis_client
from service.registry import ModelRegistry
from service.reloads import follow as follow_reloads
from service.reloads import generation_before_load
from service.responses import JSONBytesResponse
from service.routes import feed, health, score, streams, ui
from service.schemas import BatchScoreRequest, StreamScoreRequest, WindowScoreRequest
from service.scorer import StreamScorer
from service.settings import Settings
from service.tasks import stop_task
from service.windows import WindowStore

log = logging.getLogger(__name__)


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


def route_template(scope: Scope, routes: list[BaseRoute]) -> str:
    """The template of the route a request is for: the one routing set, else the first route its path and
    method match (a request refused before routing, e.g. by the in-flight limit), else ``unmatched``."""
    route = scope.get("route")
    if route is not None:
        return str(getattr(route, "path", "unmatched"))
    partial = "unmatched"
    for candidate in routes:
        path = getattr(candidate, "path", None)
        if path is None:
            continue
        match, _ = candidate.matches(scope)
        if match is Match.FULL:
            return str(path)
        if match is Match.PARTIAL and partial == "unmatched":
            partial = str(path)
    return partial


class MetricsMiddleware:
    """Counts requests and latency by route template (never by raw path: ids are unbounded). A client that
    went away before its answer is counted under status 499 (service/errors.py), not as a server error."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: list[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

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
            template = route_template(scope, self.routes)
            method = scope["method"]
            self.metrics.requests.labels(template, method, str(status)).inc()
            self.metrics.request_latency.labels(template, method).observe(time.perf_counter() - started)


class BodyLimitMiddleware:
    """Refuses bodies over ``max_bytes`` with 413 before they are parsed, and bodies that have not all arrived
    ``timeout_s`` after the app first asked for them with 408 (a client that sends a few bytes, then idles,
    would otherwise hold its connection and its in-flight slot for as long as it likes)."""

    def __init__(self, app: ASGIApp, max_bytes: int, timeout_s: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, receive, send)
            return
        seen = 0
        deadline: float | None = None
        complete = False

        async def limited_receive() -> Message:
            nonlocal seen, deadline, complete
            if complete:  # after the body, receive() waits for a disconnect: no deadline on that
                return await receive()
            if deadline is None:
                deadline = asyncio.get_running_loop().time() + self.timeout_s
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise RequestTimeout(
                    f"body: not all received within {self.timeout_s:g} s ({seen} bytes came)"
                ) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise PayloadTooLarge(f"body: larger than {self.max_bytes} bytes")
                complete = not message.get("more_body", False)
            return message

        await self.app(scope, limited_receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = error_body(PayloadTooLarge.code, f"body: larger than {self.max_bytes} bytes")
        await JSONBytesResponse(body, status_code=413)(scope, receive, send)


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
            document_errors(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


ERROR_BODY: dict[str, Any] = {
    "title": "ErrorBody",
    "type": "object",
    "description": "every error: a stable `code` and a `detail` naming the field and the reason",
    "required": ["code", "detail"],
    "properties": {
        "code": {"type": "string"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "description": "422: the invalid fields, up to 100",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "reason": {"type": "string"}},
            },
        },
        "error_count": {"type": "integer", "description": "422: how many, when over 100"},
    },
}


def document_errors(schema: dict[str, Any]) -> None:
    """Every 4xx/5xx response is documented as the body Vigil sends (``service.errors.error_body``), not
    FastAPI's default ``HTTPValidationError`` (whose ``detail`` is a list) or no body at all."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorBody"] = ERROR_BODY
    content = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for status, response in operation.get("responses", {}).items():
                if str(status)[0] in "45":
                    response["content"] = content
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)


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
        delivery: AlertDelivery | None = None
        delivery_redis: Redis | None = None
        poller: SourcePoller | None = None
        outboxes: asyncio.Task[None] | None = None
        reloads: asyncio.Task[None] | None = None
        # Readiness pings on a pool of its own: through scoring's, a saturated pool made /readyz wait for a
        # connection and answer 503, taking a loaded (healthy) replica out of its load balancer.
        app.state.probe_redis = redis_client(settings.model_copy(update={"redis_pool_size": 2}))
        try:
            generation = await generation_before_load(redis)
            models.load_all()
            windows = WindowStore(
                redis,
                settings.window_ttl_s,
                claim_s=settings.scoring_claim_s,
                max_backlog=settings.max_points_per_request,
                max_ts_jump=settings.max_ts_jump,
                cluster=settings.redis_cluster,
            )
            alerts = AlertTracker(
                redis, settings.window_ttl_s, settings.alerts.stream_maxlen, cluster=settings.redis_cluster
            )
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
            # The feed's blocking read on a pool of its own, as delivery's: on scoring's it held a connection
            # all the time.
            app.state.feed_redis = redis_client(
                settings.model_copy(update={"redis_pool_size": 2}), blocking_s=BLOCKING_READ_S
            )
            hub = FeedHub(app.state.feed_redis, alerts, settings.feed.client_buffer)
            await hub.start()
            if settings.alertmanager.urls:
                # Its blocking reads never hold scoring's connections.
                delivery_redis = redis_client(settings, blocking_s=BLOCKING_READ_S)
                delivery = AlertDelivery(
                    delivery_redis,
                    settings.alertmanager,
                    settings.public_url or f"http://{settings.host}:{settings.port}",
                    metrics,
                    peak_context(models, history, settings.history_points),
                    replica_name(),
                )
                await delivery.start()
            poller = SourcePoller(
                redis,
                settings.sources,
                models,
                scorer,
                windows,
                metrics,
                settings.max_points_per_request,
                poller_name(),
            )
            await poller.start()  # a query Prometheus refuses stops start-up here, named
            app.state.sources = poller
            app.state.feed = hub
            app.state.components = Components(
                settings, redis, metrics, models, windows, alerts, scorer, history
            )
            outboxes = asyncio.create_task(
                alerts.keep_publishing(StreamCatalog(redis).model_of), name="alert-outboxes"
            )
            reloads = asyncio.create_task(follow_reloads(redis, models, generation), name="model-reloads")
            if settings.gc_freeze:
                freeze_startup_objects()
            async with looplag.watching(metrics.loop_lag):
                yield
        finally:
            for task, name in ((outboxes, "alert outboxes"), (reloads, "model reloads")):
                if task is not None:  # a Redis call that hangs (a dead peer) must not hold the shutdown
                    await stop_task(task, 2.0, name)
            if poller is not None:
                await poller.stop()
            if delivery is not None:
                await delivery.stop()
            if delivery_redis is not None:
                await delivery_redis.aclose()
            if hub is not None:
                await hub.stop()
                await app.state.feed_redis.aclose()
            models.close()  # drains queued batches before the connections go
            await redis.aclose()
            await app.state.probe_redis.aclose()

    app = FastAPI(
        title="Vigil",
        version="0.1.0",
        summary="Streaming anomaly detection for multivariate sensor data",
        lifespan=lifespan,
        default_response_class=JSONBytesResponse,
    )
    app.state.keyring = KeyRing(settings.api_keys, settings.auth_disabled)
    install_error_handlers(app)
    routers = (score.router, streams.router, feed.router, health.router, ui.router)
    for router in routers:
        app.include_router(router)
    ui.install(app)  # the live view's static files and its on-demand reconstructor
    document_bodies(app)
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=settings.max_body_bytes, timeout_s=settings.body_timeout_s
    )
    per_key = settings.max_inflight_per_key or max(1, settings.max_inflight_requests // 4)
    app.add_middleware(
        InflightLimitMiddleware,
        max_inflight=settings.max_inflight_requests,
        metrics=metrics,
        per_key=None if settings.auth_disabled else per_key,
    )
    # The routes as declared name the requests refused before routing (FastAPI's wrappers of included
    # routers carry no template).
    declared = [*(route for router in routers for route in router.routes), *app.router.routes]
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=declared)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    return app
