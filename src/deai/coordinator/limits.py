"""Request limits as pure ASGI middleware: bodies, JSON, URL text, rates.

``BodyLimit`` bounds a body before the application holds it. Which limit is decided by
the path, before a byte is read: ``--max-upload-bytes`` on the upload routes (``UPLOADS``),
``Settings.max_json_bytes`` (never more) everywhere else. A declared ``Content-Length``
over it is answered 413 at once; a chunked body is counted as it arrives and refused the
moment it passes it. The body is read only when the application asks for it, so a path
no route matches is answered 404 without reading a byte. Each chunk must come within
``Settings.body_timeout`` seconds, and the body as a whole at ``Settings.min_body_rate``
bytes a second after that grace: else 408. A body declared over ``LARGE_BODY`` (a chunked
one, once that much of it came) waits for one of ``Settings.max_large_bodies`` slots, at
most ``SLOTS_PER_ADDRESS`` of them per client address (503 if none frees within
``body_timeout``), so a few huge uploads cannot exhaust memory. A slot is held until the
body is complete or refused, never while the answer streams; and while held, the body
gets ``SLOT_GRACE`` seconds of grace, not a whole timeout, before ``min_body_rate`` counts.
A ``Content-Length`` is digits (leading zeros ignored, more than 19 of them: 413), else 400.

A JSON body (or one without a content type, which FastAPI parses as JSON) is checked by
``json_scan.json_problem`` before any parser sees it: nested deeper than
``MAX_JSON_DEPTH``, holding ``NaN`` or ``Infinity``, or a lone UTF-16 surrogate in a
string or key, it is answered 422 (400 on ``/v1``), naming the field. The body is
replayed to the application; every later ``receive`` goes to the server, so a client
that hangs up is still seen as ``http.disconnect``. A refusal found while the
application reads replaces whatever the application answers.

``plain_url`` does the same for the URL, as a dependency of every route (after
routing, so it names the route's parameter): a NUL character (or a lone
surrogate) in a path parameter or the query string is answered 422 (400 on
``/v1``), for every route at once (PostgreSQL refuses a NUL in a text
parameter, which would otherwise be a 500 wherever a route reads by it).

``RateLimit`` is a token bucket per API key on ``/v1`` (the bearer token, by
its hash) and per client address everywhere (behind a trusted proxy, the last hop
of ``X-Forwarded-For``, as ``diversity.client_address`` reads it):
``DEAI_RATE_PER_KEY`` and ``DEAI_RATE_PER_IP`` are ``RATE[/BURST]`` in requests per
second (``0``: no limit). Over the limit: 429 with ``Retry-After``; on ``/v1`` every
answer carries OpenAI's ``x-ratelimit-*-requests`` headers. The defaults are generous:
they stop floods, not clients, tests or benchmarks.

The request head and the connections per peer are bounded before any of this, in the
HTTP protocol (``http_protocol.BoundedHttp``); ``install`` tells it the cap per peer.
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

from deai.coordinator.http_protocol import MAX_CONNECTIONS_PER_PEER
from deai.coordinator.json_scan import MAX_JSON_DEPTH, json_problem, shown, text_problem
from deai.coordinator.settings import Settings
from deai.core.diversity import client_address
from deai.core.errors import InvalidInput

OFF_LOOP = 256 * 1024  # bytes of a JSON body past which it is checked off the event loop
LARGE_BODY = 1024 * 1024  # bytes past which a body needs one of the large-body slots
SLOTS_PER_ADDRESS = 2  # large-body slots one client address may hold at once
SLOT_GRACE = 1.0  # seconds (at most body_timeout) before min_body_rate counts, in a slot
MAX_LENGTH_DIGITS = 19  # a Content-Length longer than this is over any limit
DEFAULT_RATE_PER_KEY = "500/1000"
DEFAULT_RATE_PER_IP = "2000/4000"
MAX_BUCKETS = 100_000
# The routes that take a body that is not JSON, up to --max-upload-bytes: (method, path).
UPLOADS = (("PUT", re.compile(r"/api/blobs")),
           ("PUT", re.compile(r"/api/provider/leases/[^/]+/snapshot")),
           ("POST", re.compile(r"/v1/files")))

_DISCONNECT: Message = {"type": "http.disconnect"}


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


def declared_length(value: bytes | str) -> int | None:
    """A ``Content-Length``'s value, or None if it is not a number. ASCII digits only
    (``str.isdigit`` takes "²", which ``int`` refuses); past ``MAX_LENGTH_DIGITS``
    digits, ``10 ** MAX_LENGTH_DIGITS`` (over any limit), never a long ``int`` parse
    (Python refuses over 4,300 digits)."""
    raw = value.encode("latin-1", "replace") if isinstance(value, str) else value
    if not raw or not raw.isdigit() or not raw.isascii():
        return None
    raw = raw.lstrip(b"0") or b"0"
    return int(raw) if len(raw) <= MAX_LENGTH_DIGITS else 10 ** MAX_LENGTH_DIGITS


def address_of(scope: Scope, trust_forwarded_for: bool) -> str:
    """The client's address as the rest of the coordinator reads it: behind a trusted
    proxy the last hop of X-Forwarded-For, else the socket's peer."""
    client = scope.get("client")
    forwarded = _header(scope, b"x-forwarded-for") if trust_forwarded_for else None
    return client_address(client[0] if client else None,
                          forwarded.decode("latin-1") if forwarded else None,
                          trust_forwarded_for) or "-"


def _header(scope: Scope, name: bytes) -> bytes | None:
    for k, v in scope.get("headers", ()):
        if k == name:
            return bytes(v)
    return None


def is_upload(method: str, path: str) -> bool:
    return any(method == m and p.fullmatch(path) for m, p in UPLOADS)


@dataclass(frozen=True)
class Refusal:
    status: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...] = ((b"connection", b"close"),)


class _Body:
    """A request's body as the application receives it, within its limits.

    JSON (``check``) is read whole on the application's first ``receive``, checked and
    handed over in one message; any other body chunk by chunk. Once a limit is broken,
    ``refusal`` says the answer and the application is told the client left. The state
    lives here, not in a frame: a ``receive`` cancelled midway (Starlette's
    ``is_disconnected`` asks under a cancelled scope) loses nothing."""

    def __init__(self, limits: BodyLimit, receive: Receive, limit: int, large: bool,
                 check: bool, v1: bool, address: str) -> None:
        self.limits, self.receive, self.limit = limits, receive, limit
        self.large, self.check, self.v1, self.address = large, check, v1, address
        self.chunks: list[bytes] = []
        self.size, self.done, self.slot = 0, False, False
        # Pace: min_body_rate counts from (when, bytes so far) after a grace of seconds.
        self.paced: tuple[float, int] | None = None
        self.grace = limits.timeout
        self._refusal: Refusal | None = None

    @property
    def refusal(self) -> Refusal | None:
        return self._refusal

    @refusal.setter
    def refusal(self, refusal: Refusal | None) -> None:
        self._refusal = refusal
        self.release()  # a refused body reads no more

    def release(self) -> None:
        if self.slot:
            self.slot = False
            self.limits.give_back(self.address)

    async def __call__(self) -> Message:
        if self.refusal is not None:
            return _DISCONNECT
        if self.done:
            return await self.receive()  # after the body: a disconnect, for a stream
        if not self.check:
            message = await self._next()
            return message or _DISCONNECT
        while not self.done:
            message = await self._next()
            if message is None:
                return _DISCONNECT
            if message["type"] != "http.request":
                return message  # the client left before the body ended
        body = b"".join(self.chunks)
        self.chunks = [body]
        problem = None
        if body:  # a large body is scanned off the event loop: /health must not wait
            depth = self.limits.max_depth
            problem = (json_problem(body, depth) if len(body) < OFF_LOOP
                       else await anyio.to_thread.run_sync(json_problem, body, depth))
        if problem is not None:
            status = 400 if self.v1 else 422  # OpenAI's status for a bad request
            self.refusal = Refusal(status, _error(status, "invalid_input", problem.message,
                                                  problem.field, self.v1), ())
            return _DISCONNECT
        self.chunks = []
        return {"type": "http.request", "body": body, "more_body": False}

    async def _next(self) -> Message | None:
        """The next message from the server, counted, or None once refused."""
        lim = self.limits
        if not self.slot and (self.large or self.size > LARGE_BODY):
            self.slot = await lim.take(self.address)
            if not self.slot:
                self.refusal = Refusal(503, _error(
                    503, "busy", "too many large bodies are arriving at once; retry",
                    "body", self.v1), ((b"retry-after", b"5"), (b"connection", b"close")))
                return None
            self.paced, self.grace = None, min(lim.timeout, SLOT_GRACE)
        now = time.monotonic()
        if self.paced is None:
            self.paced = (now, self.size)
        wait = lim.timeout
        if lim.min_rate > 0:  # after the grace, min_rate bytes a second
            since, base = self.paced
            wait = min(wait, since + self.grace + (self.size - base) / lim.min_rate - now)
        message: Message | None = None
        with anyio.move_on_after(max(wait, 0.0)):
            message = await self.receive()
        if message is None:
            why = (f"no byte of the body for {lim.timeout:g} s" if wait >= lim.timeout else
                   f"the body came slower than {lim.min_rate} bytes a second")
            self.refusal = Refusal(408, _error(408, "request_timeout", f"body: {why}",
                                               "body", self.v1))
            return None
        if message["type"] == "http.request":
            chunk = message.get("body", b"")
            self.size += len(chunk)
            if self.size > self.limit:
                self.refusal = lim.too_large("body", self.limit, self.v1)
                return None
            if self.check:
                self.chunks.append(chunk)
            if not message.get("more_body", False):
                self.done = True
                self.release()  # whole: the slot is for bodies still arriving
        return message


class BodyLimit:
    def __init__(self, app: ASGIApp, limit: int, max_depth: int = MAX_JSON_DEPTH, *,
                 json_limit: int | None = None, timeout: float = 30.0,
                 min_rate: int = 0, large_bodies: int = 8,
                 trust_forwarded_for: bool = False) -> None:
        self.app, self.limit, self.max_depth = app, limit, max_depth
        self.json_limit = min(limit, json_limit if json_limit is not None else limit)
        self.timeout, self.min_rate, self.large_bodies = timeout, min_rate, large_bodies
        self.trust_forwarded_for = trust_forwarded_for
        self._gate: anyio.Semaphore | None = None
        # Per client address: its own semaphore, and how many bodies use it (to forget it).
        self._mine: dict[str, tuple[anyio.Semaphore, int]] = {}

    def gate(self) -> anyio.Semaphore:
        if self._gate is None:  # made in the event loop that uses it
            self._gate = anyio.Semaphore(max(1, self.large_bodies))
        return self._gate

    async def take(self, address: str) -> bool:
        """One large-body slot for ``address`` (one of its own ``SLOTS_PER_ADDRESS``, then
        one of all), waiting at most ``timeout``: whether it got one."""
        sem, users = self._mine.get(address) or (anyio.Semaphore(SLOTS_PER_ADDRESS), 0)
        self._mine[address] = (sem, users + 1)
        own = got = False
        try:
            with anyio.move_on_after(self.timeout):
                await sem.acquire()
                own = True
                await self.gate().acquire()
                got = True
        finally:
            if not got:
                if own:
                    sem.release()
                self._forget(address)
        return got

    def give_back(self, address: str) -> None:
        self.gate().release()
        self._mine[address][0].release()
        self._forget(address)

    def _forget(self, address: str) -> None:
        sem, users = self._mine[address]
        if users > 1:
            self._mine[address] = (sem, users - 1)
        else:
            del self._mine[address]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        v1 = scope["path"].startswith("/v1/")
        declared = _header(scope, b"content-length")
        size = declared_length(declared) if declared is not None else None
        if declared is not None and size is None:
            await _answer(send, 400, _error(400, "invalid_input",
                                            "Content-Length must be a number", "body", v1))
            return
        if size == 0 or (size is None and _header(scope, b"transfer-encoding") is None):
            await self.app(scope, receive, send)  # no body at all
            return
        upload = is_upload(scope["method"], scope["path"])
        limit = self.limit if upload else self.json_limit
        if size is not None and size > limit:
            await self._send(send, self.too_large(f"body of {size} bytes", limit, v1))
            return
        ctype = (_header(scope, b"content-type") or b"").split(b";")[0].strip().lower()
        body = _Body(self, receive, limit, large=size is not None and size > LARGE_BODY,
                     check=not upload and (not ctype or ctype.endswith(b"json")), v1=v1,
                     address=address_of(scope, self.trust_forwarded_for))
        try:
            await self._guarded(scope, body, send)
        finally:
            body.release()  # a body the application left unread, or a client that left

    async def _guarded(self, scope: Scope, body: _Body, send: Send) -> None:
        """The application, whose answer a refusal found while it reads replaces."""
        started = answered = False

        async def guarded(message: Message) -> None:
            nonlocal started, answered
            if body.refusal is not None and not started:
                if not answered:
                    answered = True
                    await self._send(send, body.refusal)
                return
            if answered:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, body, guarded)
        except Exception:
            if body.refusal is None or started:
                raise
        if body.refusal is not None and not started and not answered:
            await self._send(send, body.refusal)

    def too_large(self, what: str, limit: int, v1: bool) -> Refusal:
        msg = f"{what} is over the {limit}-byte limit"
        return Refusal(413, _error(413, "payload_too_large", msg, "body", v1, limit=limit))

    @staticmethod
    async def _send(send: Send, refusal: Refusal) -> None:
        await _answer(send, refusal.status, refusal.body, list(refusal.headers))


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
    named = shown(name.replace("\x00", "\\x00"))
    if conn.scope["type"] == "websocket":
        raise WebSocketException(1008, f"{named}: {why}"[:120])
    raise InvalidInput(f"{named}: {why}", field=named)


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
    def __init__(self, app: ASGIApp, per_key: Rate | None, per_ip: Rate | None,
                 trust_forwarded_for: bool = False) -> None:
        self.app = app
        self.keys = Buckets(per_key) if per_key else None
        self.ips = Buckets(per_ip) if per_ip else None
        self.trust_forwarded_for = trust_forwarded_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == "/health":
            await self.app(scope, receive, send)
            return
        now = time.monotonic()
        v1 = scope["path"].startswith("/v1/")
        if self.ips is not None:
            ok, _, wait = self.ips.take(f"ip:{address_of(scope, self.trust_forwarded_for)}",
                                        now)
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


def install(app: FastAPI, body_limit: int, settings: Settings | None = None) -> None:
    """Body limit inside, rate limit outside it (a flood is refused before its body); the
    URL's text is ``plain_url``'s, a dependency of every route. ``settings`` default to the
    coordinator's (``app.state.coordinator``)."""
    if settings is None:
        c = getattr(app.state, "coordinator", None)
        settings = getattr(c, "settings", None) or Settings()
    app.add_middleware(BodyLimit, limit=body_limit, json_limit=settings.max_json_bytes,
                       timeout=settings.body_timeout, min_rate=settings.min_body_rate,
                       large_bodies=settings.max_large_bodies,
                       trust_forwarded_for=settings.trust_forwarded_for)
    # Behind a trusted proxy every connection comes from the proxy: it caps per client.
    app.state.max_connections_per_peer = (0 if settings.trust_forwarded_for
                                          else MAX_CONNECTIONS_PER_PEER)
    app.add_middleware(RateLimit,
                       per_key=Rate.parse(os.environ.get("DEAI_RATE_PER_KEY",
                                                         DEFAULT_RATE_PER_KEY),
                                          "DEAI_RATE_PER_KEY"),
                       per_ip=Rate.parse(os.environ.get("DEAI_RATE_PER_IP",
                                                        DEFAULT_RATE_PER_IP),
                                         "DEAI_RATE_PER_IP"),
                       trust_forwarded_for=settings.trust_forwarded_for)
