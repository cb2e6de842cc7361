"""Domain errors with stable codes, and the one place that maps them to HTTP responses."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from service.responses import JSONBytesResponse


class VigilError(Exception):
    """Base of every domain error: ``code`` is stable for clients, ``status`` the HTTP mapping."""

    code = "error"
    status = 500

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra = extra


class BadInput(VigilError):
    code, status = "invalid_request", 422


class Unauthorized(VigilError):
    code, status = "unauthorized", 401


class Forbidden(VigilError):
    code, status = "forbidden", 403


class UnknownModel(VigilError):
    code, status = "unknown_model", 404


class UnknownStream(VigilError):
    code, status = "unknown_stream", 404


class EventsTrimmed(VigilError):
    """Events after the client's ``since`` were trimmed from the retained stream: resuming would skip them."""

    code, status = "events_trimmed", 410


class ModelMismatch(VigilError):
    code, status = "model_mismatch", 409


class PayloadTooLarge(VigilError):
    code, status = "payload_too_large", 413


class UnsupportedMediaType(VigilError):
    code, status = "unsupported_media_type", 415


class RequestTimeout(VigilError):
    """The body did not arrive in time; the connection is closed with the answer (its framing is lost)."""

    code, status = "request_timeout", 408


class HeadersTooLarge(VigilError):
    """Answered by the HTTP protocol itself (service/http_limits.py), before the app sees the request."""

    code, status = "headers_too_large", 431


class TooManyRequests(VigilError):
    """One API key holds more requests in progress than its share: that key waits, the others are served."""

    code, status = "too_many_requests", 429


class EarlierItemFailed(VigilError):
    """An item of ``/score/batch`` not stored because an earlier item of its stream failed: stored, its newer
    points would make the earlier item's stale for good. It carries the earlier item's status, so a client that
    retries what failed retries both, in order."""

    code = "earlier_item_failed"

    def __init__(self, detail: str, status: int) -> None:
        super().__init__(detail)
        self.status = status


class Overloaded(VigilError):
    code, status = "overloaded", 503


class StoreUnavailable(VigilError):
    code, status = "store_unavailable", 503


class InferenceFailed(VigilError):
    code, status = "inference_failed", 500


# nginx's status for a client that closed the connection before the answer: counted in
# vigil_requests_total{status="499"} (not a server error), never sent.
CLIENT_CLOSED_REQUEST = 499
POLICY_VIOLATION = 1008  # WebSocket close code: missing or wrong token, or a key without the role
TRY_AGAIN_LATER = 1013  # WebSocket close code: the client fell behind; reconnect with its last id


# Codes for the errors the router raises itself (service.errors.install_error_handlers).
HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def error_body(code: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"code": code, "detail": detail, **extra}


def close_code(exc: VigilError) -> int:
    """The WebSocket close code for a refused feed connection: 1008 (policy violation) for a missing, wrong or
    under-privileged key; otherwise 4000 + the HTTP status (4422 for a bad query parameter), in the range
    RFC 6455 leaves to applications. The close reason is ``"<code>: <detail>"``."""
    if isinstance(exc, Unauthorized | Forbidden):
        return POLICY_VIOLATION
    return 4000 + exc.status


def install_error_handlers(app: FastAPI) -> None:
    def count(request: Request, code: str) -> None:
        components = getattr(request.app.state, "components", None)
        if components is not None:
            components.metrics.rejections.labels(code).inc()

    async def on_vigil_error(request: Request, exc: Exception) -> JSONBytesResponse:
        assert isinstance(exc, VigilError)
        count(request, exc.code)
        headers = {"Retry-After": "1"} if exc.status in (429, 503) else None
        if exc.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        if exc.status == 408:
            headers = {"Connection": "close"}  # the rest of the body may still be on its way
        return JSONBytesResponse(error_body(exc.code, exc.detail, **exc.extra), exc.status, headers=headers)

    async def on_validation_error(request: Request, exc: Exception) -> JSONBytesResponse:
        assert isinstance(exc, RequestValidationError)
        errors = [
            {"field": ".".join(str(p) for p in err["loc"] if p != "body") or "body", "reason": err["msg"]}
            for err in exc.errors()
        ]
        first = errors[0] if errors else {"field": "body", "reason": "invalid"}
        detail = f"{first['field']}: {first['reason']}"
        count(request, BadInput.code)
        return JSONBytesResponse(error_body(BadInput.code, detail, errors=errors), 422)

    async def on_client_gone(request: Request, exc: Exception) -> Response:
        # The client closed the connection while its body was being read: nothing can be answered (uvicorn
        # drops it), nothing failed on this side. Counted under 499, not as a 500 with a traceback.
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    async def on_http_error(request: Request, exc: Exception) -> JSONBytesResponse:
        # What the router answers itself (no route, a method the route does not take): the same error shape as
        # every other error, with the router's headers (``Allow`` on a 405).
        assert isinstance(exc, StarletteHTTPException)
        code = HTTP_CODES.get(exc.status_code, "http_error")
        count(request, code)
        detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return JSONBytesResponse(error_body(code, detail), exc.status_code, headers=exc.headers)

    app.add_exception_handler(VigilError, on_vigil_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(ClientDisconnect, on_client_gone)
    app.add_exception_handler(RequestValidationError, on_validation_error)
