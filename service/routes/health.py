"""Liveness, readiness and Prometheus metrics (open: no key needed)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from redis.exceptions import RedisError

from service.deps import ComponentsDep
from service.responses import JSONBytesResponse

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> JSONBytesResponse:
    return JSONBytesResponse({"status": "ok"})


@router.get("/readyz", summary="Redis reachable, bundles loaded, provider in use, sources polled")
async def readyz(request: Request, components: ComponentsDep) -> JSONBytesResponse:
    try:
        redis_ok = bool(await request.app.state.probe_redis.ping())
    except (RedisError, OSError):
        redis_ok = False
    models = {
        h.name: {"version": h.manifest.version, "provider": h.engine.provider, "queue_depth": h.batcher.depth}
        for h in components.models.all()
    }
    ready = redis_ok and bool(models)
    body = {"ready": ready, "redis": redis_ok, "models": models}
    poller = getattr(request.app.state, "sources", None)
    if poller is not None and poller.sources():
        # Reported, not part of "ready": a Prometheus that is down must not take every replica out of a load
        # balancer (POST /score still works, and the poller catches up when it returns).
        body["sources"] = poller.status()
    return JSONBytesResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(components: ComponentsDep) -> Response:
    for handle in components.models.all():
        components.metrics.queue_depth.labels(handle.name).set(handle.batcher.depth)
    return Response(components.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
