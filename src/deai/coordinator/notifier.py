"""Wake-ups between threads, the event loop and other replicas.

Long-polls, the matcher, the event stream and /v1 result waiters sleep here.
Request handlers run in a thread pool; the poll endpoint and background loops
run on the event loop. ``wake``, ``kick``, ``published`` and ``result_arrived``
may be called from either, and act locally at once.

With PostgreSQL, several replicas share the database and ``connect(url)``
bridges them: every local signal is also sent as a ``NOTIFY deai`` (coalesced:
one sender task drains whatever accumulated since its last send, so a burst of
kicks costs one notification), and a listener applies the other replicas'
signals locally (a replica ignores its own by a random origin tag). Signals
are hints: a waiter always re-reads the database when woken and every wait
has a timeout, so a notification lost while a connection is down costs
latency, never correctness. After the listener reconnects it wakes every
local waiter once for that reason. On SQLite ``connect`` does nothing.

Progress of a streamed /v1 answer crosses replicas too (``forward_progress``, kind
``prog``): the replica a provider posted to sends the task id and the events' pieces,
in order, in as many notifications as the payload limit needs; the replica streaming
that task applies them (``on_remote_progress``). Unlike the other kinds they are not
coalesced, and bounded (``PROGRESS_PENDING_MAX``) rather than accumulated. Which tasks a
replica streams is a fact in PostgreSQL, not a hint: while it streams one it holds a
shared advisory lock on (``STREAM_LOCK_NS``, ``stream_key(task)``) on a connection of
its own (``claim_stream``), which ends with the connection, and any replica reads it
(``STREAM_CLAIMED_SQL``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
from collections.abc import Callable, Iterable
from typing import Any

import psycopg

log = logging.getLogger("deai.coordinator.notifier")

CHANNEL = "deai"
PAYLOAD_MAX = 7000  # PostgreSQL refuses NOTIFY payloads of 8000 bytes or more
PROGRESS_PENDING_MAX = 4 << 20  # bytes of progress waiting to be sent; past it, refused
STREAM_LOCK_NS = 0x64656169  # "deai": the advisory locks' first key, for claimed streams
# Whether some session holds the claim of a stream (two-key advisory locks: objsubid 2).
STREAM_CLAIMED_SQL = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
    "AND classid = :ns AND objid = :key AND objsubid = 2)")


def stream_key(task_id: str) -> int:
    """The second key of the advisory lock that claims ``task_id``'s stream (31 bits, so
    that the lock's signed int4 and pg_locks' unsigned oid read the same)."""
    return int.from_bytes(hashlib.sha256(task_id.encode()).digest()[:4], "big") & 0x7FFFFFFF


class Notifier:
    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._providers: dict[str, asyncio.Event] = {}
        self._match = asyncio.Event()
        self._listeners: set[asyncio.Queue[int]] = set()
        self._results: dict[str, asyncio.Event] = {}
        self.closing = False
        # The PostgreSQL bridge (None until ``connect``).
        self.origin = secrets.token_hex(6)
        self._url: str | None = None
        self._dirty: asyncio.Event | None = None
        self._out: dict[str, Any] = {"kick": False, "pub": False, "wake": set(), "res": set(),
                                       "prov": set(), "prog": []}
        self._prog_pending = 0  # bytes in ``_out["prog"]``
        self._streams: set[str] = set()  # tasks streamed here, claimed in PostgreSQL
        self._claims_dirty: asyncio.Event | None = None
        self._bridge: list[asyncio.Task[None]] = []
        self.sent = 0  # notifications sent and received from other replicas
        self.received = 0
        self.listening = asyncio.Event()
        # Called with the providers another replica woke (its leases) or changed (its
        # commits): the providers' index re-reads them (``provider_index``).
        self.on_remote_wake: list[Callable[[list[str]], None]] = []
        self.on_remote_change: list[Callable[[list[str]], None]] = []
        # Called with (task, pieces) of progress another replica forwarded (``relay``).
        self.on_remote_progress: list[Callable[[str, list[Any]], None]] = []

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def _call(self, fn, *args) -> None:  # type: ignore[no-untyped-def]
        if self.loop is None or self.loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            fn(*args)
        else:
            with contextlib.suppress(RuntimeError):
                self.loop.call_soon_threadsafe(fn, *args)

    def wake(self, provider_ids: Iterable[str]) -> None:
        ids = list(provider_ids)
        if ids:
            self._call(self._wake_out, ids)

    def _wake_out(self, ids: list[str]) -> None:
        self._wake(ids)
        self._send("wake", ids)

    def _wake(self, ids: Iterable[str]) -> None:
        for pid in ids:
            self._providers.setdefault(pid, asyncio.Event()).set()

    def close(self) -> None:
        """Shutting down: release every long-poll so the server can stop at once."""
        self.closing = True
        self._call(self._release)

    def _release(self) -> None:
        for ev in (*self._providers.values(), *self._results.values()):
            ev.set()
        for q in list(self._listeners):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(0)

    def kick(self) -> None:
        """Ask the matcher (on whichever replica leads) to run now rather than at its tick."""
        self._call(self._kick_out)

    def _kick_out(self) -> None:
        self._match.set()
        self._send("kick")

    async def wait_provider(self, provider_id: str, timeout: float) -> bool:
        """Wait for a wake-up of this provider; whether one came (not the timeout)."""
        ev = self._providers.setdefault(provider_id, asyncio.Event())
        woken = True
        try:
            await asyncio.wait_for(ev.wait(), timeout)
        except TimeoutError:
            woken = False
        ev.clear()
        return woken

    async def wait_match(self, timeout: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._match.wait(), timeout)
        self._match.clear()

    # Event listeners (server-sent events) get the id of each new event row.
    def subscribe(self) -> asyncio.Queue[int]:
        q: asyncio.Queue[int] = asyncio.Queue(maxsize=1000)
        self._listeners.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue[int]) -> None:
        self._listeners.discard(q)

    def published(self) -> None:
        self._call(self._publish_out)

    def _publish_out(self) -> None:
        self._publish()
        self._send("pub")

    def _publish(self) -> None:
        for q in list(self._listeners):
            with contextlib.suppress(asyncio.QueueFull):
                q.put_nowait(1)

    # Result waiters (the /v1 gateway) wait on a task id for its first submitted output.
    def watch_result(self, task_id: str) -> asyncio.Event:
        """Register interest in ``task_id`` (on the event loop) before checking the database."""
        return self._results.setdefault(task_id, asyncio.Event())

    def unwatch_result(self, task_id: str) -> None:
        self._results.pop(task_id, None)

    def providers_changed(self, provider_ids: Iterable[str]) -> None:
        """These providers' rows changed here (any thread): other replicas' indexes
        re-read them (``provider_index``). Nothing to do locally."""
        ids = list(provider_ids)
        if ids:
            self._call(self._send, "prov", ids)

    def result_arrived(self, task_id: str) -> None:
        """An assignment of ``task_id`` has a result (any thread); wakes only its watchers."""
        self._call(self._result_out, task_id)

    def _result_out(self, task_id: str) -> None:
        self._result(task_id)
        self._send("res", [task_id])

    def _result(self, task_id: str) -> None:
        ev = self._results.get(task_id)
        if ev is not None:
            ev.set()

    # --- progress of streamed answers (on the event loop) ----------------------------------

    @property
    def bridged(self) -> bool:
        """Whether other replicas may exist (PostgreSQL): a stream may be held elsewhere."""
        return self._dirty is not None

    def claim_stream(self, task_id: str) -> None:
        """This replica streams ``task_id``'s answer: claim it where others can read it."""
        self._streams.add(task_id)
        if self._claims_dirty is not None:
            self._claims_dirty.set()

    def release_stream(self, task_id: str) -> None:
        self._streams.discard(task_id)
        if self._claims_dirty is not None:
            self._claims_dirty.set()

    def forward_progress(self, task_id: str, pieces: list[list[Any]]) -> bool:
        """Send progress ``pieces`` (JSON lists, each small: ``relay`` cuts them) of
        ``task_id`` to the replica streaming it, in order, in notifications under the
        payload limit. False, sending nothing, when not bridged or too much is waiting."""
        if self._dirty is None:
            return False
        head = len(json.dumps({"o": self.origin, "k": "prog", "t": task_id, "ev": []}))
        msgs: list[str] = []
        chunk: list[list[Any]] = []
        size = head
        for piece in pieces:
            n = len(json.dumps(piece)) + 2
            if chunk and size + n > PAYLOAD_MAX:
                msgs.append(json.dumps({"o": self.origin, "k": "prog", "t": task_id,
                                        "ev": chunk}))
                chunk, size = [], head
            chunk.append(piece)
            size += n
        if chunk:
            msgs.append(json.dumps({"o": self.origin, "k": "prog", "t": task_id, "ev": chunk}))
        total = sum(len(m) for m in msgs)
        if self._prog_pending + total > PROGRESS_PENDING_MAX:
            return False
        self._prog_pending += total
        self._out["prog"].extend(msgs)
        self._dirty.set()
        return True

    async def _claimer(self) -> None:
        """Hold a shared advisory lock per task streamed here, on a connection of its own:
        a replica that dies or loses the connection stops claiming at once."""
        from deai.coordinator.leader import connect

        assert self._url is not None and self._claims_dirty is not None
        conn = None
        held: set[str] = set()
        try:
            while True:
                await self._claims_dirty.wait()
                self._claims_dirty.clear()
                try:
                    if conn is None or conn.closed:
                        conn, held = await connect(self._url, "deai-streams"), set()
                    for t in sorted(self._streams - held):
                        await conn.execute("SELECT pg_try_advisory_lock_shared(%s, %s)",
                                           (STREAM_LOCK_NS, stream_key(t)))
                        held.add(t)
                    for t in sorted(held - self._streams):
                        await conn.execute("SELECT pg_advisory_unlock_shared(%s, %s)",
                                           (STREAM_LOCK_NS, stream_key(t)))
                        held.discard(t)
                except (OSError, psycopg.Error) as exc:
                    log.warning("stream claims lost (%s); claiming again", exc)
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            await conn.close()
                    conn = None
                    await asyncio.sleep(0.5)
                    self._claims_dirty.set()
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()

    # --- the PostgreSQL bridge (on the event loop) ------------------------------------------

    async def connect(self, url: str) -> None:
        """Bridge this replica to the others on the same PostgreSQL; no-op on SQLite."""
        if url.startswith("sqlite") or self._bridge:
            return
        self._url, self._dirty, self._claims_dirty = url, asyncio.Event(), asyncio.Event()
        if self._streams:
            self._claims_dirty.set()
        self._bridge = [asyncio.create_task(self._listen(), name="notify-listen"),
                        asyncio.create_task(self._sender(), name="notify-send"),
                        asyncio.create_task(self._claimer(), name="notify-claims")]

    async def disconnect(self) -> None:
        tasks, self._bridge = self._bridge, []
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._dirty = self._claims_dirty = None

    def _send(self, kind: str, ids: Iterable[str] = ()) -> None:
        if self._dirty is None:
            return
        if kind in ("kick", "pub"):
            self._out[kind] = True
        else:
            self._out[kind].update(ids)
        self._dirty.set()

    def _drain(self) -> list[str]:
        out, self._out = self._out, {"kick": False, "pub": False, "wake": set(), "res": set(),
                                       "prov": set(), "prog": []}
        self._prog_pending = 0
        msgs = [json.dumps({"o": self.origin, "k": k}) for k in ("kick", "pub") if out[k]]
        for kind in ("wake", "res", "prov"):
            chunk: list[str] = []
            size = 0
            for i in sorted(out[kind]):
                if size + len(i) + 4 > PAYLOAD_MAX and chunk:
                    msgs.append(json.dumps({"o": self.origin, "k": kind, "ids": chunk}))
                    chunk, size = [], 0
                chunk.append(i)
                size += len(i) + 4
            if chunk:
                msgs.append(json.dumps({"o": self.origin, "k": kind, "ids": chunk}))
        prog: list[str] = out["prog"]
        return msgs + prog  # in the order forwarded

    async def _sender(self) -> None:
        from deai.coordinator.leader import connect

        assert self._url is not None and self._dirty is not None
        conn = None
        try:
            while True:
                await self._dirty.wait()
                self._dirty.clear()
                msgs = self._drain()
                try:
                    if conn is None or conn.closed:
                        conn = await connect(self._url, "deai-notify")
                    for m in msgs:
                        await conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, m))
                        self.sent += 1
                except (OSError, psycopg.Error) as exc:  # hints only: see the docstring
                    log.warning("NOTIFY failed (%s); dropping %d hints", exc, len(msgs))
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            await conn.close()
                    conn = None
                    await asyncio.sleep(0.5)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()

    async def _listen(self) -> None:
        from deai.coordinator.leader import connect

        assert self._url is not None
        first = True
        while True:
            conn = None
            try:
                conn = await connect(self._url, "deai-listen")
                await conn.execute(f"LISTEN {CHANNEL}")
                if not first:  # we may have missed signals while away
                    self._match.set()
                    self._release_soft()
                first = False
                self.listening.set()
                async for n in conn.notifies():
                    self._apply(n.payload)
            except (OSError, psycopg.Error) as exc:
                log.warning("LISTEN connection lost (%s); reconnecting", exc)
            finally:
                self.listening.clear()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
            await asyncio.sleep(1.0)

    def _release_soft(self) -> None:
        """Wake every local waiter once (they re-check the database)."""
        for ev in (*self._providers.values(), *self._results.values()):
            ev.set()
        self._publish()

    def _apply(self, payload: str) -> None:
        try:
            msg = json.loads(payload)
        except ValueError:
            return
        if not isinstance(msg, dict) or msg.get("o") == self.origin:
            return
        self.received += 1
        kind, ids = msg.get("k"), msg.get("ids") or []
        if kind == "kick":
            self._match.set()
        elif kind == "pub":
            self._publish()
        elif kind == "wake":  # another replica leased to these providers
            woken = [str(i) for i in ids]
            self._wake(woken)
            for fn in self.on_remote_wake:
                fn(woken)
        elif kind == "res":
            for i in ids:
                self._result(str(i))
        elif kind == "prov":  # another replica changed these providers
            for fn in self.on_remote_change:
                fn([str(i) for i in ids])
        elif kind == "prog":  # progress of a task, posted to another replica
            task, pieces = msg.get("t"), msg.get("ev")
            if isinstance(task, str) and isinstance(pieces, list):
                for take in self.on_remote_progress:
                    take(task, pieces)
