"""The interactive relay: a lease owner's WebSocket meets the provider's, bytes are piped.

Providers sit behind NAT, so both ends dial in:

1. the owner opens ``WS /api/leases/{id}/attach`` with the four signature headers
   over ``GET <path>`` and an empty body (``core.auth``); only the lease's owner,
   while the lease is active, gets past this. The first message is a
   ``SessionParams`` (exec, put, get, connect) checked here;
2. the relay files a session (a random id) for the lease's provider and wakes
   its long-poll (``Hub.wake``); the poll hands it over (``LeasePollOut.sessions``);
3. the agent opens ``WS /api/provider/leases/sessions/{sid}``, signed by the
   provider the session was filed for, and sends the params on to the sandbox;
4. the owner gets ``{"type": "open"}``; from then on every message from one side
   goes to the other unchanged (binary frames carry a channel byte and data, text
   frames carry JSON control: resize, eof, signal, ready, exit, error) until
   either side closes.

A refusal is sent as a text frame ``{"type": "error", "code", "message",
"status"}`` followed by a close with code ``4000 + status``, so a client can
tell a 403 from a 404 without parsing a handshake failure.

Sessions live in this process's memory (``Hub``): with several API replicas a
session would need a shared rendezvous (LISTEN/NOTIFY); one process is assumed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import secrets
from dataclasses import dataclass, field
from typing import Any

from fastapi import WebSocket
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.websockets import WebSocketDisconnect

from deai.coordinator import leases
from deai.coordinator.service import Coordinator
from deai.core import auth
from deai.core.errors import AuthError, Conflict, DeAIError, Forbidden, InvalidInput, NotFound
from deai.core.wire_leases import SessionOpen, SessionParams

AGENT_TIMEOUT = 15.0  # how long an owner waits for the provider to pick a session up
FIRST_MESSAGE_TIMEOUT = 30.0
MAX_QUEUED = 32  # sessions waiting for one provider's poll; a first message is up to ~16 MB


@dataclass
class _Pending:
    provider_id: str
    lease_id: str
    agent: asyncio.Future[tuple[WebSocket, asyncio.Event]] = field(repr=False)


class Hub:
    """Sessions waiting for their provider, and a wake-up per provider's long-poll."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queued: dict[str, list[SessionOpen]] = {}
        self.pending: dict[str, _Pending] = {}
        self._wakers: dict[str, asyncio.Event] = {}

    def wake(self, provider_id: str) -> None:
        """Safe from any thread."""
        self.loop.call_soon_threadsafe(self._wake, provider_id)

    def _wake(self, provider_id: str) -> None:
        ev = self._wakers.get(provider_id)
        if ev is not None:
            ev.set()

    async def wait(self, provider_id: str, timeout: float) -> None:
        ev = self._wakers.setdefault(provider_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ev.wait(), timeout)
        ev.clear()

    def take(self, provider_id: str) -> list[SessionOpen]:
        return self.queued.pop(provider_id, [])

    def file(self, provider_id: str, lease_id: str, params: dict[str, Any]) -> tuple[str,
                                                                                     _Pending]:
        """Queue a session for the provider's next poll; a ``Conflict`` when
        ``MAX_QUEUED`` already wait for it (each holds its first message in memory)."""
        if len(self.queued.get(provider_id, [])) >= MAX_QUEUED:
            raise Conflict(f"the provider has {MAX_QUEUED} sessions waiting to be picked up; "
                           "try again shortly", field="lease")
        sid = secrets.token_urlsafe(24)
        p = _Pending(provider_id, lease_id, self.loop.create_future())
        self.pending[sid] = p
        self.queued.setdefault(provider_id, []).append(
            SessionOpen(id=sid, lease_id=lease_id, params=params))
        self._wake(provider_id)
        return sid, p

    def drop(self, sid: str) -> None:
        """Forget a session whose owner stopped waiting: pending, and queued if the
        provider's poll has not taken it yet (else its first message stays forever)."""
        p = self.pending.pop(sid, None)
        if p is None:
            return
        left = [x for x in self.queued.get(p.provider_id, []) if x.id != sid]
        if left:
            self.queued[p.provider_id] = left
        else:
            self.queued.pop(p.provider_id, None)


async def ws_signer(ws: WebSocket, c: Coordinator) -> str:
    """The account that signed this WebSocket handshake (``GET path``, empty body)."""
    h = ws.headers
    key, ts, nonce, sig = (h.get(auth.HEADER_KEY), h.get(auth.HEADER_TS),
                           h.get(auth.HEADER_NONCE), h.get(auth.HEADER_SIG))
    if not (key and ts and nonce and sig):
        raise AuthError("this connection must be signed (X-DeAI-Key, -Timestamp, -Nonce, "
                        "-Signature)")
    if not auth.is_account_id(key):
        raise AuthError("X-DeAI-Key must be a 64-character hex Ed25519 public key")
    if not auth.is_nonce(nonce):
        raise AuthError("X-DeAI-Nonce must be 8-64 characters of [A-Za-z0-9_-]")
    try:
        stamp = float(ts) if len(ts) <= 32 else math.nan
    except ValueError:
        stamp = math.nan
    if not math.isfinite(stamp) or abs(stamp - c.now()) > auth.MAX_SKEW:
        raise AuthError("request timestamp is missing or too far from the coordinator's clock")
    c.check_signature(key, auth.message("GET", ws.url.path, b"", ts, nonce,
                                         network=c.network_id), sig)
    await run_in_threadpool(c.use_nonce, key, nonce, 2 * auth.MAX_SKEW)
    return key


async def refuse(ws: WebSocket, exc: DeAIError, *, accepted: bool = False) -> None:
    with contextlib.suppress(Exception):
        if not accepted:
            await ws.accept()
        await ws.send_text(json.dumps({"type": "error", "status": exc.status,
                                       **exc.to_dict()["error"]}))
        # the reason repeats it, for a client that is cut off before it reads the message
        await ws.close(code=4000 + exc.status, reason=f"{exc.code}: {exc.message}"[:120])


async def attach(ws: WebSocket, lease_id: str, c: Coordinator, hub: Hub) -> None:
    """The owner's end of a session."""
    try:
        me = await ws_signer(ws, c)
        owner, provider_id, status = await run_in_threadpool(leases.runs_on, c, lease_id)
        if owner != me:
            raise Forbidden("only the lease's owner may open a session in it")
        if status != "active":
            raise Conflict(f"lease {lease_id} is {status}; sessions open only while it is "
                           "active", status=status)
    except DeAIError as exc:
        await refuse(ws, exc)
        return
    await ws.accept()
    try:
        first = await asyncio.wait_for(ws.receive_text(), FIRST_MESSAGE_TIMEOUT)
        params = SessionParams.model_validate_json(first)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "params"
        await refuse(ws, InvalidInput(f"{where}: {err.get('msg')}", field=where),
                     accepted=True)
        return
    except (TimeoutError, WebSocketDisconnect, KeyError, RuntimeError):
        with contextlib.suppress(Exception):
            await ws.close(code=4408)
        return
    try:
        sid, pending = hub.file(provider_id, lease_id, params.model_dump(exclude_none=True))
    except Conflict as exc:
        await refuse(ws, exc, accepted=True)
        return
    try:
        agent, done = await asyncio.wait_for(pending.agent, AGENT_TIMEOUT)
    except TimeoutError:
        await refuse(ws, NotFound("the provider did not pick the session up in time",
                                  field="lease"), accepted=True)
        return
    finally:  # picked up (then already gone from both), timed out or cancelled
        hub.drop(sid)
    try:
        await ws.send_text('{"type": "open"}')  # the session is through to the lease
        await pipe(ws, agent)
    finally:
        done.set()


async def provider_end(ws: WebSocket, sid: str, c: Coordinator, hub: Hub) -> None:
    """The agent's end of a session: hand the socket to the waiting owner, then wait."""
    try:
        me = await ws_signer(ws, c)
        pending = hub.pending.get(sid)
        if pending is None:
            raise NotFound("no such session (expired or already taken)", field="session")
        if pending.provider_id != me:
            raise Forbidden("this session was filed for another provider")
    except DeAIError as exc:
        await refuse(ws, exc)
        return
    hub.pending.pop(sid, None)
    await ws.accept()
    done = asyncio.Event()
    if pending.agent.done():  # the owner gave up waiting
        await ws.close(code=4408)
        return
    pending.agent.set_result((ws, done))
    await done.wait()


async def _copy(src: WebSocket, dst: WebSocket) -> None:
    while True:
        msg = await src.receive()
        if msg["type"] == "websocket.disconnect":
            return
        if msg.get("bytes") is not None:
            await dst.send_bytes(msg["bytes"])
        elif msg.get("text") is not None:
            await dst.send_text(msg["text"])


async def pipe(a: WebSocket, b: WebSocket) -> None:
    """Copy both ways until one side closes, then close the other."""
    tasks = [asyncio.create_task(_copy(a, b)), asyncio.create_task(_copy(b, a))]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for w in (a, b):
            with contextlib.suppress(Exception):
                await w.close()
