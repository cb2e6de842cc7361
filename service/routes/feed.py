"""WS /ws/alerts: alert events as they happen, resumable from the last id a client saw."""

from __future__ import annotations

import asyncio
import re

from fastapi import APIRouter, WebSocket, WebSocketDisconnect

from service.alert_events import id_key, is_event_id
from service.deps import Components
from service.errors import TRY_AGAIN_LATER, BadInput, VigilError, close_code
from service.feed import FeedHub
from service.schemas import STREAM_ID_PATTERN

router = APIRouter(tags=["alerts"])

_STREAM = re.compile(STREAM_ID_PATTERN)
FROM_THE_START = ("0", "0-0")  # ``since`` values that replay every event still held


def _token(websocket: WebSocket) -> str | None:
    header = websocket.headers.get("authorization", "")
    if header.lower().startswith("bearer "):
        return header[7:].strip()
    return websocket.query_params.get("token")


def _check(websocket: WebSocket) -> tuple[str | None, str | None]:
    """``(since, stream_id)`` once the token holds the ``read`` role and the parameters are valid; raises
    :class:`Unauthorized`, :class:`Forbidden` or :class:`BadInput` otherwise."""
    websocket.app.state.keyring.authorise(_token(websocket), "read")
    since = websocket.query_params.get("since")
    stream_id = websocket.query_params.get("stream_id")
    if since in FROM_THE_START:
        since = "0-0"
    elif since is not None and not is_event_id(since):
        raise BadInput("query.since: not an event id (<ms>-<seq>, or 0 for the start)")
    if stream_id is not None and not _STREAM.fullmatch(stream_id):
        raise BadInput("query.stream_id: must be 1-128 characters of [A-Za-z0-9._:-]")
    return since, stream_id


@router.websocket("/ws/alerts")
async def alerts_feed(websocket: WebSocket) -> None:
    """Query: `since` (last event id seen; `0` for every event held; omit for live events only), `stream_id`,
    `token` (a `read` key; or an `Authorization: Bearer` header). Each message is one event with its `id`.
    A refused connection is accepted, then closed: 1008 for a missing, wrong or under-privileged key, 4422
    for a bad `since` or `stream_id`, 4410 when events after `since` were trimmed (resume with `since=0`), 4503
    when the event store is unreachable while catching up; the reason is `"<code>: <detail>"`."""
    components: Components = websocket.app.state.components
    hub: FeedHub = websocket.app.state.feed
    try:
        since, stream_id = _check(websocket)
    except VigilError as exc:
        # Accepted first: a close before the handshake is an HTTP 403, where no close code can be read.
        await websocket.accept()
        reason = f"{exc.code}: {exc.detail}".encode()[:123].decode(errors="ignore")  # RFC 6455: 123 bytes
        await websocket.close(close_code(exc), reason=reason)
        return
    await websocket.accept()
    timeout_s = components.settings.feed.send_timeout_s
    subscriber = hub.subscribe(stream_id)
    components.metrics.feed_clients.inc()
    gone: asyncio.Task[None] | None = None
    try:
        last = since
        if since is not None:
            await components.alerts.check_resumable(since)
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
    except VigilError as exc:  # after the handshake (Redis down during catch-up): a close code, not HTTP
        reason = f"{exc.code}: {exc.detail}".encode()[:123].decode(errors="ignore")
        await websocket.close(close_code(exc), reason=reason)
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
