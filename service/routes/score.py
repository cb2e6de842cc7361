"""POST /score: append points to a stream and score the windows that became due."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import ComponentsDep
from service.responses import JSONBytesResponse
from service.schemas import StreamScoreRequest, StreamScoreResponse

router = APIRouter(tags=["scoring"])


@router.post(
    "/score",
    response_model=StreamScoreResponse,
    response_class=JSONBytesResponse,
    summary="Score points of a stream",
    responses={
        409: {"description": "the stream is bound to another model"},
        413: {"description": "too many points or too large a body"},
        422: {"description": "bad input; the body names the field and the reason"},
        503: {"description": "overloaded or Redis unavailable; retry after Retry-After"},
    },
)
async def score(body: StreamScoreRequest, components: ComponentsDep) -> JSONBytesResponse:
    """Append ``points`` to the stream's window (duplicates and stale ``ts`` are dropped and reported), score
    every window now due, and return one score per newly scored point, with its level and top sensors."""
    return JSONBytesResponse(await components.scorer.score(body))
