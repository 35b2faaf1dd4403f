"""The exception tree. Every error the API can return is one of these.

    DeAIError                      500 internal (never raised for bad input)
    ├── InvalidInput               422 a field is malformed            code=invalid_input
    │   ├── UnknownModel           404 spec.model is not in the catalog code=unknown_model
    │   └── PayloadTooLarge        413 an upload is over the limit      code=payload_too_large
    ├── AuthError                  401 missing/bad/stale/replayed sig   code=unauthorized
    ├── Forbidden                  403 acting on another account        code=forbidden
    ├── NotFound                   404 no such object                   code=not_found
    ├── Conflict                   409 wrong state (late result, ...)   code=conflict
    ├── InsufficientFunds          402 balance cannot cover             code=insufficient_funds
    ├── NoCapacity                 409 no provider can run the job      code=no_capacity
    └── RateLimited                429 too many requests; retry later   code=rate_limited

Each carries a machine-readable ``code``, a ``message`` for people, and where
it concerns one field of the request, that field's dotted path.
"""

from __future__ import annotations

from typing import Any


class DeAIError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str, *, field: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        if self.details:
            body["details"] = self.details
        return {"error": body}


class InvalidInput(DeAIError):
    status = 422
    code = "invalid_input"


class UnknownModel(InvalidInput):
    status = 404
    code = "unknown_model"


class PayloadTooLarge(InvalidInput):
    status = 413
    code = "payload_too_large"


class AuthError(DeAIError):
    status = 401
    code = "unauthorized"


class Forbidden(DeAIError):
    status = 403
    code = "forbidden"


class NotFound(DeAIError):
    status = 404
    code = "not_found"


class Conflict(DeAIError):
    status = 409
    code = "conflict"


class InsufficientFunds(DeAIError):
    status = 402
    code = "insufficient_funds"


class NoCapacity(DeAIError):
    status = 409
    code = "no_capacity"


class RateLimited(DeAIError):
    status = 429
    code = "rate_limited"


class Unavailable(DeAIError):
    """The coordinator cannot answer now (its database is down or out of connections);
    the same request may succeed after ``details.retry_after`` seconds."""

    status = 503
    code = "unavailable"


_BY_CODE: dict[str, type[DeAIError]] = {
    cls.code: cls
    for cls in (
        DeAIError, InvalidInput, UnknownModel, PayloadTooLarge, AuthError, Forbidden,
        NotFound, Conflict, InsufficientFunds, NoCapacity, RateLimited, Unavailable,
    )
}


def from_dict(status: int, body: Any) -> DeAIError:
    """Rebuild the error a server sent, so clients can branch on its type."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        exc = DeAIError(f"HTTP {status}: {str(body)[:200]}")
        exc.status = status
        return exc
    cls = _BY_CODE.get(str(err.get("code")), DeAIError)
    exc = cls(str(err.get("message", "")), field=err.get("field"), **(err.get("details") or {}))
    exc.status = status
    return exc
