"""Prometheus metrics at ``/metrics``.

HTTP requests are counted by a small ASGI middleware, labelled with the route
template (``/api/jobs/{job_id}``), never the raw path, so labels stay few.
Everything else is derived from the store rather than counted at call sites:
each scrape tails the events table and the journal from where the previous
scrape stopped. So placements, task outcomes and durations, verification
outcomes (any ``check_passed``/``check_failed``/``verdict``/``slash`` event, as
soon as someone emits one) and ledger postings need no instrumentation in the
code that causes them, and a transaction that rolls back is never counted.
``/metrics`` is public, so the events are tailed only up to the challenge window's
horizon (what ``public.disclosed`` lets anyone read): placements, outcomes and checks
are counted once their window has closed, never while a leaseholder could watch them
move with its own result. For the same reason the job and task gauges show a result
waiting for its check as ``public.job`` does (``running``, ``assigned``).
These counters start from the network's genesis in each coordinator process;
with several replicas on one database, aggregate them with ``max``, not ``sum``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from deai.coordinator import public
from deai.coordinator.service import Coordinator
from deai.core.lifecycle import AssignmentStatus, ProviderStatus
from deai.core.wire_explorer import VERIFICATION_KINDS
from deai.store.models import Assignment, Event, Job, JournalEntry, Provider, Task

Scope = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Any]], Callable[[Any], Awaitable[None]]],
                   Awaitable[None]]

BATCH = 5000
MAX_BATCHES = 40  # bounds one scrape; the rest is read by the next
OUTCOMES = {"task_accepted": "accepted", "result_rejected": "rejected",
            "task_failed": "failed", "lease_expired": "expired",
            "lease_refused": "refused"}
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        self.requests = Counter("deai_http_requests", "HTTP requests answered",
                                ["method", "route", "status"], registry=r)
        self.latency = Histogram("deai_http_request_duration_seconds",
                                 "time to the response's headers", ["method", "route"],
                                 registry=r)
        self.placements = Counter("deai_placements", "tasks leased to a provider", registry=r)
        self.outcomes = Counter("deai_task_outcomes", "assignment outcomes", ["outcome"],
                                registry=r)
        self.durations = Histogram("deai_task_duration_seconds",
                                   "lease to accepted result, per accepted assignment",
                                   buckets=DURATION_BUCKETS, registry=r)
        self.verification = Counter("deai_verification_outcomes",
                                    "verification events by kind", ["kind"], registry=r)
        self.entries = Counter("deai_ledger_entries", "journal entries by kind", ["kind"],
                               registry=r)
        self.postings = Counter("deai_ledger_postings", "journal postings by entry kind",
                                ["kind"], registry=r)
        self.volume = Counter("deai_ledger_volume_micro",
                              "micro-units credited by postings, by entry kind", ["kind"],
                              registry=r)
        self.providers = Gauge("deai_providers", "registered providers", ["state"], registry=r)
        self.jobs = Gauge("deai_jobs", "jobs by status", ["status"], registry=r)
        self.tasks = Gauge("deai_tasks", "tasks by status", ["status"], registry=r)
        self.journal_seq = Gauge("deai_journal_seq", "the journal head's sequence number",
                                 registry=r)
        for kind in VERIFICATION_KINDS:
            self.verification.labels(kind)
        for outcome in OUTCOMES.values():
            self.outcomes.labels(outcome)
        self._lock = threading.Lock()
        self._event_id = 0
        self._journal_seq = 0

    # --- HTTP -----------------------------------------------------------------------------

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    # --- the store ------------------------------------------------------------------------

    def refresh(self, c: Coordinator) -> None:
        """Catch up with the events and journal written since the last scrape."""
        with self._lock, c.db.read() as s:
            horizon = c.now() - c.settings.challenge_window
            for _ in range(MAX_BATCHES):
                if not self._tail_events(s, horizon):
                    break
            for _ in range(MAX_BATCHES):
                if not self._tail_journal(s):
                    break
            self._gauges(c, s)

    def _tail_events(self, s: Session, horizon: float) -> bool:
        """Count the events after the last one counted, up to the first still inside its
        challenge window (the next scrape starts there)."""
        rows = s.execute(select(Event.id, Event.kind, Event.subject, Event.body, Event.ts)
                         .where(Event.id > self._event_id).order_by(Event.id)
                         .limit(BATCH)).all()
        accepted: list[tuple[str, str]] = []
        more = len(rows) == BATCH
        for eid, kind, subject, body, ts in rows:
            if ts > horizon:
                more = False
                break
            self._event_id = eid
            if kind == "task_assigned":
                self.placements.inc()
            elif kind in OUTCOMES:
                self.outcomes.labels(OUTCOMES[kind]).inc()
                if kind == "task_accepted":
                    accepted.append((subject, str((body or {}).get("provider", ""))))
            elif kind in VERIFICATION_KINDS:
                self.verification.labels(kind).inc()
        if accepted:
            wanted = set(accepted)
            for task_id, pid, leased, submitted in s.execute(
                    select(Assignment.task_id, Assignment.provider_id, Assignment.leased_at,
                           Assignment.submitted_at)
                    .where(Assignment.task_id.in_(sorted({t for t, _ in accepted})),
                           Assignment.status == AssignmentStatus.ACCEPTED)):
                if (task_id, pid) in wanted and submitted is not None:
                    self.durations.observe(max(0.0, submitted - leased))
        return more

    def _tail_journal(self, s: Session) -> bool:
        rows = s.execute(select(JournalEntry.seq, JournalEntry.kind, JournalEntry.postings)
                         .where(JournalEntry.seq > self._journal_seq)
                         .order_by(JournalEntry.seq).limit(BATCH)).all()
        for seq, kind, postings in rows:
            self._journal_seq = seq
            self.entries.labels(kind).inc()
            self.postings.labels(kind).inc(len(postings))
            credit = sum(int(d) for _, d in postings if int(d) > 0)
            if credit:
                self.volume.labels(kind).inc(credit)
        self.journal_seq.set(self._journal_seq)
        return len(rows) == BATCH

    def _gauges(self, c: Coordinator, s: Session) -> None:
        # Counted by the database (as ``Coordinator.online`` judges), not every row loaded
        since = c.now() - c.settings.heartbeat_timeout
        self.providers.labels("registered").set(s.scalar(select(func.count(Provider.id))) or 0)
        self.providers.labels("online").set(s.scalar(select(func.count(Provider.id)).where(
            Provider.status == ProviderStatus.ACTIVE, Provider.last_seen >= since)) or 0)
        for gauge, col, shown_as in ((self.jobs, Job.status, public.JOB_SHOWN_AS),
                                     (self.tasks, Task.status, public.TASK_SHOWN_AS)):
            counts = public.statuses(
                {str(k): int(n) for k, n in s.execute(select(col, func.count())
                                                      .group_by(col)).all()}, shown_as)
            known = {labels[0] for labels in _label_values(gauge)}
            for status in known | set(counts):
                gauge.labels(status).set(int(counts.get(status, 0)))


def _label_values(gauge: Gauge) -> list[tuple[str, ...]]:
    # prometheus_client keeps children keyed by label values
    return [tuple(k) for k in gauge._metrics]


class _HttpMetrics:
    """Pure ASGI (not BaseHTTPMiddleware) so streamed responses pass straight through."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        started = False

        async def send_status(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            if message["type"] == "http.response.start" and not started:
                started = True
                self.metrics.observe_request(scope["method"], _route(scope),
                                             int(message["status"]), time.perf_counter() - start)
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except Exception:
            if not started:
                self.metrics.observe_request(scope["method"], _route(scope), 500,
                                             time.perf_counter() - start)
            raise


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "<unmatched>"


def install(app: FastAPI) -> Metrics:
    """Count requests and serve ``/metrics``; the coordinator comes from ``app.state``."""
    m = Metrics()
    app.add_middleware(_HttpMetrics, metrics=m)

    @app.get("/metrics", response_class=Response, tags=["metrics"],
             responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    def metrics(request: Request) -> Response:
        """Prometheus text exposition of the coordinator's counters, histograms and gauges."""
        m.refresh(request.app.state.coordinator)
        return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)

    return m
