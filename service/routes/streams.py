"""Stream state, models and the alert event log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from service.deps import ComponentsDep
from service.errors import UnknownStream
from service.responses import JSONBytesResponse
from service.schemas import STREAM_ID_PATTERN

router = APIRouter(tags=["streams"])
StreamIdPath = Annotated[str, Path(pattern=STREAM_ID_PATTERN)]


@router.get("/streams/{stream_id}", summary="A stream's model, points held, last ts and alert state")
async def get_stream(stream_id: StreamIdPath, components: ComponentsDep) -> JSONBytesResponse:
    info = await components.windows.describe(stream_id)
    if info is None:
        raise UnknownStream(f"unknown stream {stream_id!r}")
    alert = await components.alerts.state(stream_id)
    return JSONBytesResponse(
        {
            "stream_id": stream_id,
            "model": info["model"],
            "points_held": int(info["held"]),
            "points_total": int(info["count"]),
            "last_ts": float(info["last_ts"]),
            "alert": {"state": alert.get("state", "ok"), "severity": alert.get("severity")},
        }
    )


@router.delete("/streams/{stream_id}", summary="Forget a stream's window and binding")
async def delete_stream(stream_id: StreamIdPath, components: ComponentsDep) -> JSONBytesResponse:
    if not await components.windows.delete(stream_id):
        raise UnknownStream(f"unknown stream {stream_id!r}")
    return JSONBytesResponse({"stream_id": stream_id, "deleted": True})


@router.get("/models", summary="Loaded models")
async def list_models(components: ComponentsDep) -> JSONBytesResponse:
    return JSONBytesResponse(
        [
            {
                "name": h.name,
                "version": h.manifest.version,
                "architecture": h.manifest.architecture,
                "window_length": h.manifest.window_length,
                "stride": h.manifest.stride,
                "n_features": h.manifest.n_features,
                "provider": h.engine.provider,
            }
            for h in components.models.all()
        ]
    )


@router.get("/alerts", summary="Alert events after an id, in order")
async def list_alerts(
    components: ComponentsDep,
    since: Annotated[str | None, Query(pattern=r"^\d+-\d+$")] = None,
    stream_id: Annotated[str | None, Query(pattern=STREAM_ID_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JSONBytesResponse:
    events = await components.alerts.read_events(since, stream_id, limit)
    return JSONBytesResponse({"events": events, "last_id": events[-1]["id"] if events else since})
