"""Read-only views for the explorer: each function is one snapshot read of the store.

Nothing here writes. Every view reads inside one ``db.read()`` transaction so
the numbers on a page agree with each other; aggregation that SQLite and
PostgreSQL would spell differently (time buckets, JSON filters) is done in
Python over bounded row sets. What leaves is public (``public``): event bodies
through the allow-list, jobs without their spec, outputs or error texts.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections import defaultdict
from typing import Any

from pydantic import Field
from sqlalchemy import Integer, String, and_, case, cast, func, or_, select
from sqlalchemy.orm import Session

from deai.coordinator import api_ledger, clusters, jobs, leases, public
from deai.coordinator.service import Coordinator
from deai.core import compute, ledger, wire
from deai.core import wire_explorer as wx
from deai.core.errors import NotFound
from deai.core.lifecycle import JOB_ACTIVE, SUBJECT_ROLES, AssignmentStatus, ProviderStatus
from deai.core.money import cost_for_units
from deai.store import journal
from deai.store.models import (
    Assignment,
    Event,
    Job,
    JournalEntry,
    JournalHead,
    Lease,
    LeaseHost,
    Offer,
    Payout,
    Provider,
    Task,
)
from deai.store.models_clusters import Cluster

BUCKETS = 60
MAX_PRICE_ROWS = 50_000
MAX_SHARDS = 20_000
FINISHED = ("completed", "failed", "cancelled")
SUBJECTS = tuple(r.value for r in SUBJECT_ROLES)  # whose result a verdict can overturn


def event_out(e: Event, horizon: float) -> wx.EventOut | None:
    """The public form of an event, or None while it is sealed (``public.SEALED``)."""
    if not public.disclosed(e.kind, e.ts, horizon):
        return None
    return wx.EventOut(id=e.id, ts=e.ts, kind=e.kind, subject=e.subject,
                       body=public.sealed_body(e.kind, e.body, e.ts, horizon))


def horizon(c: Coordinator) -> float:
    """Now minus the challenge window: what happened before it may be shown in full."""
    return c.now() - c.settings.challenge_window


def _shown(rows: Any, h: float) -> list[wx.EventOut]:
    return [x for x in (event_out(e, h) for e in rows) if x is not None]


def _counts(s: Session, col: Any) -> dict[str, int]:
    return {str(k): int(n) for k, n in s.execute(select(col, func.count()).group_by(col)).all()}


def _int(v: Any) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


def last_event_id(s: Session) -> int:
    return int(s.scalar(select(func.max(Event.id))) or 0)


def _supply(s: Session) -> int:
    """Everything the faucet ever minted: the only account allowed below zero."""
    return -journal.balance(s, ledger.MINT)


# --- overview -------------------------------------------------------------------------

MAX_PRICES = 2_000  # offers the overview lists, at most: the online first, cheapest first


def overview(c: Coordinator, window: float, price_window: float) -> wx.OverviewOut:
    """Providers are counted and summed by the database, and their prices read already
    sorted and cut: registering is free, so no row per provider is loaded here (the
    online ones' hardware aside, a bounded batch at a time)."""
    now = c.now()
    with c.db.read() as s:
        live_q = _online_now(c, now)
        total = s.scalar(select(func.count()).select_from(Provider)) or 0
        n_online, cpus, gpus, units = 0, 0, 0, 0.0
        for hw, cu in s.execute(select(Provider.hardware, Provider.compute_units)
                                .where(live_q).execution_options(yield_per=500)):
            hw = hw or {}
            n_online, units = n_online + 1, units + cu
            cpus += _int(hw.get("cores"))
            gpus += len(hw.get("gpus") or [])
        job_counts = public.statuses(_counts(s, Job.status), public.JOB_SHOWN_AS)
        task_counts = public.statuses(_counts(s, Task.status), public.TASK_SHOWN_AS)

        bucket = window / BUCKETS
        since = now - window
        # Counted by the database, a bucket at a time: not every accepted task's time
        # loaded (millions in a busy day's window).
        accepted = (Event.kind == "task_accepted", Event.ts >= since)
        at = (Event.ts - since) / bucket
        slot = (cast(at, Integer) if c.db.is_sqlite else func.floor(at)).label("slot")
        per_bucket = [0] * BUCKETS
        for k, n in s.execute(select(slot, func.count()).where(*accepted).group_by(slot)):
            per_bucket[min(BUCKETS - 1, max(0, int(k)))] += int(n)
        last_minute = s.scalar(select(func.count()).where(
            Event.kind == "task_accepted", Event.ts >= max(since, now - 60.0))) or 0

        offline = case((live_q, 0), else_=1)
        provider_prices = [
            wx.ProviderPrice(provider=o.provider_id, name=name, online=not off,
                             workload=o.workload, model=o.model, price=o.price,
                             compute_units=cu, price_per_cu=_per_cu(o.price, cu))
            for o, name, cu, off in s.execute(
                select(Offer, Provider.name, Provider.compute_units, offline)
                .join(Provider, Provider.id == Offer.provider_id)
                .order_by(offline, Offer.price, Offer.provider_id, Offer.workload, Offer.model)
                .limit(MAX_PRICES))]

        # Checks and their cost once their window has closed, like the events they count:
        # counted as they happen, a leaseholder would watch them move with its own result.
        h = now - c.settings.challenge_window
        verif = _counts_where(s, Event.kind, Event.kind.in_(wx.VERIFICATION_KINDS),
                              Event.ts <= h)
        roles = _counts_where(s, Assignment.role, Assignment.leased_at <= h)
        primary = roles.get("primary", 0)
        extra = sum(n for r, n in roles.items() if r != "primary")
        head = s.get(JournalHead, 1)
        return wx.OverviewOut(
            now=now, providers_online=n_online, providers_total=int(total),
            cpus=cpus, gpus=gpus, compute_units=round(units, 3),
            jobs=job_counts,
            jobs_running=sum(job_counts.get(k, 0) for k in JOB_ACTIVE),
            jobs_finished=job_counts.get("completed", 0),
            tasks=task_counts, tasks_per_second=round(last_minute / 60.0, 3),
            throughput=[wx.ThroughputPoint(t=since + i * bucket, tasks=n)
                        for i, n in enumerate(per_bucket)],
            bucket_seconds=bucket,
            prices=_price_series(s, now, price_window),
            provider_prices=provider_prices,
            verification=wx.VerificationCounts(
                checks_passed=verif.get("check_passed", 0),
                checks_failed=verif.get("check_failed", 0),
                verdicts=verif.get("verdict", 0), slashes=verif.get("slash", 0),
                overhead=round(extra / primary, 4) if primary else 0.0),
            journal_seq=head.seq if head else 0, supply=_supply(s),
            last_event_id=last_event_id(s))


def _online_now(c: Coordinator, now: float) -> Any:
    """``Coordinator.online`` as SQL."""
    return and_(Provider.status == ProviderStatus.ACTIVE,
                Provider.last_seen >= now - c.settings.heartbeat_timeout)


def _counts_where(s: Session, col: Any, *cond: Any) -> dict[str, int]:
    rows = s.execute(select(col, func.count()).where(*cond).group_by(col)).all()
    return {str(k): int(n) for k, n in rows}


def _per_cu(price: int, cu: float) -> float | None:
    return round(compute.price_per_cu(price, cu), 3) if cu > 0 else None


def _price_series(s: Session, now: float, window: float) -> list[wx.PriceSeries]:
    since = now - window
    bucket = window / BUCKETS
    rows = s.execute(select(Job.kind, Assignment.price, Assignment.leased_at)
                     .join(Job, Job.id == Assignment.job_id)
                     .where(Assignment.leased_at >= since)
                     .order_by(Assignment.leased_at.desc()).limit(MAX_PRICE_ROWS)).all()
    acc: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for kind, price, at in rows:
        acc[kind][min(BUCKETS - 1, max(0, int((at - since) // bucket)))].append(int(price))
    out = []
    for kind in sorted(acc):
        pts = [wx.PricePoint(t=since + i * bucket, avg=round(sum(v) / len(v), 2), min=min(v),
                             max=max(v), n=len(v)) for i, v in sorted(acc[kind].items())]
        out.append(wx.PriceSeries(workload=kind, points=pts))
    return out


# --- providers ------------------------------------------------------------------------

def assignment_row(a: Assignment, h: float) -> wx.AssignmentRow:
    return public.assignment(wx.AssignmentRow(
        id=a.id, task_id=a.task_id, job_id=a.job_id, provider_id=a.provider_id,
        role=public.role(a.role, a.leased_at, h),
        status=a.status, price=a.price, leased_at=a.leased_at, submitted_at=a.submitted_at,
        seconds=a.seconds, units=a.units, output_digest=a.output_digest, error=a.error))


def _mentions(value: Any, needle: str) -> bool:
    if isinstance(value, str):
        return value == needle
    if isinstance(value, dict):
        return any(_mentions(v, needle) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_mentions(v, needle) for v in value)
    return False


def verification_events(s: Session, limit: int, h: float, before: int | None = None,
                        party: str | None = None) -> list[wx.EventOut]:
    q = select(Event).where(Event.kind.in_(wx.VERIFICATION_KINDS))
    if before is not None:
        q = q.where(Event.id < before)
    if party is None:
        return _shown(s.scalars(q.order_by(Event.id.desc()).limit(limit * 4)), h)[:limit]
    rows = s.scalars(q.order_by(Event.id.desc()).limit(max(limit * 40, 2000)))
    return _shown((e for e in rows if e.subject == party or _mentions(e.body, party)),
                  h)[:limit]


def provider_detail(c: Coordinator, pid: str, limit: int) -> wx.ProviderDetailOut:
    prov = c.provider(pid)  # NotFound for an unknown id
    bal = c.balance(pid)
    with c.db.read() as s:
        sums = dict(s.execute(select(Payout.released, func.coalesce(func.sum(Payout.amount), 0))
                              .where(Payout.provider_id == pid)
                              .group_by(Payout.released)).all())
        # Only what was leased before the challenge-window horizon (as ``job_detail``):
        # another provider's assignment on a task, or its count going up, would tell a
        # leaseholder that its lease is a check of that provider's result.
        h = horizon(c)
        shown = (Assignment.provider_id == pid, Assignment.leased_at <= h)
        statuses = _counts_where(s, Assignment.status, *shown)
        recent = s.scalars(select(Assignment).where(*shown)
                           .order_by(Assignment.leased_at.desc()).limit(limit)).all()
        host, hosted = _hosted(c, s, pid, prov.name or pid[:12], limit)
        return wx.ProviderDetailOut(
            provider=prov, balance=bal, pending_earnings=int(sums.get(False, 0)),
            released_earnings=int(sums.get(True, 0)), assignments=statuses,
            recent=[assignment_row(a, h) for a in recent],
            checks=verification_events(s, limit, h, party=pid),
            lease_host=host, leases=hosted)


# --- jobs -----------------------------------------------------------------------------

def shard_state(task_status: str, submitted: bool) -> str:
    """What the shard map shows: the task's status in words a user reads."""
    if task_status == "assigned":
        return "verifying" if submitted else "running"
    return {"done": "accepted"}.get(task_status, task_status)


def _redone(t: Task, mine: list[Assignment], h: float) -> bool:
    """Run more than once: placed again, or a subject's result overturned by a verdict
    (another result stands). Roles count once public (``public.role``)."""
    return t.attempts > 1 or any(
        a.status == AssignmentStatus.REJECTED and a.role in SUBJECTS and a.leased_at <= h
        for a in mine)


def _corrected(s: Session, job_id: str, h: float) -> set[str]:
    """Tasks of ``job_id`` whose result an audit or a look-back replaced (disclosed only)."""
    rows = s.scalars(select(Event.body).where(Event.kind == "result_corrected",
                                              Event.of_subject(job_id), Event.ts <= h))
    return {str(b.get("task")) for b in rows if isinstance(b, dict)}


def job_detail(c: Coordinator, job_id: str) -> wx.JobDetailOut:
    h = horizon(c)
    raw = jobs.view(c, job_id)  # NotFound for an unknown id
    job = public.job(raw, h, c.settings.challenge_window)
    # Inside the window a shard's status says nothing of checks (``public.shard_status``)
    sealed = raw.finished_at is None or raw.finished_at > h
    with c.db.read() as s:
        tasks = s.scalars(select(Task).where(Task.job_id == job_id).order_by(Task.idx)
                          .limit(MAX_SHARDS)).all()
        # Only what was leased before the challenge-window horizon: who else touched a
        # shard, and in what order, would tell a checker it is one (and whom it checks).
        asgs = s.scalars(select(Assignment).where(Assignment.job_id == job_id,
                                                  Assignment.leased_at <= h)
                         .order_by(Assignment.leased_at)).all()
        by_task: dict[str, list[Assignment]] = defaultdict(list)
        for a in asgs:
            by_task[a.task_id].append(a)
        units = {t.id: t.units for t in tasks}
        corrected = _corrected(s, job_id, h)
        shards: list[wx.ShardOut] = []
        states: dict[str, int] = defaultdict(int)
        for t in tasks:
            mine = by_task.get(t.id, [])
            status = public.shard_status(t.status, sealed)
            state = shard_state(status, not sealed and any(
                a.status == AssignmentStatus.SUBMITTED for a in mine))
            states[state] += 1
            shards.append(wx.ShardOut(
                idx=t.idx, task_id=t.id, status=status, state=state, attempts=t.attempts,
                redone=_redone(t, mine, h), corrected=t.id in corrected, items=t.items,
                units=t.units, providers=list(dict.fromkeys(a.provider_id for a in mine)),
                error=public.error(t.error)))
        per: dict[str, dict[str, int]] = defaultdict(lambda: {"accepted": 0, "n": 0, "paid": 0})
        for a in asgs:
            row = per[a.provider_id]
            row["n"] += 1
            if a.status == AssignmentStatus.ACCEPTED:
                row["accepted"] += 1
                row["paid"] += cost_for_units(units.get(a.task_id, a.units or 0), a.price)
        names = dict(s.execute(select(Provider.id, Provider.name)
                               .where(Provider.id.in_(list(per)))).all()) if per else {}
        providers = [wx.JobProviderOut(id=pid, name=names.get(pid, pid[:12]),
                                       accepted=r["accepted"], assignments=r["n"],
                                       paid=r["paid"])
                     for pid, r in sorted(per.items(), key=lambda kv: -kv[1]["accepted"])]
        latest = sorted(asgs, key=lambda a: a.leased_at, reverse=True)[:200]
        return wx.JobDetailOut(job=job, shards=shards, states=dict(states), cost_so_far=job.cost,
                               providers=providers,
                               assignments=[assignment_row(a, h) for a in latest],
                               redone=sum(x.redone for x in shards),
                               corrected=sum(x.corrected for x in shards))


def job_list(c: Coordinator, limit: int) -> list[wire.JobOut]:
    """The latest jobs of every owner, each by its public face."""
    h, window = horizon(c), c.settings.challenge_window
    return [public.job(j, h, window) for j in jobs.list_jobs(c, None, limit)]


# --- events ---------------------------------------------------------------------------

SCAN = 20_000  # event ids one read of the public feed looks through, at most


class EventsPage(wx.EventsOut):
    """``/api/events``: the page, and where to resume the feed."""

    next_after: int = Field(0, description=(
        "the last event id this page searched past: pass it as ``after`` for the next page "
        "(events still inside their challenge window are skipped, not waited for)"))


def disclosed_now(h: float) -> Any:
    """``public.disclosed`` as SQL: a sealed kind only once its window has closed. Filtered
    before the LIMIT, so a run of sealed events cannot fill a page with nothing to show."""
    return or_(Event.kind.not_in(sorted(public.SEALED)), Event.ts <= h)


def events_after(c: Coordinator, after: int, limit: int,
                 kinds: list[str] | None = None) -> EventsPage:
    """Up to ``limit`` public events with an id above ``after``, oldest first, looking
    through at most ``SCAN`` ids, and the id to resume after (``next_after``)."""
    h = horizon(c)
    with c.db.read() as s:
        top = last_event_id(s)
        end = min(top, after + SCAN)
        q = select(Event).where(Event.id > after, Event.id <= end, disclosed_now(h))
        if kinds:
            q = q.where(Event.kind.in_(kinds))
        rows = s.scalars(q.order_by(Event.id).limit(limit)).all()
        resume = rows[-1].id if len(rows) == limit else max(after, end)
        return EventsPage(events=_shown(rows, h), last_id=top, next_after=resume)


def events_page(c: Coordinator, after: int, limit: int,
                kinds: list[str] | None) -> EventsPage:
    return events_after(c, after, limit, kinds)


def latest_event_id(c: Coordinator) -> int:
    with c.db.read() as s:
        return last_event_id(s)


def verification(c: Coordinator, limit: int, before: int | None) -> wx.EventsOut:
    with c.db.read() as s:
        return wx.EventsOut(events=verification_events(s, limit, horizon(c), before),
                            last_id=last_event_id(s))


# --- ledger ---------------------------------------------------------------------------

class AuditCache:
    """The latest server-side audit of each coordinator, with when it ran."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._runs: weakref.WeakKeyDictionary[Coordinator, wx.AuditRun] = (
            weakref.WeakKeyDictionary())

    def latest(self, c: Coordinator) -> wx.AuditRun | None:
        return self._runs.get(c)

    def run(self, c: Coordinator) -> wx.AuditRun:
        asked = c.now()
        with self._lock:  # one replay at a time; callers queued behind it share its result
            last = self._runs.get(c)
            if last is not None and last.at >= asked:
                return last
            t0 = time.perf_counter()
            result = api_ledger.audit(c)
            run = wx.AuditRun(at=c.now(), seconds=round(time.perf_counter() - t0, 4),
                              result=result)
            self._runs[c] = run
            return run


AUDITS = AuditCache()


def journal_row(r: JournalEntry) -> wx.JournalRow:
    return wx.JournalRow(seq=r.seq, ts_ms=r.ts_ms, kind=r.kind, hash=r.hash,
                         prev_hash=r.prev_hash, body=dict(r.body or {}),
                         postings=[list(p) for p in r.postings])


def ledger_view(c: Coordinator, limit: int, before: int | None) -> wx.LedgerOut:
    with c.db.read() as s:
        q = select(JournalEntry)
        if before is not None:
            q = q.where(JournalEntry.seq < before)
        rows = s.scalars(q.order_by(JournalEntry.seq.desc()).limit(limit)).all()
        head = s.get(JournalHead, 1)
        return wx.LedgerOut(head_seq=head.seq if head else 0,
                            head_hash=head.hash if head else ledger.GENESIS,
                            supply=_supply(s), entries=[journal_row(r) for r in rows],
                            last_audit=AUDITS.latest(c))


def ledger_accounts_of(account: str) -> list[str]:
    """An owner id stands for its spendable, pending and staked accounts."""
    if len(account) == 64 and all(ch in "0123456789abcdef" for ch in account):
        return [ledger.acct(account), ledger.pending(account), ledger.stake(account)]
    return [account]


def _like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


HISTORY_WINDOW = 20_000  # journal entries one account view searches, at most: the postings
# are matched as text, and an account whose entries are old (or few) would otherwise make
# any visitor's request walk the whole journal (millions of rows on a live network)


def account_view(c: Coordinator, account: str, limit: int,
                 before: int | None = None) -> wx.AccountOut:
    """An account's balances and the latest ``limit`` entries that moved them among the
    ``HISTORY_WINDOW`` entries below ``before`` (the head when None): each answer searches a
    bounded range of the journal by its primary key, and says where it stopped."""
    names = ledger_accounts_of(account)
    with c.db.read() as s:
        bal = journal.balances(s, names)
        head = s.get(JournalHead, 1)
        end = (head.seq if head else 0) + 1
        if before is not None:
            end = min(end, before)
        start = max(1, end - HISTORY_WINDOW)
        text = cast(JournalEntry.postings, String)
        cond: Any = text.like(f'%"{_like(names[0])}"%', escape="\\")
        for n in names[1:]:
            cond = cond | text.like(f'%"{_like(n)}"%', escape="\\")
        rows = s.scalars(select(JournalEntry)
                         .where(JournalEntry.seq >= start, JournalEntry.seq < end, cond)
                         .order_by(JournalEntry.seq.desc()).limit(limit)).all()
        history = []
        for r in rows:
            delta = sum(int(d) for a, d in r.postings if a in names)
            if any(a in names for a, _ in r.postings):
                history.append(wx.AccountHistoryRow(seq=r.seq, ts_ms=r.ts_ms, kind=r.kind,
                                                    hash=r.hash, delta=delta,
                                                    postings=[list(p) for p in r.postings]))
        searched = rows[-1].seq if len(rows) == limit else start
    if not history and not bal and before is None:
        raise NotFound(f"no ledger account {account}", field="account")
    owner = c.balance(account) if len(names) == 3 else None
    return wx.AccountOut(account=account, ledger_accounts={n: bal.get(n, 0) for n in names},
                         balance=owner, history=history,
                         searched_from=0 if searched <= 1 else searched)


def leases_view(c: Coordinator, limit: int) -> wx.LeasesOut:
    """Machines by the hour and the clusters made of them: counts, the latest of each,
    their hosts, prices and fates. This view names no owner or escrow and no Ray
    endpoint; a lease's payer and escrow are public facts all the same, in the journal
    (``escrow_lease``) and the event stream (``lease_created``): every payment is, and an
    account is a key, not a name. Ray endpoints stay private."""
    with c.db.read() as s:
        names = dict(s.execute(select(Provider.id, Provider.name)).all())
        lease_rows = s.scalars(select(Lease).order_by(Lease.created_at.desc())
                               .limit(limit)).all()
        cluster_rows = s.scalars(select(Cluster).order_by(Cluster.created_at.desc())
                                 .limit(limit)).all()
        member = {lid: cl.id for cl in cluster_rows for lid in (cl.leases or [])}
        host = dict(s.execute(select(Lease.id, Lease.provider_id).where(
            Lease.id.in_(sorted(member)))).all()) if member else {}
        running = s.scalars(select(Cluster).where(Cluster.status == clusters.RUNNING)).all()
        hosts = _lease_hosts(c, s, names)
        capacity = sum(x.cpus for x in hosts)
        return wx.LeasesOut(
            hosts=hosts[:limit],
            utilisation=sum(x.cpus_used for x in hosts) / capacity if capacity else 0.0,
            leases=_counts(s, Lease.status),
            lease_end_reasons=_counts_where(s, Lease.end_reason, Lease.end_reason.is_not(None)),
            clusters=_counts(s, Cluster.status),
            cluster_end_reasons=_counts_where(s, Cluster.end_reason,
                                              Cluster.end_reason.is_not(None)),
            nodes_running=sum(cl.nodes - len(cl.lost or []) for cl in running),
            recent_leases=[_lease_row(r, names, member) for r in lease_rows],
            recent_clusters=[wx.ClusterRow(
                id=cl.id, status=cl.status, end_reason=cl.end_reason, nodes=cl.nodes,
                providers=[host[lid] for lid in (cl.leases or []) if lid in host],
                lost=len(cl.lost or []), created_at=cl.created_at, ready_at=cl.ready_at,
                ended_at=cl.ended_at) for cl in cluster_rows])


def _lease_row(r: Lease, names: dict[str, str], member: dict[str, str]) -> wx.LeaseRow:
    return wx.LeaseRow(
        id=r.id, provider=r.provider_id,
        provider_name=names.get(r.provider_id) or r.provider_id[:12], status=r.status,
        end_reason=r.end_reason, cpus=r.cpus, memory_mb=r.memory_mb, gpus=r.gpus,
        spot=r.spot, price_hour=r.price_hour, created_at=r.created_at,
        started_at=r.started_at, ended_at=r.ended_at, cluster=member.get(r.id))


def _hosted(c: Coordinator, s: Session, pid: str, name: str,
            limit: int) -> tuple[wx.LeaseHostRow | None, list[wx.LeaseRow]]:
    """A provider's lease offer (prices, capacity, what is held) and its latest leases."""
    rows = s.scalars(select(Lease).where(Lease.provider_id == pid)
                     .order_by(Lease.created_at.desc()).limit(limit)).all()
    host = next((h for h in _lease_hosts(c, s, {pid: name}, pid) if h.provider == pid), None)
    return host, [_lease_row(r, {pid: name}, {}) for r in rows]


def _lease_hosts(c: Coordinator, s: Session, names: dict[str, str],
                 only: str | None = None) -> list[wx.LeaseHostRow]:
    """Lease hosts with their prices, capacity and what live leases hold of it, busiest
    first."""
    live = select(Lease.provider_id, func.sum(Lease.cpus), func.sum(Lease.memory_mb),
                  func.sum(Lease.gpus)).where(Lease.status.in_(leases.LIVE))
    q = select(LeaseHost, Provider).join(Provider, Provider.id == LeaseHost.provider_id)
    if only is not None:
        live, q = live.where(Lease.provider_id == only), q.where(LeaseHost.provider_id == only)
    used = {pid: (int(cpu or 0), int(mem or 0), int(gpu or 0))
            for pid, cpu, mem, gpu in s.execute(live.group_by(Lease.provider_id))}
    rows = s.execute(q).all()
    out = []
    for h, p in rows:
        cpu, mem, gpu = used.get(h.provider_id, (0, 0, 0))
        out.append(wx.LeaseHostRow(
            provider=p.id, provider_name=names.get(p.id) or p.id[:12], online=c.online(p),
            prices={str(k): int(v) for k, v in dict(h.prices or {}).items()},
            cpus=h.cpus, cpus_used=cpu, memory_mb=h.memory_mb, memory_used_mb=mem,
            gpus=h.gpus, gpus_used=gpu, gpu_model=h.gpu_model))
    out.sort(key=lambda x: (-x.cpus_used, x.provider))
    return out
