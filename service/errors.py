"""Domain errors with stable codes, and the one place that maps them to HTTP responses."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError

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


class ModelMismatch(VigilError):
    code, status = "model_mismatch", 409


class PayloadTooLarge(VigilError):
    code, status = "payload_too_large", 413


class Overloaded(VigilError):
    code, status = "overloaded", 503


class StoreUnavailable(VigilError):
    code, status = "store_unavailable", 503


class InferenceFailed(VigilError):
    code, status = "inference_failed", 500


def error_body(code: str, detail: str, **extra: Any) -> dict[str, Any]:
    return {"code": code, "detail": detail, **extra}


def install_error_handlers(app: FastAPI) -> None:
    def count(request: Request, code: str) -> None:
        components = getattr(request.app.state, "components", None)
        if components is not None:
            components.metrics.rejections.labels(code).inc()

    async def on_vigil_error(request: Request, exc: Exception) -> JSONBytesResponse:
        assert isinstance(exc, VigilError)
        count(request, exc.code)
        headers = {"Retry-After": "1"} if exc.status == 503 else None
        if exc.status == 401:
            headers = {"WWW-Authenticate": "Bearer"}
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

    app.add_exception_handler(VigilError, on_vigil_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
