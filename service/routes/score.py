"""POST /score (stream points, a stateless window, or the binary frame) and POST /score/batch."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import APIRouter, Request

from service.codec import (
    BINARY_CONTENT_TYPE,
    JSON_CONTENT_TYPE,
    BadItem,
    PointBatch,
    WindowInput,
    body_encoding,
    decode_body,
    media_type,
    parse_batch_json,
    parse_binary,
    parse_binary_batch,
    parse_score_json,
)
from service.deps import SCORING_OPENAPI, scoring_call
from service.errors import Overloaded, StoreUnavailable
from service.responses import JSONBytesResponse
from service.schemas import (
    BatchScoreColumnsResponse,
    BatchScoreResponse,
    StreamScoreColumnsResponse,
    StreamScoreResponse,
    WindowScoreColumnsResponse,
    WindowScoreResponse,
)

router = APIRouter(tags=["scoring"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or invalid API key"},
    403: {"description": "the key lacks the `score` role"},
    404: {"description": "unknown model"},
    408: {"description": "the body did not all arrive within `VIGIL_BODY_TIMEOUT_S`; the connection closes"},
    409: {"description": "the stream is bound to another model"},
    413: {"description": "too many points or too large a body (decompressed, for a gzip body)"},
    415: {"description": "a content type or content encoding (gzip or none) not accepted"},
    422: {"description": "bad input; `detail` names the field and the reason, nothing is appended"},
    429: {"description": "this key has its share of requests in progress; retry after `Retry-After` seconds"},
    503: {"description": "overloaded or Redis unavailable; retry after `Retry-After` seconds"},
}

SCORE_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"$ref": "#/components/schemas/StreamScoreRequest"},
                        {"$ref": "#/components/schemas/WindowScoreRequest"},
                    ]
                },
                "examples": {
                    "stream": {
                        "summary": "stream mode: points of one stream",
                        "value": {
                            "stream_id": "press-7",
                            "points": [{"ts": 1700000000, "values": [0.1, 0.4]}],
                        },
                    },
                    "window": {
                        "summary": "stateless mode: one whole window [L][C]",
                        "value": {"window": [[0.1, 0.4], [0.2, 0.3]], "model": "tvnet"},
                    },
                },
            },
            BINARY_CONTENT_TYPE: {
                "schema": {"type": "string", "format": "binary"},
                "description": (
                    "little-endian frame: b'VGL1', uint16 id_len + stream_id, uint16 model_len + model, "
                    "uint32 n_points, uint16 n_features, n_points float64 ts, n_points×n_features float32 values"
                ),
            },
        },
    }
}


OFF_LOOP_BYTES = 64 * 1024
T = TypeVar("T")


async def parsed_body(
    request: Request, max_bytes: int, accepted: tuple[str, ...], parse: Callable[[str, bytes], T]
) -> T:
    """Checks the media type and the coding (415 before the body is read), reads the body, then decodes and
    parses it with ``parse(media type, body)``: in a worker thread when it is over ``OFF_LOOP_BYTES`` or
    compressed, so that one large body does not hold the event loop for the length of its parse (a
    10 000-point body held it for hundreds of ms, /healthz and small requests waiting behind it). The
    parsers are C code holding the GIL, so the loop still waits for the call under way, not the whole parse."""
    kind = media_type(request.headers.get("content-type"), accepted)
    coding = body_encoding(request.headers.get("content-encoding"))
    body = await request.body()

    def work() -> T:
        return parse(kind, decode_body(body, coding, max_bytes))

    if len(body) > OFF_LOOP_BYTES or coding != "identity":
        return await asyncio.to_thread(work)
    return work()


def _parse_score(kind: str, body: bytes) -> PointBatch | WindowInput:
    return parse_binary(body) if kind == BINARY_CONTENT_TYPE else parse_score_json(body)


@router.post(
    "/score",
    summary="Score a stream's points, or one stateless window",
    response_model=StreamScoreResponse
    | WindowScoreResponse
    | StreamScoreColumnsResponse
    | WindowScoreColumnsResponse,
    responses=ERRORS,
    openapi_extra={**SCORE_BODY, **SCORING_OPENAPI},
)
async def score(request: Request) -> JSONBytesResponse:
    """**Stream mode** appends `points` to the stream's window in Redis (duplicate and stale `ts` are dropped and
    reported), scores every window now due, and returns one score per newly scored point with its level, top
    sensors and the alert events it caused. **Stateless mode** (`window`) scores each row of one window.
    The binary frame (`Content-Type: application/x-vigil-points`) carries stream-mode points compactly.
    Bodies may be gzip-compressed (`Content-Encoding: gzip`)."""
    call = scoring_call(request)
    components = call.components
    accepted = (JSON_CONTENT_TYPE, BINARY_CONTENT_TYPE)
    parsed = await parsed_body(request, components.settings.max_body_bytes, accepted, _parse_score)
    if isinstance(parsed, WindowInput):
        return JSONBytesResponse((await components.scorer.score_window(parsed)).render(call.shape))
    return JSONBytesResponse((await components.scorer.score_points(parsed)).render(call.shape))


@router.post(
    "/score/batch",
    summary="Score many streams in one request",
    response_model=BatchScoreResponse | BatchScoreColumnsResponse,
    responses=ERRORS,
    openapi_extra={
        **SCORING_OPENAPI,
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": {"$ref": "#/components/schemas/BatchScoreRequest"}},
                BINARY_CONTENT_TYPE: {
                    "schema": {"type": "string", "format": "binary"},
                    "description": (
                        "little-endian batch frame: b'VGLB', uint32 n_items, then per item uint32 frame_len "
                        "and one VGL1 frame (see POST /score) of that many bytes"
                    ),
                },
            },
        },
    },
)
async def score_batch(request: Request) -> JSONBytesResponse:
    """For gateways that aggregate sensors: `items` are stream-mode bodies; one result per item, in order.
    An item's bad input fails that item (`error` with `code`, `detail`, `status`) and the items of the same
    stream after it (`earlier_item_failed`, with the failed item's status: stored, their newer points would
    make its points stale); other streams' items go on. When every item is refused for overload or an
    unavailable store, the request is: 503 with `Retry-After`. The binary batch
    frame (`Content-Type: application/x-vigil-points`, magic `VGLB`) carries many streams' points compactly."""
    call = scoring_call(request)
    components, settings = call.components, call.components.settings

    def parse(kind: str, body: bytes) -> list[PointBatch | BadItem]:
        if kind == BINARY_CONTENT_TYPE:
            return parse_binary_batch(body, settings.max_batch_items)
        return parse_batch_json(body, settings.max_batch_items)

    items = await parsed_body(
        request, settings.max_body_bytes, (JSON_CONTENT_TYPE, BINARY_CONTENT_TYPE), parse
    )
    results = await components.scorer.score_many(items)
    refused = [item.error for item in results if item.error is not None and item.error.status == 503]
    if len(refused) == len(
        results
    ):  # every item: the request as a whole, with Retry-After, as for one stream
        unavailable = StoreUnavailable if refused[0].code == StoreUnavailable.code else Overloaded
        raise unavailable(f"every item refused; the first: {refused[0].detail}")
    return JSONBytesResponse({"items": [item.render(call.shape) for item in results]})
