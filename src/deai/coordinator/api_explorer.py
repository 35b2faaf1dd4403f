"""Read endpoints for the explorer and the CLI, the live event stream, and the page itself.

Everything here reads; nothing needs a signature, so everything here is public
(``coordinator.public``): no spec, output digest or error text of a job, and
event bodies through the allow-list of their kind. ``/api/events/stream`` is a
server-sent-events stream of event rows: it resumes after ``Last-Event-ID`` (or
``?after=``), sends a comment every ``heartbeat`` seconds so proxies keep it
open, and ends as soon as the coordinator starts shutting down, or after
``STREAM_LIFETIME_S`` (less up to a quarter, at random, so streams opened together do
not all come back together). One ``Hub`` per coordinator reads new events for every
stream; if its reader stops while streams are open, they end too, and their clients
resume with ``Last-Event-ID`` rather than miss what no reader read. Streams are capped
per client address (``public_reads.address_of``: an IPv6 one by its /64) and in all:
over a cap, the answer is still 200 ``text/event-stream``, a ``retry: 10000`` line and
the end, since a browser's ``EventSource`` never retries a 429 or 503 but does retry a
stream that ended. The overview is shared by its callers for a few seconds
(``public_reads``).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
import weakref
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from deai.coordinator import explorer_views as views
from deai.coordinator.auth import coordinator
from deai.coordinator.public_reads import Shared, address_of, shared_read
from deai.coordinator.service import Coordinator
from deai.core import wire
from deai.core import wire_explorer as wx
from deai.core.errors import InvalidInput

log = logging.getLogger("deai.coordinator.events")
router = APIRouter(prefix="/api")
page = APIRouter()
C = Annotated[Coordinator, Depends(coordinator)]
Limit = Annotated[int, Query(ge=1, le=500)]
# Cursors within their column's range: a larger one is bad input, not a 500 from the database.
MAX_SEQ = 2**63 - 1  # journal.seq is a BIGINT
MAX_ID = 2**31 - 1  # events.id is an INTEGER
After = Annotated[int, Query(ge=0, le=MAX_ID)]
EventBefore = Annotated[int | None, Query(ge=1, le=MAX_ID)]
SeqBefore = Annotated[int | None, Query(ge=1, le=MAX_SEQ)]
Kinds = Annotated[list[str] | None, Query(max_length=32)]
Id = Annotated[str, PathParam(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9_.:-]+$")]

EXPLORER_DIR = Path(__file__).resolve().parents[1] / "explorer"
CHART_JS = EXPLORER_DIR / "node_modules" / "chart.js" / "dist" / "chart.umd.min.js"
BATCH = 500
LOOKBACK = 64  # PostgreSQL can commit a lower event id after a higher one


# The windows an overview is computed for: one asked is widened to the next of these, so
# a caller varying them cannot make each request a computation of its own (every pair
# fits in ``OVERVIEW``).
WINDOWS = (60.0, 600.0, 3_600.0, 21_600.0, 86_400.0)
PRICE_WINDOWS = (600.0, 3_600.0, 86_400.0, 7 * 86_400.0, 30 * 86_400.0)
OVERVIEW: Shared[wx.OverviewOut] = Shared(ttl=3.0, keys=len(WINDOWS) * len(PRICE_WINDOWS))


def snap(asked: float, allowed: tuple[float, ...]) -> float:
    """The smallest allowed window that covers ``asked`` (the largest, past them all)."""
    return next((w for w in allowed if w >= asked), allowed[-1])


@router.get("/explorer/overview", response_model=wx.OverviewOut)
async def overview(c: C, request: Request,
                   window: Annotated[float, Query(ge=60, le=86_400)] = 600.0,
                   price_window: Annotated[float, Query(ge=60, le=30 * 86_400)] = 3600.0,
                   ) -> wx.OverviewOut:
    """Network totals, throughput over ``window`` seconds and prices over ``price_window``
    (each widened to the next of ``WINDOWS``, ``PRICE_WINDOWS``): computed once for every
    caller asking meanwhile, and kept a few seconds while no new event is written
    (``public_reads.shared_read``)."""
    w, pw = snap(window, WINDOWS), snap(price_window, PRICE_WINDOWS)
    return await shared_read(request, OVERVIEW, c, (w, pw),
                             lambda: views.overview(c, w, pw),
                             lambda: views.latest_event_id(c))


@router.get("/explorer/providers/{provider_id}", response_model=wx.ProviderDetailOut)
def provider_detail(provider_id: Id, c: C, limit: Limit = 50) -> wx.ProviderDetailOut:
    """A provider with its balance, earnings, latest assignments and verification history."""
    return views.provider_detail(c, provider_id, limit)


@router.get("/explorer/jobs", response_model=dict[str, list[wire.JobOut]])
def job_list(c: C, limit: Limit = 50) -> dict[str, list[wire.JobOut]]:
    """The latest jobs of every owner, newest first: status, counts and money only."""
    return {"jobs": views.job_list(c, limit)}


@router.get("/explorer/jobs/{job_id}", response_model=wx.JobDetailOut)
def job_detail(job_id: Id, c: C) -> wx.JobDetailOut:
    """A job with the state of each shard, its providers and its latest assignments."""
    return views.job_detail(c, job_id)


@router.get("/explorer/verification", response_model=wx.EventsOut)
def verification(c: C, limit: Limit = 100, before: EventBefore = None) -> wx.EventsOut:
    """Checks, verdicts and slashes, newest first (``before``: an event id, to page back)."""
    return views.verification(c, limit, before)


@router.get("/explorer/leases", response_model=wx.LeasesOut)
def leases(c: C, limit: Limit = 50) -> wx.LeasesOut:
    return views.leases_view(c, limit)


@router.get("/explorer/ledger", response_model=wx.LedgerOut)
def ledger(c: C, limit: Limit = 50, before: SeqBefore = None) -> wx.LedgerOut:
    """The journal's latest entries, newest first, its head, supply and the last audit."""
    return views.ledger_view(c, limit, before)


@router.get("/explorer/audit", response_model=wx.AuditRun | None)
def last_audit(c: C) -> wx.AuditRun | None:
    """The latest audit this coordinator ran, or null if none has run since it started."""
    return views.AUDITS.latest(c)


@router.post("/explorer/audit", response_model=wx.AuditRun)
def run_audit(c: C) -> wx.AuditRun:
    """Replay the journal now and keep the result (concurrent callers share one replay)."""
    return views.AUDITS.run(c)


@router.get("/explorer/accounts/{account}", response_model=wx.AccountOut)
def account(account: Id, c: C, limit: Limit = 100,
            before: SeqBefore = None) -> wx.AccountOut:
    """An owner id (its spendable, pending and staked accounts) or a ledger account such as
    ``fee``, ``mint`` or ``escrow:<job>``: balances and the entries that moved them, newest
    first, searched a bounded range of the journal at a time (``searched_from``: pass it as
    ``before`` for older ones)."""
    return views.account_view(c, account, limit, before)


@router.get("/events", response_model=views.EventsPage)
def events(c: C, after: After = 0, limit: Limit = 100, kind: Kinds = None) -> views.EventsPage:
    """Public event rows with an id above ``after``, oldest first; ``kind`` filters
    (repeatable). Resume with ``after=next_after``: a page may hold fewer than ``limit``
    rows (none) while more follow, where events still sealed were skipped."""
    return views.events_page(c, after, limit, kind)


def _resume_point(after: int | None, last_event_id: str | None) -> int | None:
    if last_event_id is not None and last_event_id.strip():
        text = last_event_id.strip()
        if not text.isdigit() or len(text) > 18 or int(text) > MAX_ID:
            raise InvalidInput("Last-Event-ID: must be a non-negative integer",
                               field="Last-Event-ID")
        return int(text)
    return after


@router.get("/events/stream", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}},
                             "description": "one `data:` line per event row (JSON); over "
                                            "a cap on streams, a `retry:` line and the end"}})
async def stream(c: C, request: Request,
                 after: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
                 heartbeat: Annotated[float, Query(ge=0.5, le=60)] = 15.0,
                 kind: Kinds = None,
                 last_event_id: Annotated[str | None, Header(max_length=32)] = None,
                 ) -> StreamingResponse:
    """Server-sent events: every new event row as JSON, with its id as the SSE id.

    Starts after ``Last-Event-ID`` or ``after`` if given, else at the newest event. A
    stream ends after ``STREAM_LIFETIME_S`` (or when it falls ``RING`` events behind):
    the client reconnects with ``Last-Event-ID`` and misses nothing. Over a cap on
    streams: a ``retry:`` line and the end, so the client comes back later."""
    start = _resume_point(after, last_event_id)
    hub = _hub(c)
    try:
        sub = hub.join(c, address_of(request), set(kind) if kind else None)
    except Full as full:
        return StreamingResponse(iter([f"retry: {FULL_RETRY_MS}\n: {full}\n\n"]),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "Retry-After": str(FULL_RETRY_MS // 1000)})
    try:
        caught_up = start is None and hub.cursor is not None
        if start is None:
            start = hub.cursor if hub.cursor is not None else await run_in_threadpool(
                views.latest_event_id, c)
    except BaseException:
        hub.leave(sub)
        raise
    return StreamingResponse(_events(c, hub, sub, start, heartbeat, kind, caught_up),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                             background=BackgroundTask(hub.leave, sub))


# --- one reader of new events per coordinator, for every stream ----------------------------

MAX_STREAMS = 1_000  # open streams per coordinator; one more is told to come back later
MAX_STREAMS_PER_ADDRESS = 20  # per client address (an IPv6 /64), likewise
FULL_RETRY_MS = 10_000  # when a refused stream's client comes back
STREAM_LIFETIME_S = 900.0  # then a stream ends and its client resumes (Last-Event-ID)
RING = 4_096  # new events kept for streams that have not sent them yet
RESCAN_S = 5.0  # the reader looks for new events at least this often, woken or not


class Full(Exception):
    """A cap on streams is reached; the message says which."""


class _Sub:
    """One open stream: its kinds (None: all), address and place in the hub's ring;
    ``orphaned`` once the reader that filled its ring stopped."""

    def __init__(self, address: str, kinds: set[str] | None, seq: int) -> None:
        self.address, self.kinds, self.seq = address, kinds, seq
        self.wake = asyncio.Event()
        self.joined = True
        self.orphaned = False


class Hub:
    """Reads new public events once per publication and hands them to every stream.

    Each stream read the database itself on every publication, in the thread pool: 500
    anonymous streams cost 28 s of CPU for 20 events. The reader runs while a stream is
    open; it reads as a stream did alone (``views.events_after``, the last ``LOOKBACK``
    ids again, since PostgreSQL can commit a lower id after a higher one), so what it
    shows, and when, follows ``public.disclosed`` exactly as before. Each stream picks
    its kinds out of the ring in memory."""

    def __init__(self) -> None:
        self.ring: deque[tuple[int, wx.EventOut]] = deque(maxlen=RING)
        self.seq = 0  # the ring position of the newest event
        self.cursor: int | None = None  # None until the reader has started
        self.subs: set[_Sub] = set()
        self.per_address: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None

    def join(self, c: Coordinator, address: str, kinds: set[str] | None) -> _Sub:
        if self.per_address.get(address, 0) >= MAX_STREAMS_PER_ADDRESS:
            raise Full("too many event streams from this address; retry later")
        if len(self.subs) >= MAX_STREAMS:
            raise Full("too many event streams open; retry later")
        sub = _Sub(address, kinds, self.seq)
        self.subs.add(sub)
        self.per_address[address] = self.per_address.get(address, 0) + 1
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(c))
        return sub

    def leave(self, sub: _Sub) -> None:
        """Idempotent: called by the stream's end and by its response's."""
        if not sub.joined:
            return
        sub.joined = False
        self.subs.discard(sub)
        left = self.per_address.get(sub.address, 1) - 1
        if left > 0:
            self.per_address[sub.address] = left
        else:
            self.per_address.pop(sub.address, None)

    def behind(self, sub: _Sub) -> bool:
        """Events it has not sent have left the ring."""
        return bool(self.ring) and sub.seq < self.ring[0][0] - 1

    def new_for(self, sub: _Sub) -> list[wx.EventOut]:
        first = self.ring[0][0] if self.ring else self.seq + 1
        out = [e for _, e in itertools.islice(self.ring, max(0, sub.seq + 1 - first), None)]
        sub.seq = self.seq
        return out

    async def _run(self, c: Coordinator) -> None:
        """Holds the coordinator only while it runs (the hub is keyed by it, weakly). When
        it stops, the streams still open end (``orphaned``): a later reader starts from
        the newest event, so they would miss what came between."""
        notifier = c.notifier
        wakeups = notifier.subscribe()
        try:
            base = await self._newest(c)
            if base is None:
                return
            self.cursor = base
            seen: deque[int] = deque(maxlen=4 * LOOKBACK)
            while self.subs and not notifier.closing:
                try:
                    await self._read(c, base, seen)
                except Exception:  # the database: the streams wait, the reader tries again
                    log.exception("event stream reader failed; retrying")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wakeups.get(), RESCAN_S)
                while not wakeups.empty():
                    wakeups.get_nowait()
        finally:
            notifier.unsubscribe(wakeups)
            self.cursor = None  # a later reader starts from the newest event again
            for sub in list(self.subs):
                sub.orphaned = True
                sub.wake.set()

    async def _newest(self, c: Coordinator) -> int | None:
        """The newest event id, tried again while the database fails and a stream is
        open (None: none is, or the coordinator is shutting down)."""
        delay = 0.1
        while self.subs and not c.notifier.closing:
            try:
                return await run_in_threadpool(views.latest_event_id, c)
            except Exception:
                log.exception("event stream reader could not start; retrying")
            await asyncio.sleep(delay)
            delay = min(2 * delay, RESCAN_S)
        return None

    async def _read(self, c: Coordinator, base: int, seen: deque[int]) -> None:
        assert self.cursor is not None
        while True:
            before = self.cursor
            page = await run_in_threadpool(views.events_after, c,
                                           max(base, self.cursor - LOOKBACK), BATCH, None)
            for e in page.events:
                if e.id in seen:
                    continue
                seen.append(e.id)
                self.cursor = max(self.cursor, e.id)
                self.seq += 1
                self.ring.append((self.seq, e))
            # Past what it searched, sent or sealed: a run of sealed events is skipped,
            # not re-read until its window closes.
            self.cursor = max(self.cursor, page.next_after)
            if page.events:
                for sub in self.subs:
                    sub.wake.set()
            if not (self.cursor > before and page.next_after < page.last_id):
                return


_hubs: weakref.WeakKeyDictionary[Coordinator, Hub] = weakref.WeakKeyDictionary()


def _hub(c: Coordinator) -> Hub:
    hub = _hubs.get(c)
    if hub is None:
        hub = _hubs[c] = Hub()
    return hub


def _frame(e: wx.EventOut) -> str:
    return f"id: {e.id}\ndata: {json.dumps(e.model_dump(), default=str)}\n\n"


async def _events(c: Coordinator, hub: Hub, sub: _Sub, start: int, heartbeat: float,
                  kinds: list[str] | None, caught_up: bool) -> AsyncIterator[str]:
    """The events after ``start``: those already written read from the database as a
    stream did alone (unless ``caught_up``: it starts where the hub's reader stands),
    then the hub's, until the stream's lifetime ends."""
    notifier = c.notifier
    loop = asyncio.get_running_loop()
    ends = loop.time() + STREAM_LIFETIME_S * (1 - random.random() / 4)
    sent: deque[int] = deque(maxlen=4 * LOOKBACK)
    cursor = start
    try:
        yield f"retry: 2000\n: resuming after {start}\n\n"
        while not caught_up and not notifier.closing and loop.time() < ends:
            before = cursor
            page = await run_in_threadpool(views.events_after, c, max(start, cursor - LOOKBACK),
                                           BATCH, kinds)
            for e in page.events:
                if e.id in sent:
                    continue
                sent.append(e.id)
                cursor = max(cursor, e.id)
                yield _frame(e)
            cursor = max(cursor, page.next_after)
            caught_up = not (cursor > before and page.next_after < page.last_id)
        while sub.joined and not notifier.closing and loop.time() < ends:
            if hub.behind(sub) or sub.orphaned:
                return  # the client resumes from its last id, read from the database
            sub.wake.clear()
            for e in hub.new_for(sub):
                if e.id <= start or e.id in sent or (sub.kinds and e.kind not in sub.kinds):
                    continue
                sent.append(e.id)
                yield _frame(e)
            wait = min(heartbeat, ends - loop.time())
            try:
                await asyncio.wait_for(sub.wake.wait(), max(0.0, wait))
            except TimeoutError:
                if wait >= heartbeat:
                    yield ": heartbeat\n\n"
    finally:
        hub.leave(sub)


# --- the page ---------------------------------------------------------------------------

@page.get("/explorer/lib/chart.js", include_in_schema=False)
def chart_library() -> Response:
    """Chart.js as installed by ``make explorer``; without it, a stub that says so, so the
    page still loads (numbers and tables, no charts) and logs no error."""
    if CHART_JS.is_file():
        return FileResponse(CHART_JS, media_type="text/javascript",
                            headers={"Cache-Control": "max-age=3600"})
    return Response("window.DEAI_CHARTS_MISSING = 'run `make explorer` to install Chart.js';\n",
                    media_type="text/javascript")


def install(app: FastAPI) -> None:
    """The read API, then the page at /explorer/ (the routes above take precedence)."""
    app.include_router(router)
    app.include_router(page)
    app.mount("/explorer", StaticFiles(directory=EXPLORER_DIR, html=True), name="explorer")
