"""Request limits as pure ASGI middleware: body size and JSON depth, and request rates.

``BodyLimit`` refuses a body over ``limit`` bytes before the application reads
any of it: a declared ``Content-Length`` over the limit is answered 413 at
once; a body without one (chunked) is counted as it arrives and refused the
moment it passes the limit. A JSON body (or one without a content type, which
FastAPI parses as JSON) nested deeper than ``MAX_JSON_DEPTH``, or holding
``NaN`` or ``Infinity`` (numbers JSON does not have, though Python's parser
takes them), is answered 422 (400 on ``/v1``) before any parser recurses into
it. The body is read ahead and replayed to the application; every later
``receive`` goes to the server, so a client that hangs up is still seen as
``http.disconnect``.

``RateLimit`` is a token bucket per API key on ``/v1`` (the bearer token, by
its hash) and per client address everywhere: ``DEAI_RATE_PER_KEY`` and
``DEAI_RATE_PER_IP`` are ``RATE[/BURST]`` in requests per second (``0``: no
limit). Over the limit: 429 with ``Retry-After``; on ``/v1`` every answer
carries OpenAI's ``x-ratelimit-*-requests`` headers. The defaults are generous:
they stop floods, not clients, tests or benchmarks.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections import OrderedDict
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deai.core import batch

MAX_JSON_DEPTH = 64
DEFAULT_RATE_PER_KEY = "500/1000"
DEFAULT_RATE_PER_IP = "2000/4000"
MAX_BUCKETS = 100_000

def _constant(name: str) -> Any:
    raise _NonFinite(name)


class _NonFinite(ValueError):
    pass


def json_problem(data: bytes, limit: int = MAX_JSON_DEPTH) -> str | None:
    """What is wrong with a JSON body before anything recurses into it: nesting deeper than
    ``limit`` levels, or a non-finite number (``NaN``, ``Infinity``, which Python's parser
    accepts and JSON does not). Text that is not JSON is left to the parser's own 422."""
    if batch.too_deep(data, limit):  # before the parser recurses into it
        return f"JSON nested more than {limit} levels"
    deep = data.count(b"[") + data.count(b"{") > limit
    if not deep and b"NaN" not in data and b"Infinity" not in data:
        return None
    try:
        value = json.loads(data, parse_constant=_constant)
    except RecursionError:
        return f"JSON nested more than {limit} levels"
    except _NonFinite as exc:
        return f"{exc} is not a number JSON allows"
    except ValueError:
        return None
    if deep and batch.depth(value) > limit:
        return f"JSON nested more than {limit} levels"
    return None


def _error(status: int, code: str, message: str, field: str | None = None,
           openai: bool = False, **details: Any) -> bytes:
    if openai:
        kind = "rate_limit_exceeded" if status == 429 else "invalid_request_error"
        err: dict[str, Any] = {"message": message, "type": kind, "param": field, "code": code}
    else:
        err = {"code": code, "message": message}
        if field:
            err["field"] = field
        if details:
            err["details"] = details
    return json.dumps({"error": err}).encode()


async def _answer(send: Send, status: int, body: bytes,
                  headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return bytes(v)
    return None


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int, max_depth: int = MAX_JSON_DEPTH) -> None:
        self.app, self.limit, self.max_depth = app, limit, max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        v1 = scope["path"].startswith("/v1/")
        declared = _header(scope, b"content-length")
        if declared is not None:
            if not declared.isdigit():
                await _answer(send, 400, _error(400, "invalid_input",
                                                "Content-Length must be a number", "body", v1))
                return
            if int(declared) > self.limit:
                await self._too_large(send, f"body of {int(declared)} bytes", v1)
                return
        elif _header(scope, b"transfer-encoding") is None:
            await self.app(scope, receive, send)  # no body at all
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client left before the body ended
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._too_large(send, "body", v1)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        ctype = (_header(scope, b"content-type") or b"").split(b";")[0].strip().lower()
        problem = (json_problem(body, self.max_depth)
                   if body and (not ctype or ctype.endswith(b"json")) else None)
        if problem is not None:
            status = 400 if v1 else 422  # OpenAI's status for a bad request
            await _answer(send, status, _error(status, "invalid_input", f"body: {problem}",
                                               "body", v1))
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, send: Send, what: str, v1: bool) -> None:
        msg = f"{what} is over the {self.limit}-byte limit"
        await _answer(send, 413, _error(413, "payload_too_large", msg, "body", v1,
                                            limit=self.limit),
                      [(b"connection", b"close")])


@dataclass(frozen=True)
class Rate:
    per_second: float
    burst: float

    @classmethod
    def parse(cls, text: str, name: str) -> Rate | None:
        """``"RATE"`` or ``"RATE/BURST"`` (burst defaults to twice the rate); 0: no limit."""
        rate, _, burst = text.strip().partition("/")
        try:
            r = float(rate)
            b = float(burst) if burst else 2 * r
        except ValueError:
            raise ValueError(f"{name} must be RATE or RATE/BURST, not {text!r}") from None
        if not (math.isfinite(r) and math.isfinite(b)) or r < 0 or b < 0:
            raise ValueError(f"{name} must be finite and not negative, not {text!r}")
        return cls(r, max(b, 1.0)) if r > 0 else None


class Buckets:
    """Token buckets by name; the least recently used are forgotten past ``MAX_BUCKETS``
    (a forgotten bucket starts full again, which only ever errs towards letting through)."""

    def __init__(self, rate: Rate) -> None:
        self.rate = rate
        self._b: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, name: str, now: float) -> tuple[bool, float, float]:
        """(allowed, tokens left, seconds until one token is back)."""
        tokens, last = self._b.pop(name, (self.rate.burst, now))
        tokens = min(self.rate.burst, tokens + (now - last) * self.rate.per_second)
        ok = tokens >= 1.0
        if ok:
            tokens -= 1.0
        self._b[name] = (tokens, now)
        if len(self._b) > MAX_BUCKETS:
            self._b.popitem(last=False)
        wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate.per_second
        return ok, tokens, wait


def _reset(seconds: float) -> bytes:
    return (f"{seconds:.3f}s" if seconds < 60 else f"{math.ceil(seconds)}s").encode()


class RateLimit:
    def __init__(self, app: ASGIApp, per_key: Rate | None, per_ip: Rate | None) -> None:
        self.app = app
        self.keys = Buckets(per_key) if per_key else None
        self.ips = Buckets(per_ip) if per_ip else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/health":
            await self.app(scope, receive, send)
            return
        now = time.monotonic()
        v1 = scope["path"].startswith("/v1/")
        client = scope.get("client")
        if self.ips is not None:
            ok, _, wait = self.ips.take(f"ip:{client[0] if client else '-'}", now)
            if not ok:
                await self._refuse(send, wait, "this address", v1, [])
                return
        token = _bearer(scope) if v1 and self.keys is not None else None
        if token is None or self.keys is None:
            await self.app(scope, receive, send)
            return
        ok, left, wait = self.keys.take(token, now)
        limit = self.keys.rate.burst
        headers = [(b"x-ratelimit-limit-requests", str(int(limit)).encode()),
                   (b"x-ratelimit-remaining-requests", str(int(left)).encode()),
                   (b"x-ratelimit-reset-requests",
                    _reset((limit - left) / self.keys.rate.per_second))]
        if not ok:
            await self._refuse(send, wait, "this API key", v1, headers)
            return

        async def with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *headers]}
            await send(message)

        await self.app(scope, receive, with_headers)

    async def _refuse(self, send: Send, wait: float, who: str, v1: bool,
                      headers: list[tuple[bytes, bytes]]) -> None:
        retry = max(1, math.ceil(wait))
        msg = f"too many requests from {who}; retry in {retry} s"
        await _answer(send, 429, _error(429, "rate_limited" if not v1 else
                                        "rate_limit_exceeded", msg, None, v1),
                      [(b"retry-after", str(retry).encode()), *headers])


def _bearer(scope: Scope) -> str | None:
    auth = (_header(scope, b"authorization") or b"").decode("latin-1")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return "key:" + hashlib.sha256(token.strip().encode()).hexdigest()[:32]


def install(app: FastAPI, body_limit: int) -> None:
    """Body limit inside, rate limit outside it (a flood is refused before its body)."""
    app.add_middleware(BodyLimit, limit=body_limit)
    app.add_middleware(RateLimit,
                       per_key=Rate.parse(os.environ.get("DEAI_RATE_PER_KEY",
                                                         DEFAULT_RATE_PER_KEY),
                                          "DEAI_RATE_PER_KEY"),
                       per_ip=Rate.parse(os.environ.get("DEAI_RATE_PER_IP",
                                                        DEFAULT_RATE_PER_IP),
                                         "DEAI_RATE_PER_IP"))
