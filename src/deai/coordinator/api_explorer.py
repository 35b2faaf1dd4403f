"""Read endpoints for the explorer and the CLI, the live event stream, and the page itself.

Everything here reads; nothing needs a signature, so everything here is public
(``coordinator.public``): no spec, output digest or error text of a job, and
event bodies through the allow-list of their kind. ``/api/events/stream`` is a
server-sent-events stream of event rows: it resumes after ``Last-Event-ID`` (or
``?after=``), sends a comment every ``heartbeat`` seconds so proxies keep it
open, and ends as soon as the coordinator starts shutting down.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Header, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from deai.coordinator import explorer_views as views
from deai.coordinator.auth import coordinator
from deai.coordinator.service import Coordinator
from deai.core import wire
from deai.core import wire_explorer as wx
from deai.core.errors import InvalidInput

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


@router.get("/explorer/overview", response_model=wx.OverviewOut)
def overview(c: C, window: Annotated[float, Query(ge=60, le=86_400)] = 600.0,
             price_window: Annotated[float, Query(ge=60, le=30 * 86_400)] = 3600.0,
             ) -> wx.OverviewOut:
    """Network totals, throughput over ``window`` seconds and prices over ``price_window``."""
    return views.overview(c, window, price_window)


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
                             "description": "one `data:` line per event row (JSON)"}})
async def stream(c: C, after: Annotated[int | None, Query(ge=0, le=MAX_ID)] = None,
                 heartbeat: Annotated[float, Query(ge=0.5, le=60)] = 15.0,
                 kind: Kinds = None,
                 last_event_id: Annotated[str | None, Header(max_length=32)] = None,
                 ) -> StreamingResponse:
    """Server-sent events: every new event row as JSON, with its id as the SSE id.

    Starts after ``Last-Event-ID`` or ``after`` if given, else at the newest event."""
    start = _resume_point(after, last_event_id)
    if start is None:
        start = await run_in_threadpool(views.latest_event_id, c)
    return StreamingResponse(_events(c, start, heartbeat, kind), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _events(c: Coordinator, start: int, heartbeat: float,
                  kinds: list[str] | None) -> AsyncIterator[str]:
    notifier = c.notifier
    wakeups = notifier.subscribe()
    sent: deque[int] = deque(maxlen=4 * LOOKBACK)
    cursor = start
    try:
        yield f"retry: 2000\n: resuming after {start}\n\n"
        while not notifier.closing:
            before = cursor
            page = await run_in_threadpool(views.events_after, c, max(start, cursor - LOOKBACK),
                                           BATCH, kinds)
            for e in page.events:
                if e.id in sent:
                    continue
                sent.append(e.id)
                cursor = max(cursor, e.id)
                yield f"id: {e.id}\ndata: {json.dumps(e.model_dump(), default=str)}\n\n"
            # Past what it searched, sent or sealed: a run of sealed events is skipped,
            # not re-read until its window closes.
            cursor = max(cursor, page.next_after)
            if cursor > before and page.next_after < page.last_id:
                continue
            try:
                await asyncio.wait_for(wakeups.get(), heartbeat)
            except TimeoutError:
                yield ": heartbeat\n\n"
            while not wakeups.empty():
                wakeups.get_nowait()
    finally:
        notifier.unsubscribe(wakeups)


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
