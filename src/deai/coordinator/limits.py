"""Request limits as pure ASGI middleware and an HTTP protocol: heads, bodies, JSON, rates.

``BoundedHttp`` is uvicorn's httptools protocol with a bounded request head: a head
(request line and headers) over ``Settings.max_head_bytes`` is answered 431, one not
complete within ``Settings.head_timeout`` of the connection (or of its first byte, on a
kept-alive one) 408, and the socket closed. ``raise_nofile`` lifts the process's file
limit to its hard limit, so idle sockets run out of time before the process runs out of
descriptors.

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

A JSON body (or one without a content type, which FastAPI parses as JSON) nested deeper
than ``MAX_JSON_DEPTH``, or holding ``NaN`` or ``Infinity`` (numbers JSON does not have,
though Python's parser takes them), or holding a string or key with a lone UTF-16
surrogate (``"\\ud800"``: valid JSON, yet no text UTF-8, PostgreSQL or a response can
carry), is answered 422 (400 on ``/v1``), naming the field, before any parser sees it.
``json_problem`` finds all three in one scan of the bytes with numpy (no Python object
per token: a body of a million empty lists costs a few bytes a byte, not the 50 a parse
would); only the path of the offending string is decoded. The body is replayed to the
application; every later ``receive`` goes to the server, so a client that hangs up is
still seen as ``http.disconnect``. A refusal found while the application reads replaces
whatever the application answers.

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

``BoundedHttp`` also closes at once a connection over ``MAX_CONNECTIONS_PER_PEER``
from one socket peer (not behind a trusted proxy, whose peer is everyone), so one peer's
idle sockets cannot take all of uvicorn's ``limit_concurrency``.
"""

from __future__ import annotations

import asyncio
import codecs
import hashlib
import json
import logging
import math
import os
import re
import resource
import time
from collections import OrderedDict
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

import anyio
import numpy as np
from fastapi import FastAPI
from starlette.exceptions import WebSocketException
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from deai.coordinator.settings import Settings
from deai.core.diversity import client_address
from deai.core.errors import InvalidInput

log = logging.getLogger("deai.coordinator.limits")

MAX_JSON_DEPTH = 64
OFF_LOOP = 256 * 1024  # bytes of a JSON body past which it is checked off the event loop
LARGE_BODY = 1024 * 1024  # bytes past which a body needs one of the large-body slots
SLOTS_PER_ADDRESS = 2  # large-body slots one client address may hold at once
SLOT_GRACE = 1.0  # seconds (at most body_timeout) before min_body_rate counts, in a slot
MAX_LENGTH_DIGITS = 19  # a Content-Length longer than this is over any limit
MAX_CONNECTIONS_PER_PEER = 256  # connections one socket peer may hold open at once
DEFAULT_RATE_PER_KEY = "500/1000"
DEFAULT_RATE_PER_IP = "2000/4000"
MAX_BUCKETS = 100_000
# The routes that take a body that is not JSON, up to --max-upload-bytes: (method, path).
UPLOADS = (("PUT", re.compile(r"/api/blobs")),
           ("PUT", re.compile(r"/api/provider/leases/[^/]+/snapshot")),
           ("POST", re.compile(r"/v1/files")))

_SURROGATE = re.compile("[\ud800-\udfff]")  # a lone one: a pair decodes to one character
# Where a decoded body may hold one: a \uD800-\uDFFF escape, or raw surrogate bytes (Python's
# parser decodes bytes with "surrogatepass"); other bodies are not scanned for it.
_SURROGATE_HINT = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
_UTF8 = ("utf-8", "utf-8-sig")
_COLON = re.compile(rb"[ \t\r\n]*:")
_DISCONNECT: Message = {"type": "http.disconnect"}


@dataclass(frozen=True)
class Problem:
    """What is wrong with a request's text, and where (a field, a parameter)."""

    field: str
    message: str


def text_problem(value: str) -> str | None:
    """Why ``value`` cannot be stored or answered as text, or None."""
    if "\x00" in value:
        return "must not contain a NUL character"
    if _SURROGATE.search(value):
        return "must not hold a lone UTF-16 surrogate (one half of a pair, not a character)"
    return None


def _shown(key: str) -> str:
    return key.encode("utf-8", "backslashreplace").decode()


def json_problem(data: bytes, limit: int = MAX_JSON_DEPTH) -> Problem | None:
    """What is wrong with a JSON body, found without parsing it: nesting deeper than
    ``limit`` levels, a non-finite number (``NaN``, ``Infinity``, which Python's parser
    accepts and JSON does not), or a lone surrogate in a string or key (the first in the
    document, named by its path). Text that is not JSON is left to the parser's own 422."""
    enc = json.detect_encoding(data)
    if enc not in _UTF8:  # UTF-16 or -32, as Python's parser reads it: scanned as UTF-8
        try:
            data = data.decode(enc, "surrogatepass").encode("utf-8", "surrogatepass")
        except (UnicodeError, LookupError):
            return None
    elif data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    deep = data.count(b"[") + data.count(b"{") > limit
    odd = _SURROGATE_HINT.search(data) is not None
    if not deep and not odd and b"NaN" not in data and b"Infinity" not in data:
        return None
    scan = _Scan(data)
    if deep and scan.deepest() > limit:
        return Problem("body", f"body: JSON nested more than {limit} levels")
    constant = scan.constant()
    if constant is not None:
        return Problem("body", f"body: {constant} is not a number JSON allows")
    return scan.lone_surrogate() if odd else None


class _Scan:
    """One JSON text as bytes in numpy: which bytes lie outside strings, and what they say.

    A quote opens or closes a string unless an odd run of backslashes comes before it;
    in JSON that parses, every other quote is such a one. Arrays here are as long as the
    body (bytes and booleans; one of 32-bit depths) or as long as its quotes and
    backslashes: never an object per token."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.a = a = np.frombuffer(data, np.uint8)
        self.bs = _where(a, ord("\\"))
        if self.bs.size:  # where each run of backslashes starts, for each backslash
            new = np.ones(self.bs.size, bool)
            new[1:] = np.diff(self.bs) != 1
            self.run_start = self.bs[new][np.cumsum(new, dtype=np.int32) - 1]
        quotes = _where(a, ord('"'))
        quotes = quotes[~self._escaped(quotes)]
        self.opens, self.closes = quotes[0::2], quotes[1::2]
        edge = np.zeros(a.size + 1, np.int8)
        edge[self.opens] = 1
        edge[self.closes] = -1
        self.outside = np.cumsum(edge[:-1], dtype=np.int8) == 0

    def _escaped(self, at: np.ndarray) -> np.ndarray:
        """Whether the byte at each position follows an odd run of backslashes."""
        escaped = np.zeros(at.size, bool)
        if not self.bs.size or not at.size:
            return escaped
        after = np.flatnonzero((at > 0) & (self.a[np.maximum(at, 1) - 1] == ord("\\")))
        prev = at[after] - 1  # only those right after a backslash need their run's length
        i = np.searchsorted(self.bs, prev)
        escaped[after] = (prev - self.run_start[i]) % 2 == 0
        return escaped

    def _brackets(self, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        a, out = self.a[start:end], self.outside[start:end]
        opens = out & ((a == ord("[")) | (a == ord("{")))
        closes = out & ((a == ord("]")) | (a == ord("}")))
        return opens, closes

    def deepest(self) -> int:
        deepest = depth = 0
        for start in range(0, self.a.size, _BLOCK):  # a block at a time: 32-bit sums
            opens, closes = self._brackets(start, start + _BLOCK)
            sums = np.cumsum(opens.astype(np.int8) - closes.astype(np.int8), dtype=np.int32)
            if sums.size:
                deepest = max(deepest, depth + int(sums.max()))
                depth += int(sums[-1])
        return deepest

    def constant(self) -> str | None:
        """``NaN``, ``Infinity`` or ``-Infinity`` outside strings: the only tokens there
        that start with N or I in text Python's parser takes."""
        a = self.a
        hits = np.flatnonzero(((a == ord("N")) | (a == ord("I"))) & self.outside)
        if not hits.size:
            return None
        at = int(hits[0])
        if self.data.startswith(b"NaN", at):
            return "NaN"
        if self.data.startswith(b"Infinity", at):
            return "-Infinity" if at and self.data[at - 1] == ord("-") else "Infinity"
        return None  # not JSON: the parser says so

    def lone_surrogate(self) -> Problem | None:
        a = self.a
        raw = np.flatnonzero((a[:-1] == 0xED) & (a[1:] >= 0xA0) & (a[1:] <= 0xBF))
        found = [raw]  # raw surrogate bytes never pair: Python decodes each alone
        if a.size >= 6:  # \uD800-\uDBFF then \uDC00-\uDFFF is a pair; any other is lone
            esc = np.flatnonzero((a[:-5] == ord("\\")) & (a[1:-4] == ord("u"))
                                 & ((a[2:-3] | 0x20) == ord("d")))
            esc = esc[~self._escaped(esc)]
            x = a[esc + 3] | 0x20
            high = esc[(x == ord("8")) | (x == ord("9")) | (x == ord("a")) | (x == ord("b"))]
            low = esc[(x >= ord("c")) & (x <= ord("f"))]
            found += [high[~np.isin(high + 6, low)], low[~np.isin(low - 6, high)]]
        at = np.concatenate(found)
        at = at[~self.outside[at]]
        if not at.size:
            return None
        k = int(np.searchsorted(self.opens, at.min(), "right")) - 1
        if k < 0 or k >= self.closes.size:
            return None  # not JSON
        start, end = int(self.opens[k]), int(self.closes[k]) + 1
        try:
            text = json.loads(self.data[start:end])
        except ValueError:
            return None
        why = text_problem(text)
        if why is None:
            return None
        if _COLON.match(self.data, end):  # a key: its object is named
            where = self._path(start, key=True) or "body"
            return Problem(where, f"{where}: the key {_shown(text)!r} {why}")
        where = self._path(start, key=False) or "body"
        return Problem(where, f"{where}: {why}")

    def _path(self, at: int, key: bool) -> str:
        """The path (``a[1].b``) to the value that starts at ``at`` (to its object, when
        it is a key): at each enclosing level, the array's index or the object's key."""
        opens, closes = self._brackets(0, at)
        br = np.flatnonzero(opens | closes)
        if not br.size:
            return ""
        step = np.where(opens[br], 1, -1)
        depth = np.cumsum(step)
        levels = int(depth[-1]) - (1 if key else 0)
        if levels <= 0:
            return ""
        # The container open at each level: the last opener that reached that level.
        opener = np.full(int(depth.max()) + 1, -1)
        np.maximum.at(opener, depth[step == 1], br[step == 1])
        a = self.a
        commas = np.flatnonzero(self.outside[:at] & (a[:at] == ord(",")))
        i = np.searchsorted(br, commas)
        level = np.where(i > 0, depth[np.maximum(i - 1, 0)], 0)
        mine = (level >= 1) & (level <= levels)
        commas, level = commas[mine], level[mine]
        mine = commas > opener[level]  # a comma of the container still open there
        commas, level = commas[mine], level[mine]
        count = np.bincount(level, minlength=levels + 1)
        last = np.full(levels + 1, -1)
        np.maximum.at(last, level, commas)
        path = ""
        for lv in range(1, levels + 1):
            o = int(opener[lv])
            if a[o] == ord("["):
                path += f"[{int(count[lv])}]"
                continue
            k = int(np.searchsorted(self.opens, max(o, int(last[lv]))))
            name = json.loads(self.data[int(self.opens[k]):int(self.closes[k]) + 1])
            path = f"{path}.{name}" if path else str(name)
        return path


_BLOCK = 1 << 20


def _where(a: np.ndarray, byte: int) -> np.ndarray:
    """Positions of ``byte`` in ``a`` (32-bit while they fit), found a block at a time."""
    kind = np.int32 if a.size < 2**31 else np.int64
    parts = [np.flatnonzero(a[i:i + _BLOCK] == byte).astype(kind) + i
             for i in range(0, a.size, _BLOCK)]
    return np.concatenate(parts) if parts else np.zeros(0, kind)


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


# --- the request head, and the process's sockets ---------------------------------------

class BoundedHttp(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a bound on each request head: its size (431)
    and the time it takes to arrive (408), counted from the connection (a fresh one) or
    from the head's first byte (a kept-alive one; idle between requests is uvicorn's
    ``timeout_keep_alive``). httptools itself keeps a header of any size; the bytes
    received while a head is incomplete are counted instead, so the bound is
    ``max_head`` plus at most one read."""

    max_head = 32 * 1024
    head_timeout = 10.0
    # Open connections by socket peer, for the whole process (one event loop): a peer
    # over its cap (the app's ``state.max_connections_per_peer``, 0: none) is closed at once.
    _peers: dict[str, int] = {}

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_bytes, self._in_head = 0, True
        self._head_timer: asyncio.TimerHandle | None = None
        self._peer: str | None = None
        super().connection_made(transport)
        cap = getattr(getattr(self.app, "state", None), "max_connections_per_peer",
                      MAX_CONNECTIONS_PER_PEER)
        peer = self.client[0] if cap and self.client else None
        if peer is not None:
            self._peer = peer
            self._peers[peer] = self._peers.get(peer, 0) + 1
            if self._peers[peer] > cap:  # counted down again in connection_lost
                transport.close()
                return
        self._head_since = self.loop.time()
        self._arm(self.head_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._release()
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        # From here the connection is the WebSocket protocol's: its end never reaches this
        # protocol's ``connection_lost``, so it stops counting against its peer now (left
        # counted, every upgrade leaked a place, and a peer was refused for good after
        # ``MAX_CONNECTIONS_PER_PEER`` WebSockets over the process's life).
        self._release()
        super().handle_websocket_upgrade()

    def _release(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._peer is not None:
            left = self._peers.pop(self._peer, 1) - 1
            if left > 0:
                self._peers[self._peer] = left
            self._peer = None

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and self._head_bytes > self.max_head:
            self._refuse(b"431 Request Header Fields Too Large")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if not self._in_head:  # the next request on a kept-alive connection
            self._in_head, self._head_bytes = True, 0
            self._head_since = self.loop.time()
            self._arm(self.head_timeout)

    def on_headers_complete(self) -> None:
        self._in_head = False  # the timer, if any, finds nothing to do and is not re-armed
        super().on_headers_complete()

    def _arm(self, delay: float) -> None:
        # One timer a connection at a time, not one a request: a kept-alive connection
        # asking many times a second re-arms it once a head_timeout at most.
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(delay, self._late)

    def _late(self) -> None:
        self._head_timer = None
        if not self._in_head or self.transport.is_closing():
            return
        left = self._head_since + self.head_timeout - self.loop.time()
        busy = self.cycle is not None and not self.cycle.response_complete
        if left > 0 or busy:  # a later head; or a pipelined one behind an answer
            self._arm(max(left, 0.0) or self.head_timeout)
            return
        self._refuse(b"408 Request Timeout" if self._head_bytes else None)

    def _refuse(self, status: bytes | None) -> None:
        if self.transport.is_closing():
            return
        busy = self.cycle is not None and not self.cycle.response_complete
        if status is not None and not busy:  # never into the middle of another answer
            self.transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-length: 0\r\n"
                                 b"connection: close\r\n\r\n")
        self.transport.close()


def http_protocol(max_head: int, head_timeout: float) -> type[asyncio.Protocol]:
    """``BoundedHttp`` with these bounds, for ``uvicorn.Config(http=...)``."""
    return type("BoundedHttp", (BoundedHttp,),
                {"max_head": max_head, "head_timeout": head_timeout})


def raise_nofile() -> int:
    """Raise this process's soft limit on open files to its hard limit, and return it. At
    the soft limit (often 1,024) accept fails and nobody new is served; idle sockets are
    closed after ``head_timeout``, which a higher limit gives them time for."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit to %d: %s", hard, exc)
    return soft
