"""JSON responses rendered with orjson (numpy-aware); the route handlers build plain dicts."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import JSONResponse


class JSONBytesResponse(JSONResponse):
    """A ``JSONResponse`` subclass, so FastAPI documents each route's ``response_model`` in OpenAPI (it
    documents any other response class as a string)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
