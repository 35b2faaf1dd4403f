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

Where sessions wait. On SQLite (one process) the ``Hub`` in this process's memory is
the whole rendezvous. On PostgreSQL the owner's socket, the agent's poll and the agent's
session socket may each land on another replica (``--workers N``, or several
processes), so the ``Relay`` files each session in ``lease_sessions`` as well: the poll
on any replica takes it from there (its wake-up crosses replicas by NOTIFY), and the
replica that gets the agent's socket claims the row and, unless it holds the owner
itself (the in-memory fast path), dials the owner's replica's internal relay endpoint
(recorded in the row; every replica listens on one, ``DEAI_RELAY_BIND``, loopback by
default) with the session's secret (in the row, never in an answer). From there frames
are piped over that TCP connection (``_StreamPeer``) exactly as between two sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import math
import os
import secrets
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from fastapi import WebSocket
from pydantic import ValidationError
from sqlalchemy import delete, func, select, text
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.types import Message
from starlette.websockets import WebSocketDisconnect

from deai.coordinator import leases
from deai.coordinator.notifier import Notifier
from deai.coordinator.service import Coordinator
from deai.core import auth
from deai.core.errors import AuthError, Conflict, DeAIError, Forbidden, InvalidInput, NotFound
from deai.core.wire_leases import SessionOpen, SessionParams
from deai.store.models_relay import LeaseSession

log = logging.getLogger("deai.coordinator.relay")

AGENT_TIMEOUT = 15.0  # how long an owner waits for the provider to pick a session up
FIRST_MESSAGE_TIMEOUT = 30.0
MAX_QUEUED = 32  # sessions waiting for one provider's poll; a first message is up to ~16 MB
HANDSHAKE_TIMEOUT = 5.0  # between replicas: connect, then the secret's answer
FRAME_MAX = 64 << 20  # a frame between replicas (a WebSocket message is at most 16 MiB)
SWEEP_EVERY = 30.0  # rows of replicas that died while their owner waited are removed
ENV_BIND = "DEAI_RELAY_BIND"  # host[:port] of this replica's internal relay (127.0.0.1:0)
ENV_ADVERTISE = "DEAI_RELAY_ADVERTISE"  # the host other replicas dial (default: the bind's)
_LOCK_CLASS = 0x7E1A  # pg_advisory_xact_lock(_LOCK_CLASS, hashtext(provider)): one filer


def _full() -> Conflict:
    return Conflict(f"the provider has {MAX_QUEUED} sessions waiting to be picked up; "
                    "try again shortly", field="lease")


class _Peer(Protocol):
    """What ``pipe`` needs of each end: a WebSocket, or a replica's TCP stream."""

    async def receive(self) -> Message: ...
    async def send_bytes(self, data: bytes) -> None: ...
    async def send_text(self, data: str) -> None: ...
    async def close(self) -> None: ...


class Waker:
    """One long-poll's wake-up (``Hub.watching``): ``reading`` before each round of its
    reads, ``wait`` after them; a wake in between ends the wait at once."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def reading(self) -> None:
        self.event.clear()

    async def wait(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.event.wait(), timeout)


@dataclass
class _Pending:
    provider_id: str
    lease_id: str
    agent: asyncio.Future[tuple[_Peer, asyncio.Event]] = field(repr=False)
    secret: str = field(default="", repr=False)  # what the agent's replica proves itself with


class Hub:
    """Sessions waiting for their provider, and a wake-up per provider's long-poll.

    ``wake`` also tells the other replicas (``Notifier.wake``, NOTIFY on PostgreSQL), whose
    ``Notifier.on_remote_wake`` wakes their hub (wired by ``api_leases.lifespan``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 notifier: Notifier | None = None) -> None:
        self.loop = loop
        self.notifier = notifier
        self.queued: dict[str, list[SessionOpen]] = {}
        self.pending: dict[str, _Pending] = {}
        self._wakers: dict[str, set[asyncio.Event]] = {}  # a provider's polls in progress
        self.relay: Relay | None = None  # PostgreSQL: the rendezvous every replica sees

    def wake(self, provider_id: str) -> None:
        """Safe from any thread."""
        self.loop.call_soon_threadsafe(self._wake, provider_id)
        if self.notifier is not None:
            self.notifier.wake([provider_id])

    def _wake(self, provider_id: str) -> None:
        for ev in self._wakers.get(provider_id, ()):
            ev.set()

    def woken_elsewhere(self, provider_ids: list[str]) -> None:
        """Another replica woke these providers (on the event loop)."""
        for pid in provider_ids:
            self._wake(pid)

    @contextlib.contextmanager
    def watching(self, provider_id: str) -> Iterator[Waker]:
        """A wake-up for one poll of the provider's, kept from before the poll's first
        read to its answer, so that a wake between a read and the wait is never lost; a
        poll's own (another poll of the same key does not clear it), and forgotten with
        the provider's last poll: the map holds the polls in progress only, not every key
        that ever polled."""
        w = Waker()
        mine = self._wakers.setdefault(provider_id, set())
        mine.add(w.event)
        try:
            yield w
        finally:
            mine.discard(w.event)
            if not mine and self._wakers.get(provider_id) is mine:
                del self._wakers[provider_id]

    def take(self, provider_id: str) -> list[SessionOpen]:
        return self.queued.pop(provider_id, [])

    def file(self, provider_id: str, lease_id: str, params: dict[str, Any], *,
             queue: bool = True) -> tuple[str, _Pending]:
        """Queue a session for the provider's next poll; a ``Conflict`` when
        ``MAX_QUEUED`` already wait for it (each holds its first message in memory).
        ``queue=False``: only the owner's end is kept here; the ``Relay`` queues it."""
        if queue and len(self.queued.get(provider_id, [])) >= MAX_QUEUED:
            raise _full()
        sid = secrets.token_urlsafe(24)
        p = _Pending(provider_id, lease_id, self.loop.create_future(),
                     secrets.token_urlsafe(32))
        self.pending[sid] = p
        if queue:
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


class Relay:
    """The shared half of the rendezvous (PostgreSQL): the ``lease_sessions`` rows, and
    this replica's internal endpoint, where the replica holding an agent's socket for a
    session whose owner is here connects. Database calls block (run them in a thread)."""

    def __init__(self, c: Coordinator, hub: Hub) -> None:
        self.c, self.hub = c, hub
        self.endpoint = ""
        self._server: asyncio.Server | None = None
        self._swept = 0.0

    async def start(self) -> None:
        host, _, port = (os.environ.get(ENV_BIND) or "127.0.0.1:0").rpartition(":")
        host = host.strip("[]") or "127.0.0.1"
        self._server = await asyncio.start_server(self._serve, host, int(port or 0),
                                                  limit=4096)
        bound = self._server.sockets[0].getsockname()[1]
        advertise = os.environ.get(ENV_ADVERTISE) or (
            socket.gethostname() if host in ("0.0.0.0", "::") else host)
        self.endpoint = f"[{advertise}]:{bound}" if ":" in advertise else f"{advertise}:{bound}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)

    # --- rows (blocking) --------------------------------------------------------------

    def file(self, sid: str, p: _Pending, params: dict[str, Any]) -> None:
        """Record the session for every replica; ``Conflict`` when ``MAX_QUEUED`` of the
        provider's wait for a poll (counted under a per-provider lock, across replicas)."""
        now = self.c.now()

        def fn(s: Session) -> None:
            s.execute(text("SELECT pg_advisory_xact_lock(:k, hashtext(:p))"),
                      {"k": _LOCK_CLASS, "p": p.provider_id})
            waiting = s.scalar(select(func.count()).select_from(LeaseSession).where(
                LeaseSession.provider_id == p.provider_id, LeaseSession.taken.is_(False),
                LeaseSession.created_at >= now - AGENT_TIMEOUT)) or 0
            if waiting >= MAX_QUEUED:
                raise _full()
            s.add(LeaseSession(id=sid, provider_id=p.provider_id, lease_id=p.lease_id,
                               params=params, endpoint=self.endpoint, secret=p.secret,
                               created_at=now, taken=False))

        self.c.db.run(fn)

    def take(self, provider_id: str) -> list[SessionOpen]:
        """The provider's sessions no poll has had yet (a poll on any replica)."""
        since = self.c.now() - AGENT_TIMEOUT

        def fn(s: Session) -> list[SessionOpen]:
            rows = s.scalars(select(LeaseSession).where(
                LeaseSession.provider_id == provider_id, LeaseSession.taken.is_(False),
                LeaseSession.created_at >= since).order_by(LeaseSession.created_at,
                                                           LeaseSession.id)
                .with_for_update(skip_locked=True)).all()
            for r in rows:
                r.taken = True
            return [SessionOpen(id=r.id, lease_id=r.lease_id, params=r.params) for r in rows]

        return self.c.db.run(fn)

    def claim(self, sid: str, provider_id: str) -> tuple[str, str]:
        """The agent's socket for ``sid`` came here: the row is removed (one claim wins) and
        its owner's endpoint and secret returned; ``NotFound``/``Forbidden`` as in memory."""
        def fn(s: Session) -> tuple[str, str]:
            row = s.get(LeaseSession, sid[:64], with_for_update=True)
            if row is None:
                raise NotFound("no such session (expired or already taken)", field="session")
            if row.provider_id != provider_id:
                raise Forbidden("this session was filed for another provider")
            s.delete(row)
            return row.endpoint, row.secret

        return self.c.db.run(fn)

    def forget(self, sid: str) -> None:
        self.c.db.run(lambda s: s.execute(delete(LeaseSession).where(LeaseSession.id == sid)))

    def sweep(self) -> int:
        """Remove the rows of owners whose replica went away while they waited."""
        now = self.c.now()
        if now - self._swept < SWEEP_EVERY:
            return 0
        self._swept = now
        gone = self.c.db.run(lambda s: s.execute(delete(LeaseSession).where(
            LeaseSession.created_at < now - 2 * AGENT_TIMEOUT)))
        return int(getattr(gone, "rowcount", 0) or 0)

    # --- between replicas ---------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        """The agent's replica proves it holds the agent's socket for one of our sessions."""
        try:
            line = await asyncio.wait_for(reader.readline(), HANDSHAKE_TIMEOUT)
            msg = json.loads(line)
            sid, secret = str(msg["sid"]), str(msg["secret"]).encode()
        except Exception:  # noqa: BLE001 - anything but a well-formed hello is refused
            await _shut(writer)
            return
        p = self.hub.pending.get(sid)
        if (p is None or p.agent.done()
                or not hmac.compare_digest(p.secret.encode(), secret)):
            with contextlib.suppress(Exception):
                writer.write(b"no\n")
                await writer.drain()
            await _shut(writer)
            return
        self.hub.pending.pop(sid, None)
        done = asyncio.Event()
        try:
            writer.write(b"ok\n")
            await writer.drain()
        except ConnectionError:
            p.agent.cancel()
            await _shut(writer)
            return
        if p.agent.done():  # the owner gave up while we answered
            await _shut(writer)
            return
        p.agent.set_result((_StreamPeer(reader, writer), done))
        try:
            await done.wait()
        finally:
            await _shut(writer)

    async def dial(self, endpoint: str, sid: str, secret: str) -> _StreamPeer | None:
        """Connect to the owner's replica for ``sid``; None if it is gone or refuses."""
        host, _, port = endpoint.rpartition(":")
        writer = None
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host.strip("[]"), int(port), limit=4096),
                HANDSHAKE_TIMEOUT)
            writer.write(json.dumps({"sid": sid, "secret": secret}).encode() + b"\n")
            await writer.drain()
            answer = await asyncio.wait_for(reader.readline(), HANDSHAKE_TIMEOUT)
        except (OSError, TimeoutError, ValueError):
            if writer is not None:
                await _shut(writer)
            return None
        if answer != b"ok\n":
            await _shut(writer)
            return None
        return _StreamPeer(reader, writer)


async def _shut(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 2.0)


class _StreamPeer:
    """A WebSocket's messages over a replica-to-replica TCP stream: a frame is a kind byte
    (0 binary, 1 text), a 4-byte big-endian length and the data."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def receive(self) -> Message:
        try:
            kind, n = struct.unpack(">BI", await self.reader.readexactly(5))
            if n > FRAME_MAX:
                raise ValueError("frame too large")
            data = await self.reader.readexactly(n)
        except (asyncio.IncompleteReadError, ConnectionError, ValueError):
            return {"type": "websocket.disconnect", "code": 1000}
        if kind == 1:
            return {"type": "websocket.receive", "text": data.decode("utf-8", "replace")}
        return {"type": "websocket.receive", "bytes": data}

    async def _send(self, kind: int, data: bytes) -> None:
        self.writer.write(struct.pack(">BI", kind, len(data)))
        self.writer.write(data)
        await self.writer.drain()

    async def send_bytes(self, data: bytes) -> None:
        await self._send(0, data)

    async def send_text(self, data: str) -> None:
        await self._send(1, data.encode())

    async def close(self) -> None:
        await _shut(self.writer)


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
    relay = hub.relay
    params_d = params.model_dump(exclude_none=True)
    try:
        sid, pending = hub.file(provider_id, lease_id, params_d, queue=relay is None)
    except Conflict as exc:
        await refuse(ws, exc, accepted=True)
        return
    try:
        if relay is not None:  # every replica's poll sees it; then wake them all
            try:
                await run_in_threadpool(relay.file, sid, pending, params_d)
            except Conflict as exc:
                await refuse(ws, exc, accepted=True)
                return
            hub.wake(provider_id)
        try:
            agent, done = await asyncio.wait_for(pending.agent, AGENT_TIMEOUT)
        except TimeoutError:
            await refuse(ws, NotFound("the provider did not pick the session up in time",
                                      field="lease"), accepted=True)
            return
    finally:  # picked up (then already gone from both), timed out or cancelled
        hub.drop(sid)
        if relay is not None:
            try:
                await run_in_threadpool(relay.forget, sid)
            except Exception:  # the sweep removes it later
                log.warning("could not remove session %s's row", sid, exc_info=True)
    try:
        await ws.send_text('{"type": "open"}')  # the session is through to the lease
        await pipe(ws, agent)
    finally:
        done.set()


async def provider_end(ws: WebSocket, sid: str, c: Coordinator, hub: Hub) -> None:
    """The agent's end of a session: hand the socket to the waiting owner, then wait.
    An owner on another replica (PostgreSQL): claim the row, dial its replica, pipe."""
    remote: tuple[str, str] | None = None
    try:
        me = await ws_signer(ws, c)
        pending = hub.pending.get(sid)
        if pending is None and hub.relay is not None:
            remote = await run_in_threadpool(hub.relay.claim, sid, me)
        elif pending is None:
            raise NotFound("no such session (expired or already taken)", field="session")
        elif pending.provider_id != me:
            raise Forbidden("this session was filed for another provider")
    except DeAIError as exc:
        await refuse(ws, exc)
        return
    if remote is not None and hub.relay is not None:
        await ws.accept()
        peer = await hub.relay.dial(remote[0], sid, remote[1])
        if peer is None:  # the owner gave up waiting, or its replica is gone
            with contextlib.suppress(Exception):
                await ws.close(code=4408)
            return
        await pipe(ws, peer)
        return
    assert pending is not None
    hub.pending.pop(sid, None)
    await ws.accept()
    done = asyncio.Event()
    if pending.agent.done():  # the owner gave up waiting
        await ws.close(code=4408)
        return
    pending.agent.set_result((ws, done))
    await done.wait()


async def _copy(src: _Peer, dst: _Peer) -> None:
    while True:
        msg = await src.receive()
        if msg["type"] == "websocket.disconnect":
            return
        if msg.get("bytes") is not None:
            await dst.send_bytes(msg["bytes"])
        elif msg.get("text") is not None:
            await dst.send_text(msg["text"])


async def pipe(a: _Peer, b: _Peer) -> None:
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
