"""WS /ws/alerts: alert events as they happen, resumable from the last id a client saw."""

from __future__ import annotations

import asyncio
import re

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from service.alerts import is_event_id
from service.deps import Components
from service.errors import Forbidden, Unauthorized
from service.feed import FeedHub, id_key
from service.schemas import STREAM_ID_PATTERN

router = APIRouter(tags=["alerts"])

POLICY_VIOLATION = 1008  # missing or wrong token, bad parameters
TRY_AGAIN_LATER = 1013  # the client fell behind: reconnect with its last id
_STREAM = re.compile(STREAM_ID_PATTERN)


def _token(websocket: WebSocket) -> str | None:
    header = websocket.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return websocket.query_params.get("token")


@router.websocket("/ws/alerts")
async def alerts_feed(websocket: WebSocket) -> None:
    """Query: `since` (last event id seen; omit for live events only), `stream_id`, `token` (a `read` key; or
    an `Authorization: Bearer` header). Each message is one event with its `id`."""
    components: Components = websocket.app.state.components
    hub: FeedHub = websocket.app.state.feed
    try:
        websocket.app.state.keyring.authorise(_token(websocket), "read")
    except (Unauthorized, Forbidden) as exc:
        await websocket.close(POLICY_VIOLATION, reason=exc.code)
        return
    since = websocket.query_params.get("since")
    stream_id = websocket.query_params.get("stream_id")
    if (since is not None and not is_event_id(since)) or (
        stream_id is not None and not _STREAM.fullmatch(stream_id)
    ):
        await websocket.close(POLICY_VIOLATION, reason="invalid since or stream_id")
        return
    await websocket.accept()
    timeout_s = components.settings.feed.send_timeout_s
    subscriber = hub.subscribe(stream_id)
    components.metrics.feed_clients.inc()
    gone: asyncio.Task[None] | None = None
    try:
        last = since
        if since is not None:
            while True:
                page = await hub.catch_up(last or since, stream_id)
                if not page:
                    break
                for event in page:
                    await asyncio.wait_for(websocket.send_json(event), timeout_s)
                    last = event["id"]
        # The client sends nothing; reading anyway is how a closed socket is noticed while no events come.
        gone = asyncio.create_task(_wait_for_disconnect(websocket))
        while True:
            if subscriber.overflowed:
                await websocket.close(TRY_AGAIN_LATER, reason="fell behind; reconnect with since=<last id>")
                return
            next_event = asyncio.ensure_future(subscriber.queue.get())
            done, _ = await asyncio.wait({next_event, gone}, return_when=asyncio.FIRST_COMPLETED)
            if gone in done:
                next_event.cancel()
                return
            event = next_event.result()
            if last is not None and id_key(event["id"]) <= id_key(last):
                continue  # already sent during catch-up
            await asyncio.wait_for(websocket.send_json(event), timeout_s)
            last = event["id"]
    except TimeoutError:
        await websocket.close(TRY_AGAIN_LATER, reason="send timed out; reconnect with since=<last id>")
    except WebSocketDisconnect:
        pass
    finally:
        if gone is not None:
            gone.cancel()
        hub.unsubscribe(subscriber)
        components.metrics.feed_clients.dec()


async def _wait_for_disconnect(websocket: WebSocket) -> None:
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
