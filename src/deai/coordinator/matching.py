"""The matcher: reads queued tasks and online providers, asks ``core.market.place``
where each task goes, and writes the leases. The decision itself is pure; this
module only gathers its inputs and records its outputs.
"""

from __future__ import annotations

from collections import defaultdict

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from deai.coordinator.service import Coordinator, new_id
from deai.core import catalog, ledger, market
from deai.store import journal
from deai.store.models import Assignment, Job, Offer, Provider, Task

BATCH = 2000


def provider_states(c: Coordinator, s: Session) -> list[market.ProviderState]:
    since = c.now() - c.settings.heartbeat_timeout
    rows = s.scalars(select(Provider).where(Provider.status == "active",
                                            Provider.last_seen >= since)).all()
    if not rows:
        return []
    ids = [p.id for p in rows]
    offers: dict[str, list[market.Offer]] = defaultdict(list)
    for o in s.scalars(select(Offer).where(Offer.provider_id.in_(ids))):
        offers[o.provider_id].append(market.Offer(o.workload, o.model, o.price))
    load = dict(s.execute(select(Assignment.provider_id, func.count())
                          .where(Assignment.status == "leased",
                                 Assignment.provider_id.in_(ids))
                          .group_by(Assignment.provider_id)).all())
    stakes = journal.balances(s, [ledger.stake(i) for i in ids])
    return [market.ProviderState(
        id=p.id, online=True, stake=stakes.get(ledger.stake(p.id), 0),
        memory_mb=int(p.hardware.get("memory_mb", 0)), slots=p.slots,
        load=int(load.get(p.id, 0)), reputation=p.reputation, compute_units=p.compute_units,
        offers=tuple(offers[p.id])) for p in rows]


def all_provider_states(c: Coordinator, s: Session) -> list[market.ProviderState]:
    """Every registered provider, online or not, for quotes that explain themselves."""
    online = {p.id: p for p in provider_states(c, s)}
    rows = s.scalars(select(Provider)).all()
    stakes = journal.balances(s, [ledger.stake(p.id) for p in rows])
    out = []
    for p in rows:
        if p.id in online:
            out.append(online[p.id])
            continue
        offers = tuple(market.Offer(o.workload, o.model, o.price) for o in
                       s.scalars(select(Offer).where(Offer.provider_id == p.id)))
        out.append(market.ProviderState(
            id=p.id, online=False, stake=stakes.get(ledger.stake(p.id), 0),
            memory_mb=int(p.hardware.get("memory_mb", 0)), slots=p.slots,
            reputation=p.reputation, compute_units=p.compute_units, offers=offers))
    return out


def demand(job: Job, task: Task, exclude: frozenset[str] = frozenset()) -> market.TaskDemand:
    info = catalog.lookup(job.model)
    return market.TaskDemand(id=task.id, workload=job.kind, model=job.model,
                             max_price=job.max_price, memory_mb=info.memory_mb,
                             units=task.units, exclude=exclude)


def match_once(c: Coordinator) -> list[str]:
    """Place queued tasks; returns the providers that were given work."""
    now = c.now()
    with c.db.write() as s:
        rows = s.execute(
            select(Task, Job).join(Job, Job.id == Task.job_id)
            .where(Task.status == "queued", Job.status.in_(("pending", "running")))
            .order_by(Job.created_at, Task.idx).limit(BATCH)).all()
        if not rows:
            return []
        providers = provider_states(c, s)
        if not providers:
            return []
        task_ids = [t.id for t, _ in rows]
        excluded: dict[str, set[str]] = defaultdict(set)
        for a in s.execute(select(Assignment.task_id, Assignment.provider_id)
                           .where(Assignment.task_id.in_(task_ids),
                                  Assignment.status.in_(("rejected", "failed")))):
            excluded[a.task_id].add(a.provider_id)
        demands = [demand(j, t, frozenset(excluded.get(t.id, ()))) for t, j in rows]
        placements = market.place(demands, providers, c.settings.min_stake)
        by_task = {t.id: (t, j) for t, j in rows}
        for pl in placements:
            task, job = by_task[pl.task_id]
            task.status, task.updated_at = "assigned", now
            task.attempts += 1
            if job.status == "pending":
                job.status = "running"
            s.add(Assignment(id=new_id("asg"), task_id=task.id, job_id=job.id,
                             provider_id=pl.provider_id, role="primary", status="leased",
                             price=pl.price, leased_at=now,
                             lease_deadline=now + c.settings.lease_ttl, delivered=False))
            c.emit(s, "task_assigned", task.id, job=job.id, provider=pl.provider_id,
                   price=pl.price)
    if placements:
        c.notifier.published()
    return sorted({p.provider_id for p in placements})
