"""Every error leaves as ``{"error": {"code", "message", "field"?}}`` with a fitting status.

Bad input never becomes a 500: validation errors name the field, unknown routes
and methods keep their 404/405, a database that cannot answer now is a 503
``unavailable`` with ``Retry-After`` (``store.db.is_unavailable``), and only a genuine
bug reaches the last handler (logged with its traceback, answered without one).
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException

from deai.core.errors import DeAIError, Unavailable
from deai.store import db

log = logging.getLogger("deai.coordinator")

RETRY_AFTER_S = 2  # what a 503 for an unavailable database asks the client to wait


def _body(code: str, message: str, field: str | None = None) -> dict[str, object]:
    err: dict[str, object] = {"code": code, "message": message}
    if field:
        err["field"] = field
    return {"error": err}


def log_unavailable(exc: BaseException) -> None:
    """The one line a database that cannot answer leaves in the log, under /api and /v1.

    Not a bug (PostgreSQL restarting, out of connections, SQLite's lock held past its
    timeout): no traceback; the agents and the SDK retry the 503 it answers.
    """
    log.warning("database unavailable: %s", str(getattr(exc, "orig", exc)).strip()[:300])


def install(app: FastAPI) -> None:
    @app.exception_handler(DeAIError)
    async def deai_error(_: Request, exc: DeAIError) -> JSONResponse:
        if exc.status >= 500:
            log.error("internal error: %s", exc.message)
        return JSONResponse(exc.to_dict(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        err = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in err.get("loc", ())]
        if loc[:1] == ["body"]:  # where FastAPI found it, not a field of the body
            loc = loc[1:]
        field = ".".join(loc) or "body"
        msg = str(err.get("msg", "invalid"))
        if err.get("type") == "json_invalid":
            field, msg = "body", "body is not valid JSON"
        return JSONResponse(_body("invalid_input", f"{field}: {msg}", field), status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(_body(code, str(exc.detail)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(SQLAlchemyError)
    async def database(_: Request, exc: SQLAlchemyError) -> JSONResponse:
        if not db.is_unavailable(exc):
            return await bug(_, exc)
        log_unavailable(exc)
        err = Unavailable(f"the database is unavailable; retry in {RETRY_AFTER_S} s",
                          retry_after=RETRY_AFTER_S)
        return JSONResponse(err.to_dict(), status_code=err.status,
                            headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.exception_handler(Exception)
    async def bug(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return JSONResponse(_body("internal", "internal error; see the coordinator's log"),
                            status_code=500)
