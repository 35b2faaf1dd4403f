"""Request limits as pure ASGI middleware: body size and JSON depth, and request rates.

``BodyLimit`` refuses a body over ``limit`` bytes before the application reads
any of it: a declared ``Content-Length`` over the limit is answered 413 at
once; a body without one (chunked) is counted as it arrives and refused the
moment it passes the limit. A JSON body (or one without a content type, which
FastAPI parses as JSON) nested deeper than ``MAX_JSON_DEPTH``, or holding
``NaN`` or ``Infinity`` (numbers JSON does not have, though Python's parser
takes them), or holding a string or key with a lone UTF-16 surrogate (``"\\ud800"``:
valid JSON, yet no text UTF-8, PostgreSQL or a response can carry), is answered
422 (400 on ``/v1``), naming the field, before any parser recurses into it. The
body is read ahead and replayed to the application; every later ``receive``
goes to the server, so a client that hangs up is still seen as
``http.disconnect``.

``plain_url`` does the same for the URL, as a dependency of every route (after
routing, so it names the route's parameter): a NUL character (or a lone
surrogate) in a path parameter or the query string is answered 422 (400 on
``/v1``), for every route at once (PostgreSQL refuses a NUL in a text
parameter, which would otherwise be a 500 wherever a route reads by it).

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
import re
import time
from collections import OrderedDict
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import FastAPI
from starlette.exceptions import WebSocketException
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deai.core import batch
from deai.core.errors import InvalidInput

MAX_JSON_DEPTH = 64
OFF_LOOP = 256 * 1024  # bytes of a JSON body past which it is checked off the event loop
DEFAULT_RATE_PER_KEY = "500/1000"
DEFAULT_RATE_PER_IP = "2000/4000"
MAX_BUCKETS = 100_000

_SURROGATE = re.compile("[\ud800-\udfff]")  # a lone one: a pair decodes to one character
# Where a decoded body may hold one: a \uD800-\uDFFF escape, or raw surrogate bytes (Python's
# parser decodes bytes with "surrogatepass"); other bodies are not parsed for it.
_SURROGATE_HINT = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_UTF8 = ("utf-8", "utf-8-sig")


@dataclass(frozen=True)
class Problem:
    """What is wrong with a request's text, and where (a field, a parameter)."""

    field: str
    message: str


def _constant(name: str) -> Any:
    raise _NonFinite(name)


class _NonFinite(ValueError):
    pass


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored or answered as text, or None."""
    if "\x00" in value:
        return "must not contain a NUL character"
    if _SURROGATE.search(value):
        return "must not hold a lone UTF-16 surrogate (one half of a pair, not a character)"
    return None


def _shown(key: str) -> str:
    return key.encode("utf-8", "backslashreplace").decode()


def _lone_surrogate(value: Any) -> Problem | None:
    """The first string or key (in document order) holding a lone surrogate."""
    stack: list[tuple[Any, str]] = [(value, "")]
    while stack:
        v, at = stack.pop()
        if isinstance(v, str) and _SURROGATE.search(v):
            return Problem(at or "body", f"{at or 'body'}: {text_problem(v)}")
        if isinstance(v, dict):
            for k in v:
                if _SURROGATE.search(k):
                    where = at or "body"
                    return Problem(where, f"{where}: the key {_shown(k)!r} {text_problem(k)}")
            stack.extend((x, f"{at}.{k}" if at else k) for k, x in reversed(v.items()))
        elif isinstance(v, list):
            stack.extend((x, f"{at}[{i}]") for i, x in reversed(list(enumerate(v))))
    return None


def json_problem(data: bytes, limit: int = MAX_JSON_DEPTH) -> Problem | None:
    """What is wrong with a JSON body before anything recurses into it: nesting deeper than
    ``limit`` levels, a non-finite number (``NaN``, ``Infinity``, which Python's parser
    accepts and JSON does not), or a lone surrogate in a string or key (named). Text that
    is not JSON is left to the parser's own 422."""
    if batch.too_deep(data, limit):  # before the parser recurses into it
        return Problem("body", f"body: JSON nested more than {limit} levels")
    deep = data.count(b"[") + data.count(b"{") > limit
    odd = (_SURROGATE_HINT.search(data) is not None
           or json.detect_encoding(data) not in _UTF8)
    if not deep and not odd and b"NaN" not in data and b"Infinity" not in data:
        return None
    try:
        value = json.loads(data, parse_constant=_constant)
    except RecursionError:
        return Problem("body", f"body: JSON nested more than {limit} levels")
    except _NonFinite as exc:
        return Problem("body", f"body: {exc} is not a number JSON allows")
    except ValueError:
        return None
    if deep and batch.depth(value) > limit:
        return Problem("body", f"body: JSON nested more than {limit} levels")
    if not odd:
        return None
    try:  # the common case (an emoji written as a pair of escapes): one pass in C
        json.dumps(value, ensure_ascii=False).encode("utf-8")
        return None
    except UnicodeEncodeError:
        return _lone_surrogate(value)  # only now walk the value, to name the field


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
        problem = None
        if body and (not ctype or ctype.endswith(b"json")):
            # A large body is parsed off the event loop: a 64 MiB one takes seconds, and
            # every other request (a heartbeat, /health) would wait behind it.
            problem = (json_problem(body, self.max_depth) if len(body) < OFF_LOOP
                       else await anyio.to_thread.run_sync(json_problem, body,
                                                           self.max_depth))
        if problem is not None:
            await _refuse_text(send, problem, v1)
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


async def _refuse_text(send: Send, problem: Problem, v1: bool) -> None:
    status = 400 if v1 else 422  # OpenAI's status for a bad request
    await _answer(send, status, _error(status, "invalid_input", problem.message,
                                       problem.field, v1))


async def plain_url(conn: HTTPConnection) -> None:
    """An app-wide dependency (``app.create_app``), run after routing and before a route's
    own dependencies: a NUL (or a lone surrogate) in a path parameter or the query string
    is refused, naming the parameter, before anything reads it. PostgreSQL refuses a NUL
    in a text parameter: unchecked, each route reading by one would answer 500."""
    for name, value in conn.path_params.items():
        _plain(conn, name, str(value))
    raw: bytes = conn.scope.get("query_string", b"")
    if b"%00" in raw or b"\x00" in raw:  # decoding replaces bad UTF-8: only a NUL can
        for name, value in conn.query_params.multi_items():  # come out of a query string
            _plain(conn, name, name)
            _plain(conn, name, value)


def _plain(conn: HTTPConnection, name: str, value: str) -> None:
    why = text_problem(value)
    if why is None:
        return
    shown = _shown(name.replace("\x00", "\\x00"))
    if conn.scope["type"] == "websocket":
        raise WebSocketException(1008, f"{shown}: {why}"[:120])
    raise InvalidInput(f"{shown}: {why}", field=shown)


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
    """Body limit inside, rate limit outside it (a flood is refused before its body); the
    URL's text is ``plain_url``'s, a dependency of every route."""
    app.add_middleware(BodyLimit, limit=body_limit)
    app.add_middleware(RateLimit,
                       per_key=Rate.parse(os.environ.get("DEAI_RATE_PER_KEY",
                                                         DEFAULT_RATE_PER_KEY),
                                          "DEAI_RATE_PER_KEY"),
                       per_ip=Rate.parse(os.environ.get("DEAI_RATE_PER_IP",
                                                        DEFAULT_RATE_PER_IP),
                                         "DEAI_RATE_PER_IP"))
