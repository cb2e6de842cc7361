"""Stream state, models and the alert event log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from service.alert_events import is_event_id
from service.deps import AdminKey, ComponentsDep, ReadKey, ScoreKey
from service.errors import BadInput, UnknownStream
from service.reloads import announce
from service.responses import JSONBytesResponse
from service.schemas import STREAM_ID_PATTERN

router = APIRouter(tags=["streams"])
StreamIdPath = Annotated[str, Path(pattern=STREAM_ID_PATTERN)]


@router.get("/streams/{stream_id}", summary="A stream's model, points held, last ts and alert state")
async def get_stream(stream_id: StreamIdPath, components: ComponentsDep, _: ReadKey) -> JSONBytesResponse:
    info = await components.windows.describe(stream_id)
    if info is None:
        raise UnknownStream(f"unknown stream {stream_id!r}")
    alert = await components.alerts.state(stream_id)
    state = alert.get("state", "ok")
    return JSONBytesResponse(
        {
            "stream_id": stream_id,
            "model": info["model"],
            "points_held": int(info["held"]),
            "points_total": int(info["count"]),
            "last_ts": float(info["last_ts"]),
            # The stored severity outlives its alert (a resolved one keeps it): none while the state is ok.
            "alert": {"state": state, "severity": None if state == "ok" else alert.get("severity")},
        }
    )


@router.delete("/streams/{stream_id}", summary="Forget a stream's window, binding and alert state")
async def delete_stream(stream_id: StreamIdPath, components: ComponentsDep, _: ScoreKey) -> JSONBytesResponse:
    # Every key of the stream in one command (they share a hash slot), so no part of it outlives the rest, and
    # a retry after a failure clears what is left: 404 only when nothing of the stream was there.
    others = [*components.alerts.keys(stream_id), *components.history.keys(stream_id)]
    if not await components.windows.delete(stream_id, also=others):
        raise UnknownStream(f"unknown stream {stream_id!r}")
    return JSONBytesResponse({"stream_id": stream_id, "deleted": True})


@router.get("/models", summary="Loaded models")
async def list_models(components: ComponentsDep, _: ReadKey) -> JSONBytesResponse:
    return JSONBytesResponse([h.summary() for h in components.models.all()])


@router.get("/models/{name}", summary="A model's manifest summary")
async def get_model(
    name: Annotated[str, Path(pattern=r"^[A-Za-z0-9._-]{1,64}$")], components: ComponentsDep, _: ReadKey
) -> JSONBytesResponse:
    handle = components.models.get(name)
    m = handle.manifest
    return JSONBytesResponse(
        {
            **handle.summary(),
            "feature_names": m.feature_names,
            "hyperparameters": m.hyperparameters,
            "score": m.score.model_dump(),
            "thresholds": m.thresholds.model_dump(),
            "alert_policy": handle.levels.policy.model_dump(),  # the bundle's, with VIGIL_ALERTS_BY_MODEL
            "parity": m.parity.model_dump(),
            "training": {k: v for k, v in m.training.model_dump().items() if k not in ("history", "config")},
            "evaluation": m.evaluation,
            "created_at": m.created_at,
        }
    )


@router.post("/admin/models/reload", summary="Swap in the newest bundle version of every model (or one)")
async def reload_models(
    components: ComponentsDep,
    _: AdminKey,
    name: Annotated[str | None, Query(pattern=r"^[A-Za-z0-9._-]{1,64}$")] = None,
) -> JSONBytesResponse:
    """New requests use the new version at once; requests in flight finish on the old session. The other
    processes (workers, replicas on the same Redis, the shared inference process) follow within a second."""
    changes = await components.models.reload(name)
    await announce(components.redis, {c["name"]: c["version"] for c in changes if c["changed"]})
    return JSONBytesResponse({"models": changes})


@router.get("/alerts", summary="Alert events after an id, in order")
async def list_alerts(
    components: ComponentsDep,
    _: ReadKey,
    since: Annotated[str | None, Query(pattern=r"^(0|\d+-\d+)$")] = None,
    stream_id: Annotated[str | None, Query(pattern=STREAM_ID_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JSONBytesResponse:
    if since == "0":
        since = "0-0"  # from the start, as on the feed
    if since is not None and not is_event_id(since):
        raise BadInput("query.since: not an event id (<ms>-<seq>, ASCII digits, each below 2**64; or 0)")
    if since is not None:
        await components.alerts.check_resumable(since)
    events = await components.alerts.read_events(since, stream_id, limit)
    return JSONBytesResponse({"events": events, "last_id": events[-1]["id"] if events else since})
