"""Leases on the coordinator: hosts, placement, per-second billing, ends with a reason.

Every change happens in one ``db.write()`` transaction together with its journal
entries (``core.ledger``'s lease postings, posted through the settlement port
``c.settlement`` so every rail sees them), so a crash leaves no half-ended lease.
The money rules are ``core.leases``'s; this module applies them.

- ``set_host``: a provider offers capacity and per-hour prices per resource class.
- ``create``: choose a host (``core.leases.choose`` over online providers, their
  free capacity, stake and reputation), escrow the deposit, record the lease as
  ``pending``. The provider's agent builds the sandbox and its first heartbeat
  naming the lease makes it ``active``; billing starts then.
- ``heartbeat``: the agent names the leases it runs; each gets ``last_heartbeat``.
  A failure it reports ends a pending lease ``policy`` (nothing billed) and a
  running one ``provider lost``, billed to its last heartbeat (no penalty).
- ``tick`` (a background loop, every ``LeaseConfig.tick`` seconds): end leases
  whose term or escrow is over (``time up``, ``escrow exhausted``), whose provider
  has not been heard from for ``grace`` seconds (``provider lost``: billed up to
  the last heartbeat, the rest refunded, ``penalty_bps`` of the stake taken), or
  that its provider did not start within ``start_timeout`` of being handed it
  (``offered_at``, stamped by ``work_for``; one never handed over ends refunded,
  without a penalty); warn owners whose escrow
  runs out within ``warn`` seconds (event ``lease_warning``); charge running
  leases every ``settle_every`` seconds, up to their last heartbeat (so a lost
  provider is never paid past it); release the provider's share after the
  challenge window.
- ``end`` (the owner) and ``extend`` (more hours or more escrow). A lease that ends
  before the preemption notices it caused run out takes them back (``finish``).

Knobs come from ``DEAI_LEASE_*`` environment variables (``LeaseConfig.from_env``)
because the coordinator's ``Settings`` belong to another module.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from deai.coordinator import hardware, volumes
from deai.coordinator.service import Coordinator, new_id
from deai.core import leases as core
from deai.core import ledger
from deai.core.errors import Conflict, Forbidden, InvalidInput, NoCapacity, NotFound
from deai.core.leases import EndReason, LeaseStatus
from deai.core.wire_leases import (
    ExtendIn,
    HostIn,
    HostOut,
    HostWithdrawOut,
    LeaseIn,
    LeaseOut,
    LeaseSpec,
    Notice,
)
from deai.store import db, journal
from deai.store.models import Event, Lease, LeaseEarning, LeaseHost, NetworkMeta, Provider
from deai.store.models_volumes import Volume, VolumeMount

log = logging.getLogger("deai.coordinator.leases")
LIVE = (LeaseStatus.PENDING.value, LeaseStatus.ACTIVE.value)
AGENT_SILENT = 60.0  # a host's lease agent unheard (poll, lease heartbeat) this long: not placed on
AGENT_STAMP = AGENT_SILENT / 4  # ``agent_seen_at`` is written at most this often: a poll
# comes every few seconds, and a write each would contend with the matcher for SQLite's lock


@dataclass(frozen=True)
class LeaseConfig:
    grace: float = 60.0  # seconds without a heartbeat before a lease's provider is lost
    warn: float = 300.0  # warn this long before the escrow runs out
    settle_every: float = 60.0
    start_timeout: float = 120.0
    penalty_bps: int = 100  # 1 % of the stake for a lost lease
    tick: float = 1.0
    notice: float = 60.0  # a spot lease's warning before it is preempted

    @classmethod
    def from_env(cls) -> LeaseConfig:
        env = os.environ
        d = cls()
        return cls(grace=float(env.get("DEAI_LEASE_GRACE", d.grace)),
                   warn=float(env.get("DEAI_LEASE_WARN", d.warn)),
                   settle_every=float(env.get("DEAI_LEASE_SETTLE", d.settle_every)),
                   start_timeout=float(env.get("DEAI_LEASE_START_TIMEOUT", d.start_timeout)),
                   penalty_bps=int(env.get("DEAI_LEASE_PENALTY_BPS", d.penalty_bps)),
                   tick=float(env.get("DEAI_LEASE_TICK", d.tick)),
                   notice=float(env.get("DEAI_LEASE_NOTICE", d.notice)))

    @property
    def heartbeat_interval(self) -> float:
        return max(0.5, self.grace / 4)


# --- hosts ------------------------------------------------------------------------------------

def set_host(c: Coordinator, cfg: LeaseConfig, pid: str, body: HostIn) -> HostOut:
    for name, price in body.prices.items():
        core.check_price_class(name, price)
    if "cpu" not in body.prices or "memory_gb" not in body.prices:
        raise InvalidInput("prices: give at least cpu and memory_gb (µ per hour)",
                           field="prices")
    if body.gpus and not any(k == "gpu" or k.startswith("gpu:") for k in body.prices):
        raise InvalidInput("prices: a host with GPUs needs a gpu price", field="prices")
    with c.db.write() as s:
        p = c.require_provider(s, pid)
        # refused here against the registration (what the host can know it lacks); what
        # the challenges verified, which changes, limits the GPUs leased in ``hosts``
        shown = hardware.registered_gpus(p)
        if core.gpus_offerable(body.gpus, body.gpu_model, shown) < body.gpus:
            model = f" {body.gpu_model}" if body.gpu_model else ""
            raise InvalidInput(f"gpus: {body.gpus}{model} offered; the registered hardware "
                               f"shows {len(shown)} ({', '.join(shown) or 'no GPU'})",
                               field="gpus")
        # locked: a withdrawal at the same moment deletes it first or waits for this
        h = s.get(LeaseHost, pid, with_for_update=True)
        if h is None:
            h = LeaseHost(provider_id=pid)
            s.add(h)
        h.cpus, h.memory_mb, h.gpus, h.gpu_model = (body.cpus, body.memory_mb, body.gpus,
                                                    body.gpu_model)
        h.network, h.prices, h.updated_at = body.network, dict(body.prices), c.now()
        c.emit(s, "lease_host", pid, cpus=body.cpus, memory_mb=body.memory_mb, gpus=body.gpus,
               prices=dict(body.prices))
        out = _host_out(h, cfg)
    c.notifier.published()
    return out


def withdraw_host(c: Coordinator, pid: str) -> HostWithdrawOut:
    """The host takes its offer back: from now on no lease is placed on it, and its live
    leases run on to their end (their term, their escrow, or their owner) without being
    extended, so that the host drains and its agent can then stop without ending anyone's
    lease early (which costs it stake: ``provider lost``). Putting an offer again
    (``set_host``) takes leases again. A request choosing this host at the same moment
    either committed first (its lease is among ``live``) or finds it gone: ``_choose``
    locks the host's row and reads it again (PostgreSQL); SQLite runs them one at a time."""
    def body(s: Session) -> HostWithdrawOut:
        c.require_provider(s, pid)
        h = s.get(LeaseHost, pid, with_for_update=True)
        # The live leases locked after the host (``_create``'s order): an extension that
        # passed its host check before this commits is seen here (``until`` includes
        # it), and one that had not waits, then finds no offer (PostgreSQL).
        live = s.scalars(select(Lease).where(Lease.provider_id == pid,
                                             Lease.status.in_(LIVE)).order_by(Lease.id)
                         .with_for_update().execution_options(populate_existing=True)).all()
        if h is not None:
            s.delete(h)
            c.emit(s, "lease_host_withdrawn", pid)
            for x in live:  # each owner sees it among its lease's events
                c.emit(s, "lease_host_withdrawn", x.id, owner=x.owner, provider=pid)
        ends = [lease_out(x, c).ends_at for x in live]
        until = None if not ends or None in ends else max(e for e in ends if e is not None)
        # Ended leases whose volume's last snapshot the agent still owes (``volumes``):
        # stopping the agent now would lose it.
        saving = sorted(s.scalars(select(VolumeMount.lease_id).where(
            VolumeMount.provider_id == pid, VolumeMount.state == volumes.SAVING)))
        return HostWithdrawOut(provider_id=pid, withdrawn=h is not None,
                               live=[x.id for x in live], until=until, saving=saving)

    out = c.db.run(body)
    c.notifier.published()
    return out


def _host_out(h: LeaseHost, cfg: LeaseConfig) -> HostOut:
    return HostOut(provider_id=h.provider_id, cpus=h.cpus, memory_mb=h.memory_mb, gpus=h.gpus,
                   gpu_model=h.gpu_model, network=h.network, prices=dict(h.prices),
                   heartbeat_interval=cfg.heartbeat_interval, grace=cfg.grace)


SHOWN = 20  # hosts a refusal names with their reasons, at most


def hosts(c: Coordinator, s: Session, only: str | None = None) -> list[core.Host]:
    """Every lease host (or only the provider ``only``) as ``core.leases.Host``, with
    what its live leases leave free, and whether its lease agent was heard from within
    ``AGENT_SILENT`` (the provider may be online through its job agent alone)."""
    live = [Lease.status.in_(LIVE)] + ([Lease.provider_id == only] if only else [])
    used: dict[str, tuple[int, int, int]] = {
        pid: (int(cpu or 0), int(mem or 0), int(gpu or 0))
        for pid, cpu, mem, gpu in s.execute(
            select(Lease.provider_id, func.sum(Lease.cpus), func.sum(Lease.memory_mb),
                   func.sum(Lease.gpus)).where(*live)
            .group_by(Lease.provider_id))}
    out = []
    q = select(LeaseHost, Provider).join(Provider, Provider.id == LeaseHost.provider_id)
    rows = s.execute(q.where(LeaseHost.provider_id == only) if only else q).all()
    # the GPUs offered count only as far as the hardware claim shows them, as it stands
    # now (a claim flagged since the host was set offers none)
    claims = hardware.verified_state(s, [p for _, p in rows])
    # Every host's stake in one read, not one each: a placement reads every host inside
    # its write transaction, and hosts cost nothing to register (2,000 of them: 568 ms).
    stakes = c.settlement.balances(s, [ledger.stake(p.id) for _, p in rows])
    for h, p in rows:
        cpu, mem, gpu = used.get(h.provider_id, (0, 0, 0))
        stake = stakes.get(ledger.stake(p.id), 0)
        claim = claims[p.id]
        gpus = core.gpus_offerable(h.gpus, h.gpu_model, hardware.gpus_shown(claim))
        out.append(core.Host(
            provider_id=p.id, prices=dict(h.prices), free_cpus=h.cpus - cpu,
            free_memory_mb=h.memory_mb - mem, free_gpus=gpus - gpu, gpu_model=h.gpu_model,
            network=h.network, online=c.online(p), stake=stake, reputation=p.reputation,
            sandbox=bool((p.capabilities or {}).get("sandbox", True)),
            agent=c.now() - max(h.agent_seen_at or 0.0, h.updated_at) <= AGENT_SILENT,
            hardware_wrong=claim.wrong and claim.status == "flagged"))
    return out


def agent_seen(c: Coordinator, pid: str) -> None:
    """The host's lease agent polled or beat: stamp ``agent_seen_at`` (at most every
    ``AGENT_STAMP`` seconds), in a transaction of its own, so the host row is never
    locked after the leases (``_choose`` locks it before them)."""
    with c.db.read() as s:
        h = s.get(LeaseHost, pid)
        if h is None or c.now() - (h.agent_seen_at or 0.0) < AGENT_STAMP:
            return

    def body(s: Session) -> None:
        row = s.get(LeaseHost, pid, with_for_update=True)
        if row is not None:
            row.agent_seen_at = c.now()

    c.db.run(body)


# --- the owner's operations -------------------------------------------------------------------

def spot_leases(s: Session) -> dict[str, list[core.SpotLease]]:
    """Live spot leases not yet under notice, by provider."""
    out: dict[str, list[core.SpotLease]] = {}
    for x in s.scalars(select(Lease).where(Lease.status.in_(LIVE), Lease.spot.is_(True),
                                           Lease.preempt_at.is_(None))):
        out.setdefault(x.provider_id, []).append(core.SpotLease(
            x.id, x.cpus, x.memory_mb, x.gpus, x.price_hour))
    return out


def create(c: Coordinator, owner: str, body: LeaseIn,
           cfg: LeaseConfig | None = None, exclude: frozenset[str] = frozenset(),
           join: Callable[[Session, str], None] | None = None) -> LeaseOut:
    """Place and escrow a lease. When no host is free, spot leases that pay less per hour
    are given notice (``cfg.notice`` seconds) and the new lease goes on their host.
    Providers in ``exclude`` are passed over (a cluster's members are distinct hosts).
    ``join(s, lease_id)`` runs first in the lease's own transaction (a cluster records
    its member there, so the lease and its membership commit together or not at all);
    whatever it raises places nothing."""
    cfg = cfg or LeaseConfig()
    ask = core.Ask(cpus=body.cpus, memory_mb=body.memory_mb, gpus=body.gpus,
                   gpu_model=body.gpu_model, network=body.network, spot=body.spot)
    lid = new_id("lease")
    out = c.db.run(functools.partial(_create, c, owner=owner, body=body, cfg=cfg,
                                     exclude=exclude, ask=ask, lid=lid, join=join))
    c.notifier.published()
    return out


def _choose(c: Coordinator, s: Session, ask: core.Ask, body: LeaseIn,
            exclude: frozenset[str]) -> tuple[core.Host, int, list[str]]:
    """The host for ``ask``, its price and the spot leases to give notice to.

    On PostgreSQL the host chosen is locked (its ``LeaseHost`` row) and its fit checked
    again on a fresh read: two requests at once that chose the same free capacity (or
    the same spot lease to preempt) queue on that row, and the second sees the first's
    lease and chooses again among the others. Without it both leased the one free GPU.
    Two requests that lock two hosts in opposite orders deadlock; ``Database.run``
    runs the loser again. SQLite's write lock already runs them one at a time."""
    skip = set(exclude)
    while True:
        candidates = [h for h in hosts(c, s) if h.provider_id not in skip]
        host, price, rejected = core.choose(ask, candidates, body.max_price_hour,
                                            c.settings.min_stake)
        preempt: list[str] = []
        if host is None:
            host, price, preempt = core.choose_preempting(
                ask, candidates, spot_leases(s), body.max_price_hour, c.settings.min_stake)
        if host is None:
            # The first few reasons: every host of a large network is no one answer's business
            # (nor its size: registering is free).
            named = sorted(rejected.items())[:SHOWN]
            why = "; ".join(f"{pid[:12]}: {', '.join(r)}" for pid, r in named)
            if len(rejected) > SHOWN:
                why += f"; and {len(rejected) - SHOWN} more"
            raise NoCapacity(f"no provider can host this lease ({why or 'no lease hosts'})",
                             rejected={k: v for k, v in list(rejected.items())[:20]})
        if c.db.is_sqlite:
            return host, price, preempt
        s.get(LeaseHost, host.provider_id, with_for_update=True)
        again = hosts(c, s, only=host.provider_id)
        fresh, price, _ = core.choose(ask, again, body.max_price_hour, c.settings.min_stake)
        preempt = []
        if fresh is None:
            fresh, price, preempt = core.choose_preempting(
                ask, again, spot_leases(s), body.max_price_hour, c.settings.min_stake)
        if fresh is not None:
            return fresh, price, preempt
        skip.add(host.provider_id)  # taken meanwhile


def _create(c: Coordinator, s: Session, *, owner: str, body: LeaseIn, cfg: LeaseConfig,
            exclude: frozenset[str], ask: core.Ask, lid: str,
            join: Callable[[Session, str], None] | None = None) -> LeaseOut:
    if join is not None:  # first: a cluster's row before its hosts, leases and the journal
        join(s, lid)  # (the cluster loop's order)
    host, price, preempt = _choose(c, s, ask, body, exclude)
    term = round(body.hours * core.SECONDS_PER_HOUR) if body.hours is not None else None
    deposit = body.deposit if body.deposit is not None else core.escrow_for(
        price, body.hours or 0.0)
    if deposit <= 0:  # a free lease still needs a positive escrow to be recorded
        deposit = 1
    lease = Lease(id=lid, owner=owner, provider_id=host.provider_id,
                  status=LeaseStatus.PENDING.value, cpus=body.cpus,
                  memory_mb=body.memory_mb, gpus=body.gpus, gpu_model=body.gpu_model,
                  network=body.network, spot=body.spot, price_hour=price,
                  max_price_hour=body.max_price_hour, escrow=deposit, charged=0,
                  refunded=0, penalty=0, created_at=c.now(), term_seconds=term)
    s.add(lease)
    s.flush()
    vid = (volumes.attach(c, s, owner, body.volume, lid, host.provider_id)
           if body.volume is not None else None)
    for victim in sorted(preempt):  # locked in ascending id (the lease loop's order),
        # before the journal's head (store.db's order)
        notify_preemption(c, s, victim, lid, c.now() + cfg.notice)
    c.settlement.post(s, ledger.escrow_lease(owner, lid, deposit))
    c.emit(s, "lease_created", lid, owner=owner, provider=host.provider_id,
           price_hour=price, escrow=deposit, cpus=body.cpus, memory_mb=body.memory_mb)
    out = lease_out(lease, c)
    out.volume = vid
    return out


def owned(s: Session, owner: str, lid: str, *, lock: bool = False) -> Lease:
    lease = s.get(Lease, lid, with_for_update=lock)
    if lease is None:
        raise NotFound(f"no lease {lid}", field="lease")
    if lease.owner != owner:
        raise Forbidden("this lease belongs to another account")
    return lease


def end(c: Coordinator, owner: str, lid: str) -> LeaseOut:
    def body(s: Session) -> LeaseOut:
        lease = owned(s, owner, lid, lock=True)
        if lease.status != LeaseStatus.ENDED.value:
            finish(c, s, lease, EndReason.OWNER_ENDED, c.now())
        return lease_out(lease, c)

    out = c.db.run(body)  # run again if it loses a deadlock (the lease loop, a cluster's)
    c.notifier.published()
    return out


def extend(c: Coordinator, owner: str, lid: str, body: ExtendIn) -> LeaseOut:
    out = c.db.run(functools.partial(_extend, c, owner=owner, lid=lid, body=body))
    c.notifier.published()
    return out


def _extend(c: Coordinator, s: Session, *, owner: str, lid: str, body: ExtendIn) -> LeaseOut:
    lease = owned(s, owner, lid, lock=True)
    if lease.status == LeaseStatus.ENDED.value:
        raise Conflict(f"lease {lid} has ended ({lease.end_reason})", status="ended")
    if s.get(LeaseHost, lease.provider_id) is None:  # ``withdraw_host``: it drains
        raise Conflict(f"lease {lid}: its host has withdrawn its offer; the lease runs to "
                       "its end and is not extended", field="lease", status="host_withdrawn")
    if body.hours is not None:
        seconds = round(body.hours * core.SECONDS_PER_HOUR)
        amount = max(1, core.escrow_for(lease.price_hour, body.hours))
        if lease.term_seconds is not None:
            lease.term_seconds += seconds
            if lease.term_end is not None:
                lease.term_end += seconds
    else:
        assert body.amount is not None
        amount = body.amount
    c.settlement.post(s, ledger.escrow_lease(owner, lid, amount))
    lease.escrow += amount
    lease.warned_at = None  # a new warning if the topped-up escrow runs low again
    c.emit(s, "lease_extended", lid, owner=owner, amount=amount, hours=body.hours)
    return lease_out(lease, c)


def show(c: Coordinator, owner: str, lid: str) -> LeaseOut:
    with c.db.read() as s:
        lease = owned(s, owner, lid)
        events = s.scalars(select(Event).where(Event.of_subject(lid)).order_by(Event.id)
                           .limit(100)).all()
        out = lease_out(lease, c)
        out.volume = volumes.of_lease(s, lid)
        out.events = [{"ts": e.ts, "kind": e.kind, **e.body} for e in events]
    return out


def listing(c: Coordinator, owner: str, limit: int = 100) -> list[LeaseOut]:
    with c.db.read() as s:
        rows = s.scalars(select(Lease).where(Lease.owner == owner)
                         .order_by(Lease.created_at.desc()).limit(limit)).all()
        return [lease_out(x, c) for x in rows]


# --- the provider's side ----------------------------------------------------------------------

def work_for(c: Coordinator, pid: str,
             known: set[str]) -> tuple[list[LeaseSpec], list[str], list[Notice]]:
    """Pending leases of ``pid`` that its agent does not know yet, the known ones it
    should stop (ended, or not its own), and preemption notices for known ones.

    The leases handed over (or that the agent says it knows) get ``offered_at`` (once):
    the start timeout counts from it, and a lease never handed over costs its provider
    nothing (``_tick``)."""
    with c.db.read() as s:
        rows = s.scalars(select(Lease).where(Lease.provider_id == pid,
                                             Lease.status == LeaseStatus.PENDING.value)
                         .order_by(Lease.id)).all()
        vols, held = volumes.specs(s, [x.id for x in rows if x.id not in known], c.now())
        start = [LeaseSpec(id=x.id, cpus=x.cpus, memory_mb=x.memory_mb, gpus=x.gpus,
                           network=x.network, volume=vols.get(x.id))
                 for x in rows if x.id not in known and x.id not in held]
        # Handed over now, or named by the agent as one it has (``known``): a lease it
        # claims and never starts is its to answer for. Counting only those in ``start``
        # let an agent keep every lease out of it by naming them all: each ended "never
        # taken up", free, and each cluster it headed never formed, its renter paying the
        # members that did start.
        handed = {x.id for x in start} | known
        first = [x.id for x in rows if x.id in handed and x.offered_at is None]
        stop: list[str] = []
        notices: list[Notice] = []
        if known:
            live = {x.id: x for x in s.scalars(select(Lease).where(
                Lease.id.in_(sorted(known)), Lease.provider_id == pid,
                Lease.status.in_(LIVE)))}
            stop = sorted(known - set(live))
            notices = [Notice(id=x.id, at=x.preempt_at) for x in live.values()
                       if x.preempt_at is not None]
    agent_seen(c, pid)
    if first:
        c.db.run(functools.partial(_offered, c, ids=first))
    return start, stop, notices


def _offered(c: Coordinator, s: Session, *, ids: list[str]) -> None:
    """Stamp ``offered_at`` on leases handed to their agent, locked in ascending id (the
    lease loop's order); one ended or stamped meanwhile is left alone."""
    for lease in s.scalars(select(Lease).where(Lease.id.in_(ids)).order_by(Lease.id)
                           .with_for_update()):
        if lease.offered_at is None and lease.status == LeaseStatus.PENDING.value:
            lease.offered_at = c.now()


def notify_preemption(c: Coordinator, s: Session, lid: str, by: str, at: float) -> None:
    # Read again: the caller's read of the spot leases may predate another's notice.
    lease = s.get(Lease, lid, with_for_update=True, populate_existing=True)
    if lease is None or lease.status == LeaseStatus.ENDED.value or lease.preempt_at:
        return
    lease.preempt_at, lease.preempt_by = at, by
    c.emit(s, "lease_preempt_notice", lid, owner=lease.owner, provider=lease.provider_id,
           at=at, by=by, message=f"this spot lease will be preempted at {at:.0f} "
                                 f"({at - c.now():.0f} s): checkpoint now")


def heartbeat(c: Coordinator, pid: str, running: list[str], failed: dict[str, str]) -> list[str]:
    """Record the agent's running leases; start pending ones; return the ids to stop."""
    stop, changed = c.db.run(functools.partial(_heartbeat, c, pid=pid, running=running,
                                               failed=failed))
    agent_seen(c, pid)
    if changed:
        c.notifier.published()
    return stop


def _heartbeat(c: Coordinator, s: Session, *, pid: str, running: list[str],
               failed: dict[str, str]) -> tuple[list[str], bool]:
    """``heartbeat``'s transaction: the leases locked in ascending id (the lease loop's
    order), then the provider's row (``store.db``: leases before their provider).

    A failure reported for a lease that never started ends it ``policy``: nothing billed,
    no penalty. For one that had started it ends ``provider lost``, billed up to the last
    heartbeat, the rest refunded (ended ``policy`` at now, a provider billed the silence
    before its report). No stake penalty, though: the lease's own programs can end its
    sandbox (they may kill its init, which runs as their uid), so with one any owner could
    take 1 % of a provider's stake, and its place in the market, for seconds of a lease."""
    now = c.now()
    stop: list[str] = []
    changed = False
    ids = sorted(set(running) | set(failed))
    rows = {x.id: x for x in s.scalars(select(Lease).where(Lease.id.in_(ids))
                                       .order_by(Lease.id).with_for_update())} if ids else {}
    c.require_provider(s, pid).last_seen = now
    for lid in ids:
        lease = rows.get(lid)
        if lease is None or lease.provider_id != pid:
            stop.append(lid)
            continue
        if lid in failed:
            if lease.status == LeaseStatus.PENDING.value:
                lease.detail = f"provider could not run it: {failed[lid][:500]}"
                finish(c, s, lease, EndReason.POLICY, now)
                changed = True
            elif lease.status == LeaseStatus.ACTIVE.value:
                lease.detail = f"provider reported it failed: {failed[lid][:500]}"
                finish(c, s, lease, EndReason.PROVIDER_LOST,
                       lease.last_heartbeat or lease.started_at or now)
                changed = True
            stop.append(lid)
        elif lease.status == LeaseStatus.PENDING.value:
            core.check_transition(lease.status, LeaseStatus.ACTIVE)
            lease.status = LeaseStatus.ACTIVE.value
            lease.started_at = lease.last_heartbeat = lease.settled_at = now
            lease.offered_at = lease.offered_at or now  # it ran, so its agent had it
            if lease.term_seconds is not None:
                lease.term_end = now + lease.term_seconds
            c.emit(s, "lease_started", lid, owner=lease.owner, provider=pid)
            changed = True
        elif lease.status == LeaseStatus.ACTIVE.value:
            lease.last_heartbeat = now
        else:
            stop.append(lid)
    return stop, changed


def runs_on(c: Coordinator, lid: str) -> tuple[str, str, str]:
    """(owner, provider, status) of a lease."""
    with c.db.read() as s:
        lease = s.get(Lease, lid)
        if lease is None:
            raise NotFound(f"no lease {lid}", field="lease")
        return lease.owner, lease.provider_id, lease.status


# --- time passing -----------------------------------------------------------------------------

def billing(lease: Lease) -> core.Billing:
    return core.Billing(price_hour=lease.price_hour, escrow=lease.escrow,
                        charged=lease.charged, started_at=lease.started_at,
                        term_end=lease.term_end)


def charge(c: Coordinator, s: Session, lease: Lease, until: float, *, final: bool = False,
           penalty_bps: int = 0) -> core.Settlement:
    """Move what ``core.leases.settle`` says; the lease row keeps the running totals."""
    b = billing(lease)
    stake = journal.balance(s, ledger.stake(lease.provider_id)) if penalty_bps else 0
    st = core.settle(b, until, c.settings.fee_bps, final=final, stake=stake,
                     penalty_bps=penalty_bps)
    if st.charge > 0:
        seconds = core.billable_seconds(b, until)
        entry = c.settlement.post(s, ledger.lease_charge(lease.id, lease.provider_id,
                                                         st.charge, st.fee, seconds))
        if st.to_provider > 0:
            s.add(LeaseEarning(lease_id=lease.id, provider_id=lease.provider_id,
                               amount=st.to_provider, released=False, journal_seq=entry.seq,
                               release_at=c.now() + c.settings.challenge_window))
        lease.charged += st.charge
    if st.refund > 0:
        c.settlement.post(s, ledger.lease_refund(lease.owner, lease.id, st.refund,
                                                 lease.end_reason or ""))
        lease.refunded += st.refund
    if st.penalty > 0:
        downtime = c.now() - (lease.last_heartbeat or lease.offered_at or lease.created_at)
        taken = c.settlement.penalize(s, lease.provider_id, lease.id, st.penalty, downtime)
        lease.penalty += taken
        st = replace(st, penalty=taken)  # less if another slash came first
    lease.settled_at = c.now()
    return st


def finish(c: Coordinator, s: Session, lease: Lease, reason: EndReason, until: float,
           penalty_bps: int = 0) -> None:
    """End a lease: charge up to ``until``, refund the rest, take any penalty."""
    core.check_transition(lease.status, LeaseStatus.ENDED)
    lease.status, lease.end_reason, lease.ended_at = (LeaseStatus.ENDED.value, reason.value,
                                                      c.now())
    _withdraw_notices(c, s, lease)  # before charge: leases are locked before the journal
    st = charge(c, s, lease, until, final=True, penalty_bps=penalty_bps)
    volumes.on_lease_end(c, s, lease, reason not in (EndReason.PROVIDER_LOST,
                                                     EndReason.POLICY))
    c.emit(s, "lease_ended", lease.id, owner=lease.owner, provider=lease.provider_id,
           reason=reason.value, charged=lease.charged, refunded=st.refund,
           penalty=st.penalty)
    log.info("lease %s ended: %s (charged %d µ, refunded %d µ, penalty %d µ)", lease.id,
             reason.value, lease.charged, st.refund, st.penalty)


def _withdraw_notices(c: Coordinator, s: Session, lease: Lease) -> None:
    """Take back the preemption notices ``lease`` caused, when it ends before they run
    out: the capacity it needed is free again, and a lease created and ended at once
    (refunded in full) must not evict spot leases for free. Victims are locked in
    ascending id (the lease loop's order); the agent stops sending the notice."""
    now = c.now()
    for victim in s.scalars(select(Lease).where(Lease.preempt_by == lease.id)
                            .order_by(Lease.id).with_for_update()
                            .execution_options(populate_existing=True)):
        if (victim.status == LeaseStatus.ENDED.value or victim.preempt_at is None
                or victim.preempt_at <= now):
            continue
        victim.preempt_at = victim.preempt_by = None
        c.emit(s, "lease_preempt_withdrawn", victim.id, owner=victim.owner,
               provider=victim.provider_id, by=lease.id,
               message=f"the lease that preempted this one ({lease.id}) ended first: "
                       "this spot lease runs on")


def tick(c: Coordinator, cfg: LeaseConfig) -> list[str]:
    """One pass of the lease loop; returns the providers whose leases ended."""
    touched = c.db.run(functools.partial(_tick, c, cfg=cfg))
    if touched:
        c.notifier.published()
    return touched


RESUMED = "leases_resumed"  # network_meta's key: when the fleet last came back from an outage


def resumed(c: Coordinator, s: Session) -> None:
    """Record that the fleet came back from an outage now (``jobs.recover``): the lease
    loop counts a host's silence, and a lease's start window, from here, since nobody
    could heartbeat or start anything while the coordinator was away. Billing still stops
    at a lease's last heartbeat."""
    s.merge(NetworkMeta(key=RESUMED, value=repr(c.now())))


def _resumed_at(s: Session, now: float) -> float:
    """When the fleet last came back, never later than ``now``: a stamp from a clock that
    ran ahead (since set back, or another replica's) must not keep every silent host
    live until the wall clock catches up."""
    value = s.scalar(select(NetworkMeta.value).where(NetworkMeta.key == RESUMED))
    try:
        return min(float(value), now) if value is not None else 0.0
    except ValueError:
        return 0.0


def _restoring(s: Session, lease: Lease, cfg: LeaseConfig) -> bool:
    """Whether ``lease``'s host was handed a lease that restores a volume's snapshot
    (this one, or one before it within the start window: its agent starts leases one at
    a time). A volume's content is its renter's: a snapshot made to unpack slowly would
    have the host miss the window, and its stake paid the penalty for the renter's data.
    Not a lease handed over after this one (a host's own renter key could otherwise
    cover any missed start with a fresh lease), nor an empty volume (nothing to restore)."""
    at = lease.offered_at
    if at is None:
        return False
    return s.scalar(select(func.count()).select_from(Lease)
                    .join(VolumeMount, VolumeMount.lease_id == Lease.id)
                    .join(Volume, Volume.id == VolumeMount.volume_id)
                    .where(Lease.provider_id == lease.provider_id, Volume.head.is_not(None),
                           Lease.offered_at >= at - cfg.start_timeout,
                           Lease.offered_at <= at)) != 0


def _tick(c: Coordinator, s: Session, *, cfg: LeaseConfig) -> list[str]:
    now = c.now()
    touched: list[str] = []
    rows = s.scalars(select(Lease).where(Lease.status.in_(LIVE)).order_by(Lease.id)
                     .with_for_update()).all()
    back = _resumed_at(s, now)  # after an outage, nobody was silent before this

    def step(lease: Lease) -> None:
        if lease.status == LeaseStatus.PENDING.value:
            if lease.offered_at is not None and (
                    now - max(lease.offered_at, back) > cfg.start_timeout):
                lease.detail = (f"not started within {cfg.start_timeout:.0f} s of being "
                                "handed to the provider")
                if _restoring(s, lease, cfg):
                    lease.detail += " (a volume was being restored: no penalty)"
                    finish(c, s, lease, EndReason.PROVIDER_LOST, now)
                else:
                    finish(c, s, lease, EndReason.PROVIDER_LOST, now, cfg.penalty_bps)
                touched.append(lease.provider_id)
            elif lease.offered_at is None and now - lease.created_at > cfg.start_timeout:
                # Never handed over (no lease agent polled, or it was held back): the
                # provider never had it, so no penalty; the whole escrow comes back.
                lease.detail = (f"never taken up: the provider's lease agent did not ask for "
                                f"it within {cfg.start_timeout:.0f} s")
                finish(c, s, lease, EndReason.PROVIDER_LOST, now)
                touched.append(lease.provider_id)
            return
        last = lease.last_heartbeat or lease.started_at or now
        at, reason = core.ends_at(billing(lease))
        if lease.preempt_at is not None and (at is None or lease.preempt_at < at):
            at, reason = lease.preempt_at, EndReason.PREEMPTED
        if now - max(last, back) > cfg.grace and (at is None or last < at):
            lease.detail = f"no heartbeat for {now - last:.0f} s (grace {cfg.grace:.0f} s)"
            finish(c, s, lease, EndReason.PROVIDER_LOST, last, cfg.penalty_bps)
            touched.append(lease.provider_id)
        elif at is not None and reason is not None and now >= at:
            finish(c, s, lease, reason, at)
            touched.append(lease.provider_id)
        else:
            if lease.warned_at is None and core.warn_due(billing(lease), now, cfg.warn):
                lease.warned_at = now
                more = ("top it up with `deai lease extend`"
                        if s.get(LeaseHost, lease.provider_id) is not None
                        else "its host has withdrawn its offer: it cannot be extended")
                c.emit(s, "lease_warning", lease.id, owner=lease.owner,
                       ends_at=at, reason=EndReason.ESCROW_EXHAUSTED.value,
                       message=f"escrow runs out in {max(0.0, (at or now) - now):.0f} s; "
                               + more)
            if now - (lease.settled_at or now) >= cfg.settle_every:
                charge(c, s, lease, last)  # only time the provider was heard to be up

    db.each_alone(s, rows, step, what=lambda lease: f"the lease loop's step of {lease.id}")
    _release(c, s, now)
    return touched


def _release(c: Coordinator, s: Session, now: float) -> None:
    """Earnings past their challenge window made spendable, each once: claimed (``FOR
    UPDATE SKIP LOCKED``), since the leases' lock above serializes two ticks only while
    a lease is live (two leaders for a moment, during a failover, both tick)."""
    due = s.scalars(select(LeaseEarning).where(LeaseEarning.released.is_(False),
                                               LeaseEarning.release_at <= now)
                    .order_by(LeaseEarning.id).with_for_update(skip_locked=True)).all()
    by_provider: dict[str, list[LeaseEarning]] = {}
    for e in due:
        by_provider.setdefault(e.provider_id, []).append(e)

    def release(pid: str) -> None:
        rows = by_provider[pid]
        amount = sum(e.amount for e in rows)
        if amount > 0:
            c.settlement.post(s, ledger.release(pid, amount, []))
        for e in rows:
            e.released = True

    db.each_alone(s, sorted(by_provider), release,
                  what=lambda pid: f"releasing the lease earnings of {pid}")


# --- views ------------------------------------------------------------------------------------

def lease_out(lease: Lease, c: Coordinator) -> LeaseOut:
    at, reason = (core.ends_at(billing(lease)) if lease.status == LeaseStatus.ACTIVE.value
                  else (None, None))
    return LeaseOut(
        id=lease.id, owner=lease.owner, provider_id=lease.provider_id, status=lease.status,
        end_reason=lease.end_reason, cpus=lease.cpus, memory_mb=lease.memory_mb,
        gpus=lease.gpus, gpu_model=lease.gpu_model, network=lease.network, spot=lease.spot,
        price_hour=lease.price_hour, escrow=lease.escrow, charged=lease.charged,
        refunded=lease.refunded, penalty=lease.penalty, created_at=lease.created_at,
        started_at=lease.started_at, last_heartbeat=lease.last_heartbeat,
        term_end=lease.term_end, ends_at=at, ends_by=reason.value if reason else None,
        warned_at=lease.warned_at, preempt_at=lease.preempt_at, ended_at=lease.ended_at,
        detail=lease.detail)


HOSTS_LISTED = 500  # hosts ``public_summary`` lists at most (by id after ``after``): an
# offer costs a host nothing, and one answer listed every host there was


def public_summary(c: Coordinator, after: str = "") -> dict[str, Any]:
    """Counts for the explorer: leases by status and end reason, and the hosts with their
    prices, ``HOSTS_LISTED`` at most, by id after ``after``; ``hosts_total`` counts all,
    ``next`` is the cursor of the next page (None on the last)."""
    with c.db.read() as s:
        by_status = dict(s.execute(select(Lease.status, func.count())
                                   .group_by(Lease.status)).all())
        by_reason = dict(s.execute(select(Lease.end_reason, func.count())
                                   .where(Lease.end_reason.is_not(None))
                                   .group_by(Lease.end_reason)).all())
        total = s.scalar(select(func.count()).select_from(LeaseHost)) or 0
        page = s.scalars(select(LeaseHost).where(LeaseHost.provider_id > after)
                         .order_by(LeaseHost.provider_id).limit(HOSTS_LISTED + 1)).all()
        host_rows = [{"provider_id": h.provider_id, "cpus": h.cpus, "memory_mb": h.memory_mb,
                      "gpus": h.gpus, "prices": dict(h.prices)} for h in page[:HOSTS_LISTED]]
    return {"leases": {str(k): int(v) for k, v in by_status.items()},
            "end_reasons": {str(k): int(v) for k, v in by_reason.items()},
            "hosts": host_rows, "hosts_total": int(total),
            "next": host_rows[-1]["provider_id"] if len(page) > HOSTS_LISTED else None}
