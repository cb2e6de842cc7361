"""POST /score (stream points, a stateless window, or the binary frame) and POST /score/batch."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from service.codec import BINARY_CONTENT_TYPE, WindowInput, parse_batch_json, parse_binary, parse_score_json
from service.deps import ComponentsDep, ScoreKey
from service.errors import BadInput
from service.responses import JSONBytesResponse
from service.schemas import BatchScoreResponse, StreamScoreResponse, WindowScoreResponse

router = APIRouter(tags=["scoring"])

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing or invalid API key"},
    403: {"description": "the key lacks the `score` role"},
    404: {"description": "unknown model"},
    409: {"description": "the stream is bound to another model"},
    413: {"description": "too many points or too large a body"},
    422: {"description": "bad input; `detail` names the field and the reason, nothing is appended"},
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


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "application/json").split(";")[0].strip().lower()


@router.post(
    "/score",
    summary="Score a stream's points, or one stateless window",
    response_model=StreamScoreResponse | WindowScoreResponse,
    responses=ERRORS,
    openapi_extra=SCORE_BODY,
)
async def score(request: Request, components: ComponentsDep, _: ScoreKey) -> JSONBytesResponse:
    """**Stream mode** appends `points` to the stream's window in Redis (duplicate and stale `ts` are dropped and
    reported), scores every window now due, and returns one score per newly scored point with its level, top
    sensors and the alert events it caused. **Stateless mode** (`window`) scores each row of one window.
    The binary frame (`Content-Type: application/x-vigil-points`) carries stream-mode points compactly."""
    body = await request.body()
    kind = _content_type(request)
    if kind == BINARY_CONTENT_TYPE:
        return JSONBytesResponse(await components.scorer.score_points(parse_binary(body)))
    if kind != "application/json":
        raise BadInput(
            f"content-type: {kind!r} is not accepted; use application/json or {BINARY_CONTENT_TYPE}"
        )
    parsed = parse_score_json(body)
    if isinstance(parsed, WindowInput):
        return JSONBytesResponse(await components.scorer.score_window(parsed))
    return JSONBytesResponse(await components.scorer.score_points(parsed))


@router.post(
    "/score/batch",
    summary="Score many streams in one request",
    response_model=BatchScoreResponse,
    responses=ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/BatchScoreRequest"}}},
        }
    },
)
async def score_batch(request: Request, components: ComponentsDep, _: ScoreKey) -> JSONBytesResponse:
    """For gateways that aggregate sensors: `items` are stream-mode bodies; one result per item, in order.
    An item's bad input fails that item only (`error` with `code`, `detail`, `status`)."""
    if _content_type(request) != "application/json":
        raise BadInput("content-type: use application/json")
    items = parse_batch_json(await request.body(), components.settings.max_batch_items)
    return JSONBytesResponse({"items": await components.scorer.score_many(items)})
