"""Progress from a running task to the caller streaming its answer, on any replica.

A provider running a task whose payload asks to stream posts what it has so
far (``POST /api/assignments/{id}/progress``, signed, ``{"events": [{"text":
delta, "index": choice, "n": number}, ...]}``); the relay hands the events to the
/v1 response waiting on that task. Nothing is stored: progress is a courtesy to an
open connection, and the result the provider submits afterwards stays the only
record. Only the task's primary, posting under its own key, is relayed.

Replicas: the stream lives in the memory of the replica the caller is connected to,
which claims it in PostgreSQL while it streams (``Notifier.claim_stream``). A post to
another replica is forwarded there through LISTEN/NOTIFY (``Notifier.forward_progress``:
each event cut into pieces of at most ``PIECE_CHARS`` characters, in order), at most
``FORWARD_RATE`` bytes a second per task after a burst of ``FORWARD_BURST``, and at most
``PROVIDER_RATE`` a second per provider after ``PROVIDER_BURST`` (over all its tasks), so
one provider cannot flood every replica. ``{"listening": true}`` means the events were
handed to the stream here or forwarded to the replica claiming it; ``false`` means they
were delivered nowhere (not the primary, nobody streams the task, or over the bound), so
a provider may keep them and ask again later with an empty post. A canary's lease is
answered ``true`` (its events dropped) when its source was a /v1 request whose caller
streamed (an ``ApiKeyJob`` of source ``request`` whose shard asks to stream: the gateway
writes ``"stream": true`` only for a streamed request), as that request's primary was;
a ``false`` there would tell its provider it holds a canary before it does the work.
Any other canary is answered ``false``, as its source's primary was: a chat job sent
through /api/jobs or a /v1 batch keeps ``"stream": true`` in its lines, but nobody
streams it.

Order: an event's ``n`` (0, 1, ... in the order the provider posted them) lets the
stream put back in order what reached it through different replicas; an event is
relayed once those before it were, a repeated number is dropped, and a stream whose gap
never fills (a notification lost) holds at most ``HOLD_MAX`` (an event's text plus
``EVENT_COST`` for each event held: only its index and text are kept), and takes no ``n``
more than ``AHEAD_MAX`` past the next it waits for; past either it relays no more deltas:
the recorded result ends the answer. Events without ``n`` (older agents)
are relayed as they arrive.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from pydantic import Field
from sqlalchemy import select, text
from starlette.concurrency import run_in_threadpool

from deai.coordinator import notifier as nt
from deai.coordinator.auth import coordinator, signer
from deai.coordinator.service import Coordinator
from deai.core import wire
from deai.core.lifecycle import AssignmentStatus, Role
from deai.store.models import ApiKeyJob, Assignment, Canary, Task

Event = dict[str, Any]

PIECE_CHARS = 500  # characters of text per forwarded piece: <= 6,000 bytes of JSON
FORWARD_RATE = 64 * 1024  # bytes a second a task's progress may be forwarded at, on average
FORWARD_BURST = 256 * 1024  # ... and at once (a provider's backlog after a pause)
PROVIDER_RATE = 4 * FORWARD_RATE  # ... and a provider's, over all its tasks
PROVIDER_BURST = 4 * FORWARD_BURST
HOLD_MAX = 1 << 20  # characters a stream holds waiting for a gap in ``n`` to fill ...
EVENT_COST = 64  # ... counting this many for each event held, on top of its text
STREAM_CHARS_PER_TOKEN = 128  # what a stream may relay per token asked for, counted as
# ``_cost``: an event a token (``EVENT_COST``) and its text (a few characters; a run of
STREAM_MIN = 1 << 16  # spaces, a few dozen), at least this,
STREAM_MAX = 1 << 22  # at most this (16 choices of 2,048 tokens): ``budget``
AHEAD_MAX = 4096  # the furthest an event's ``n`` may run past the next one expected
ROUTE_TTL = 2.0  # seconds a progress route is trusted before its lease is read again
UNCLAIMED_TTL = 0.5  # ... a route whose task nobody streamed yet (a stream opening)
SWEEP_S = 30.0  # routes and rate buckets idle this long are forgotten


class ProgressIn(wire.In):
    events: list[dict[str, Any]] = Field(max_length=4096)


class ProgressOut(wire.Out):
    listening: bool


def _number(value: Any) -> int | None:
    """An event's ``n``, or None where it has none usable (not a non-negative integer)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def pieces(events: list[Event]) -> list[list[Any]]:
    """``events`` as forwarded: ``[n, index, text, more]`` each, only what a stream reads
    (``routes._relayable`` judges the index), the text cut into pieces of at most
    ``PIECE_CHARS`` characters; ``more`` is 1 on every piece of an event but its last."""
    out: list[list[Any]] = []
    for e in events:
        n, index, body = _number(e.get("n")), e.get("index", 0), e.get("text")
        if not isinstance(index, int) or isinstance(index, bool):
            index = -1
        body = body if isinstance(body, str) else ""
        cuts = [body[i:i + PIECE_CHARS] for i in range(0, len(body), PIECE_CHARS)] or [""]
        out += [[n, index, cut, int(k < len(cuts) - 1)] for k, cut in enumerate(cuts)]
    return out


def _slim(event: Event) -> Event:
    """What a stream reads of an event (``routes._relayable``): its index and text, an
    integer and a string (anything else is what ``pieces`` makes of it: -1 and ""). A
    list in place of the text was kept whole and counted as empty: megabytes held for
    the 64 an event costs."""
    index, text_ = event.get("index", 0), event.get("text")
    if not isinstance(index, int) or isinstance(index, bool):
        index = -1
    return {"index": index, "text": text_ if isinstance(text_, str) else ""}


def _cost(event: Event) -> int:
    text_ = event.get("text")
    return EVENT_COST + (len(text_) if isinstance(text_, str) else 0)


def budget(max_tokens: int, choices: int) -> int:
    """What one stream may relay in all (``STREAM_CHARS_PER_TOKEN`` a token asked for, at
    least ``STREAM_MIN``, at most ``STREAM_MAX``), counted as ``HOLD_MAX`` counts."""
    return min(STREAM_MAX, max(STREAM_MIN, STREAM_CHARS_PER_TOKEN * max_tokens * choices))


class _Stream:
    """One open stream: its queue, and the events held until their turn (``n``)."""

    def __init__(self, room: int = STREAM_MAX) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.room = room  # what may still be queued (``budget``), counted as ``_cost``
        self.next = 0  # the number of the next event to relay
        self.held: dict[int, list[Event]] = {}
        self.whole: set[int] = set()  # held events whose last piece came
        self.held_chars = 0
        self.broken = False  # a gap never filled, or over its budget: relays nothing more

    def _queue(self, event: Event) -> None:
        """Relay ``event``; past the stream's budget, break it instead (the recorded
        result ends the answer): a provider posting text its request never asked for,
        to a caller that stopped reading, grew the queue without end."""
        self.room -= _cost(event)
        if self.room < 0:
            self.broken, self.held, self.whole, self.held_chars = True, {}, set(), 0
            return
        self.queue.put_nowait(event)

    def take(self, n: int | None, event: Event, more: bool = False) -> None:
        if self.broken:
            return
        event = _slim(event)
        if n is None:
            self._queue(event)
            return
        if n < self.next or n in self.whole:
            return  # relayed, or held whole, already: a repeat
        if n - self.next > AHEAD_MAX:  # numbers no provider posting in order reaches
            self.broken, self.held, self.whole, self.held_chars = True, {}, set(), 0
            return
        self.held.setdefault(n, []).append(event)
        self.held_chars += _cost(event)
        if not more:
            self.whole.add(n)
        while self.next in self.whole and not self.broken:
            self.whole.discard(self.next)
            for e in self.held.pop(self.next):
                self.held_chars -= _cost(e)
                self._queue(e)
            self.next += 1
        if self.held_chars > HOLD_MAX:
            self.broken, self.held, self.whole, self.held_chars = True, {}, set(), 0


class Relay:
    def __init__(self, notifier: nt.Notifier | None = None) -> None:
        self.notifier = notifier
        self._streams: dict[str, _Stream] = {}
        # assignment -> ((task, provider) while its lease is live, whether another replica
        # streams that task, when that was read)
        self.routes: dict[str, tuple[tuple[str, str] | None, bool, float]] = {}
        # task, or ("p", provider) -> (bytes allowed, when)
        self._buckets: dict[Any, tuple[float, float]] = {}
        self._swept = time.monotonic()
        if notifier is not None:
            notifier.on_remote_progress.append(self.take_remote)

    def open(self, task_id: str, room: int = STREAM_MAX) -> asyncio.Queue[Event]:
        """The queue of the task's stream, which relays at most ``room`` (``budget``)."""
        if task_id not in self._streams:
            self._streams[task_id] = _Stream(room)
            if self.notifier is not None:
                self.notifier.claim_stream(task_id)
        return self._streams[task_id].queue

    def close(self, task_id: str) -> None:
        if self._streams.pop(task_id, None) is not None and self.notifier is not None:
            self.notifier.release_stream(task_id)
        for a, (route, _, _) in list(self.routes.items()):
            if route is None or route[0] == task_id:
                self.routes.pop(a, None)

    def streaming(self) -> bool:
        return bool(self._streams)

    def holds(self, task_id: str) -> bool:
        return task_id in self._streams

    def push(self, task_id: str, events: list[Event]) -> bool:
        """Events posted here for a stream held here; False if it is not (or relays no
        more)."""
        s = self._streams.get(task_id)
        if s is None:
            return False
        for e in events:
            s.take(_number(e.get("n")), e)
        return not s.broken

    def take_remote(self, task_id: str, got: list[Any]) -> None:
        """Pieces another replica forwarded (``pieces``); ignored unless streamed here."""
        s = self._streams.get(task_id)
        if s is None:
            return
        for p in got:
            if (isinstance(p, list) and len(p) == 4 and isinstance(p[2], str)
                    and isinstance(p[1], int) and not isinstance(p[1], bool)
                    and p[3] in (0, 1)):
                s.take(_number(p[0]), {"index": p[1], "text": p[2]}, bool(p[3]))

    def forward(self, task_id: str, events: list[Event], now: float,
                provider: str = "") -> bool:
        """Forward events to the replica streaming ``task_id``, within the task's rate and
        its provider's."""
        if self.notifier is None:
            return False
        got = pieces(events)
        size = sum(len(json.dumps(p)) for p in got)
        keys = ((task_id, FORWARD_RATE, FORWARD_BURST),
                (("p", provider), PROVIDER_RATE, PROVIDER_BURST))
        allowed = {}
        for key, rate, burst in keys:
            left, at = self._buckets.get(key, (float(burst), now))
            allowed[key] = min(float(burst), left + (now - at) * rate)
        if any(v < 0 for v in allowed.values()):  # over a rate: refused, so the provider
            for key, v in allowed.items():  # keeps them for later
                self._buckets[key] = (v, now)
            return False
        for key, v in allowed.items():
            self._buckets[key] = (v - size, now)
        return self.notifier.forward_progress(task_id, got)

    def sweep(self, now: float) -> None:
        """Forget routes and buckets of tasks that went quiet (streamed elsewhere: no
        ``close`` here ever drops them)."""
        if now - self._swept < SWEEP_S:
            return
        self._swept = now
        for a, (_, _, read_at) in list(self.routes.items()):
            if now - read_at > SWEEP_S:
                self.routes.pop(a, None)
        for t, (_, at) in list(self._buckets.items()):
            if now - at > SWEEP_S:
                self._buckets.pop(t, None)


def _route(c: Coordinator, assignment_id: str) -> tuple[tuple[str, str] | None, bool]:
    """(task, provider) of the assignment while it is a live primary lease, and whether a
    replica (another, if the stream is not here) claims that task's stream; for a live
    canary lease copied from a streamed /v1 request, ("", provider) and True (a sink)."""
    with c.db.read() as s:
        row = s.execute(select(Assignment.task_id, Assignment.provider_id, Assignment.role,
                               Task.input_digest).join(Task, Task.id == Assignment.task_id)
                        .where(Assignment.id == assignment_id,
                               Assignment.role.in_((Role.PRIMARY, Role.CANARY)),
                               Assignment.status == AssignmentStatus.LEASED)).first()
        if row is None:
            return None, False
        if row.role == Role.CANARY:
            heard = _streamed_source(s, row.input_digest) and _streams(c, row.input_digest)
            return (("", row.provider_id), True) if heard else (None, False)
        claimed = c.notifier.bridged and bool(s.execute(
            text(nt.STREAM_CLAIMED_SQL),
            {"ns": nt.STREAM_LOCK_NS, "key": nt.stream_key(row.task_id)}).scalar())
    return (row.task_id, row.provider_id), claimed


def _streamed_source(s: Any, digest: str | None) -> bool:
    """Whether a canary of input ``digest`` was copied from a /v1 request (an
    ``ApiKeyJob`` of source ``request``, not a batch nor an /api/jobs job): only there
    did a caller stream the source, if its shard asks to (``_streams``)."""
    return digest is not None and s.scalar(
        select(ApiKeyJob.job_id).join(Task, Task.job_id == ApiKeyJob.job_id)
        .join(Canary, Canary.source_task == Task.id)
        .where(Canary.input_digest == digest, ApiKeyJob.source == "request")
        .limit(1)) is not None


def _streams(c: Coordinator, digest: str | None) -> bool:
    """Whether a chat shard asks to stream (a line with ``"stream": true``)."""
    try:
        data = c.blobs.get(digest) if digest else b""
        return any(isinstance(o := json.loads(line), dict) and o.get("stream") is True
                   for line in data.splitlines() if line.strip())
    except (OSError, ValueError):
        return False


router = APIRouter(prefix="/api")


async def relay_of(request: Request) -> Relay:
    r: Relay = request.app.state.relay
    return r


@router.post("/assignments/{assignment_id}/progress", response_model=ProgressOut)
async def progress(assignment_id: str, body: ProgressIn,
                   c: Annotated[Coordinator, Depends(coordinator)],
                   me: Annotated[str, Depends(signer)],
                   relay: Annotated[Relay, Depends(relay_of)]) -> ProgressOut:
    now = time.monotonic()
    relay.sweep(now)
    route, claimed, read_at = relay.routes.get(assignment_id, (None, False, -ROUTE_TTL))
    ttl = ROUTE_TTL if route is None or claimed or relay.holds(route[0]) else UNCLAIMED_TTL
    if now - read_at >= ttl:  # read again now and then: a lease that ended (the task
        # placed again, streaming to the same caller) must not keep its voice
        route, claimed = await run_in_threadpool(_route, c, assignment_id)
        relay.routes[assignment_id] = (route, claimed, now)
    if route is None or route[1] != me:
        return ProgressOut(listening=False)
    if not route[0]:  # a canary's: heard as a real request's would be, and dropped
        return ProgressOut(listening=True)
    if relay.holds(route[0]):
        return ProgressOut(listening=relay.push(route[0], body.events))
    return ProgressOut(listening=claimed and relay.forward(route[0], body.events, now, me))
