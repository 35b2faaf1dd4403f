"""Errors under /v1 leave in OpenAI's shape, so the official client raises its usual types.

    {"error": {"message", "type", "param", "code"}}

    400 invalid_request_error   bad input (a DeAI InvalidInput or a validation error)
    401 invalid_api_key          missing, unknown or revoked key
    403 permission_error         acting on another account's object
    404 model_not_found / —      unknown model, or no such file, batch or route
    409 invalid_request_error    wrong state (cancelling a finished batch)
    429 insufficient_quota       the account's balance or the key's spend cap cannot cover it
    503 no_capacity              the model is served but nobody can take the request now
    503 unavailable              the coordinator's database cannot answer now (retried)
    504 timeout                  no provider answered in time

A 429 for money carries ``x-should-retry: false``: waiting will not top up a
balance, and the client would otherwise retry it. The handlers are installed
over the native ones and apply only to paths under /v1; /api keeps its shape.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException

from deai.coordinator.admission import SpendCapExceeded
from deai.coordinator.errors import log_unavailable
from deai.core.errors import (
    AuthError,
    Conflict,
    DeAIError,
    Forbidden,
    InsufficientFunds,
    InvalidInput,
    NoCapacity,
    NotFound,
    PayloadTooLarge,
    UnknownModel,
)
from deai.store import db

log = logging.getLogger("deai.coordinator")


class ApiError(Exception):
    """An error already in OpenAI's terms."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None,
                 retry: bool | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code
        self.param, self.retry = param, retry

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def response(self) -> JSONResponse:
        headers = {} if self.retry is None else {"x-should-retry": str(self.retry).lower()}
        return JSONResponse(self.body(), status_code=self.status, headers=headers)


def from_deai(exc: DeAIError) -> ApiError:
    m, f = exc.message, exc.field
    if isinstance(exc, UnknownModel):
        return ApiError(404, m, code="model_not_found", param=f or "model")
    if isinstance(exc, PayloadTooLarge):
        return ApiError(413, m, code=exc.code, param=f)  # payload_too_large, blob_quota_...
    if isinstance(exc, InvalidInput) and exc.status == 422 and exc.code != "invalid_input":
        return ApiError(422, m, code=exc.code, param=f)  # e.g. idempotency_key_reused
    if isinstance(exc, InvalidInput):
        return ApiError(400, m, code="invalid_value", param=f)
    if isinstance(exc, AuthError):
        return ApiError(401, m, code="invalid_api_key")
    if isinstance(exc, Forbidden):
        return ApiError(403, m, "permission_error")
    if isinstance(exc, NotFound):
        return ApiError(404, m, code="not_found", param=f)
    if isinstance(exc, Conflict):
        return ApiError(409, m, code="conflict")
    if isinstance(exc, InsufficientFunds):
        return ApiError(429, m, "insufficient_quota", "insufficient_quota", retry=False)
    if isinstance(exc, SpendCapExceeded):
        return ApiError(429, m, "insufficient_quota", "spend_cap_exceeded", retry=False)
    if isinstance(exc, NoCapacity):
        return ApiError(503, m, "server_error", "no_capacity")
    if exc.status >= 500:
        log.error("internal error: %s", m)
    return ApiError(exc.status, m, "server_error" if exc.status >= 500 else
                    "invalid_request_error", exc.code)


def _validation(exc: RequestValidationError) -> ApiError:
    err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    msg = str(err.get("msg", "invalid"))
    if err.get("type") == "json_invalid":
        return ApiError(400, "We could not parse the JSON body of your request.")
    if err.get("type") == "extra_forbidden":
        return ApiError(400, f"Unrecognized request argument supplied: {param}",
                        code="unknown_parameter", param=param)
    return ApiError(400, f"{param}: {msg}" if param else msg, code="invalid_value", param=param)


def to_api_error(exc: Exception) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, DeAIError):
        return from_deai(exc)
    if isinstance(exc, RequestValidationError):
        return _validation(exc)
    if isinstance(exc, HTTPException):
        return ApiError(exc.status_code, str(exc.detail),
                        code="not_found" if exc.status_code == 404 else None)
    if db.is_unavailable(exc):  # as /api answers it (``coordinator.errors``)
        log_unavailable(exc)
        return ApiError(503, "the database is unavailable; retry in a few seconds",
                        "server_error", "unavailable", retry=True)
    log.error("unhandled error under /v1", exc_info=exc)
    return ApiError(500, "internal error; see the coordinator's log", "server_error")


def is_v1(request: Request) -> bool:
    path = request.url.path
    return path == "/v1" or path.startswith("/v1/")


Handler = Callable[[Request, Exception], Awaitable[Response]]


def install(app: FastAPI) -> None:
    """Wrap the app's handlers so /v1 answers in OpenAI's shape and /api is unchanged."""
    for exc_type in (DeAIError, RequestValidationError, HTTPException, SQLAlchemyError,
                     Exception):
        native: Handler | None = app.exception_handlers.get(exc_type)  # type: ignore[assignment]

        async def handler(request: Request, exc: Exception,
                          native: Handler | None = native) -> Response:
            if is_v1(request) or native is None:
                return to_api_error(exc).response()
            return await native(request, exc)

        app.add_exception_handler(exc_type, handler)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> Response:
        return exc.response()
