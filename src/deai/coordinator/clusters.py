"""Clusters on the coordinator: a gang of leases on distinct providers, all or nothing.

A cluster is ``forming → running → ended(reason)`` (``models_clusters.Cluster``):

- ``create``: one lease per node (``leases.create`` with the providers already
  chosen excluded, so every member is a different host, each with ``network``).
  Each lease joins the cluster's member list in its own transaction, under the
  cluster's lock (``_join``): no lease of a cluster exists unrecorded, so ending
  the cluster ends every lease it made, even if the replica placing them died
  in between. If any node cannot be placed, the members so far end at once
  (nothing started, so the whole escrow comes back) and the request fails with
  the placement's 409. The first lease is the Ray head. If the cluster ended
  while its nodes were being placed (the owner's ``end``, the form timeout), its
  members ended with it and no more are placed.
- ``tick`` (the cluster loop): a forming cluster becomes ``running`` when every
  node is placed and every member's lease is active; if that has not happened by
  ``form_by`` (or a member ended first) every live lease ends and is refunded
  through the lease machinery (``leases.finish``: charges up to now, refunds the
  rest, journal entries) and the cluster ends ``not formed``. A running cluster
  whose head lease ended ends ``head lost`` and its other leases end (refunded
  past now); a worker whose lease ended (its provider lost: billing already
  stopped at its last heartbeat) is recorded in ``lost`` with a
  ``cluster_node_lost`` event. When every lease has ended, the cluster ends
  ``members ended``.
- ``report_ray``: the owner's CLI, after starting Ray inside the leases, records
  the head's address and the launcher pids (never the token, which only the
  owner and the members' sandboxes hold).
- ``end``: the owner ends every member lease; ``deai cluster down`` first stops
  the Ray processes it started, by pid, inside each lease.

Money never moves here except through ``leases.finish``: a cluster's bill is the
sum of its members' (node-seconds at each lease's price).
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from deai.coordinator import leases
from deai.coordinator.service import Coordinator, new_id
from deai.core import ledger
from deai.core.errors import Conflict, Forbidden, InsufficientFunds, InvalidInput, NotFound
from deai.core.leases import EndReason, LeaseStatus
from deai.core.wire_clusters import ClusterIn, ClusterOut, RayIn
from deai.core.wire_leases import LeaseIn
from deai.store.models import Event, Lease
from deai.store.models_clusters import Cluster

log = logging.getLogger("deai.coordinator.clusters")

FORMING, RUNNING, ENDED = "forming", "running", "ended"
LIVE = (FORMING, RUNNING)


@dataclass(frozen=True)
class ClusterConfig:
    form_timeout: float = 180.0  # seconds for every member's lease to become active
    tick: float = 1.0

    @classmethod
    def from_env(cls) -> ClusterConfig:
        d = cls()
        return cls(form_timeout=float(os.environ.get("DEAI_CLUSTER_FORM_TIMEOUT",
                                                     d.form_timeout)),
                   tick=float(os.environ.get("DEAI_CLUSTER_TICK", d.tick)))


def create(c: Coordinator, owner: str, body: ClusterIn,
           cfg: ClusterConfig | None = None) -> ClusterOut:
    cfg = cfg or ClusterConfig()
    cid = new_id("cluster")
    now = c.now()
    timeout = body.form_timeout or cfg.form_timeout
    with c.db.write() as s:
        # Nothing written for an account that could not escrow one node each (its deposit,
        # or at least 1 µ): a cluster whose first lease failed for want of money left its
        # row and two events, and an empty account made them without end.
        need = body.nodes * max(1, body.deposit or 0)
        have = c.settlement.balance(s, ledger.acct(owner))
        if have < need:
            raise InsufficientFunds(f"deposit: {body.nodes} nodes need at least {need} µ "
                                    f"in escrow; the account holds {have} µ",
                                    field="deposit", balance=have, needed=need)
        s.add(Cluster(id=cid, owner=owner, status=FORMING, nodes=body.nodes, leases=[],
                      lost=[], created_at=now, form_by=now + timeout))
        c.emit(s, "cluster_created", cid, owner=owner, nodes=body.nodes)
    ask = LeaseIn(cpus=body.cpus, memory_mb=body.memory_mb, gpus=body.gpus,
                  gpu_model=body.gpu_model, hours=body.hours, deposit=body.deposit,
                  max_price_hour=body.max_price_hour, network=True)
    hosts: set[str] = set()
    join = functools.partial(_join, cid=cid)
    try:
        for _ in range(body.nodes):
            lease = leases.create(c, owner, ask, exclude=frozenset(hosts), join=join)
            hosts.add(lease.provider_id)
    except _Ended:
        pass  # ended meanwhile (its owner, the form timeout): its members ended with it
    except Exception as exc:
        _abandon(c, cid, f"only {len(hosts)} of {body.nodes} nodes placed: {exc}")
        raise
    c.db.run(functools.partial(_placed, c, cid=cid, hosts=sorted(hosts)))
    c.notifier.published()
    return show(c, owner, cid)


class _Ended(Conflict):
    """The cluster ended while its nodes were being placed: place no more."""


def _join(s: Session, lease_id: str, *, cid: str) -> None:
    """A member joins in its lease's own transaction, under the cluster's lock: a lease
    exists only as a recorded member of a forming cluster, so whatever ends the cluster
    (its owner, the form timeout, even after the placing replica died between two
    members) ends every lease it made. Recorded only after the last lease, a replica
    killed in between left leases that no cluster knew, billed with nothing to end them;
    placed after the cluster ended, they ran on as members of an ended cluster."""
    cl = s.get(Cluster, cid, with_for_update=True)
    if cl is None or cl.status != FORMING:
        raise _Ended(f"cluster {cid} ended while its nodes were placed "
                     f"({cl.end_reason if cl else 'gone'})", field="cluster")
    cl.leases = [*cl.leases, lease_id]


def _placed(c: Coordinator, s: Session, *, cid: str, hosts: list[str]) -> None:
    """Every node placed: ``cluster_placed``, unless the cluster ended meanwhile."""
    cl = s.get(Cluster, cid, with_for_update=True)
    assert cl is not None
    if cl.status == FORMING:
        c.emit(s, "cluster_placed", cid, owner=cl.owner, leases=list(cl.leases),
               providers=hosts)


def _abandon(c: Coordinator, cid: str, why: str) -> None:
    """A node could not be placed: the cluster ends ``not formed`` with the members it has
    (ended at once; nothing started, so each escrow comes back whole)."""
    def body(s: Session) -> None:
        cl = s.get(Cluster, cid, with_for_update=True)
        assert cl is not None
        if cl.status != ENDED:
            _end(c, s, cl, "not formed", why, EndReason.OWNER_ENDED)

    c.db.run(body)
    c.notifier.published()


def _end(c: Coordinator, s: Session, cl: Cluster, reason: str, detail: str,
         lease_reason: EndReason) -> None:
    """End the cluster and every live member lease (billed up to now, the rest refunded)."""
    now = c.now()
    _end_members(c, s, cl, f"cluster {cl.id} ended: {reason}", lease_reason)
    cl.status, cl.end_reason, cl.detail, cl.ended_at = ENDED, reason, detail[:1000], now
    c.emit(s, "cluster_ended", cl.id, owner=cl.owner, reason=reason, detail=detail[:1000])
    log.info("cluster %s ended: %s (%s)", cl.id, reason, detail)


def _end_members(c: Coordinator, s: Session, cl: Cluster, detail: str,
                 lease_reason: EndReason) -> None:
    """End every live member lease of ``cl`` now (billed up to now, the rest refunded)."""
    now = c.now()
    # Locked in ascending id (the lease loop's order) and read again: the cluster loop
    # read them unlocked, and a lease ended or topped up since by its owner or by the
    # lease loop must be finished as it is now, not as that read had it (its top-up
    # refunded, not stranded in escrow; an ended one left alone).
    members = {x.id: x for x in s.scalars(
        select(Lease).where(Lease.id.in_(cl.leases)).order_by(Lease.id).with_for_update()
        .execution_options(populate_existing=True))}
    for lid in cl.leases:
        lease = members.get(lid)
        if lease is not None and lease.status != LeaseStatus.ENDED.value:
            lease.detail = detail
            leases.finish(c, s, lease, lease_reason, now)


def owned(s: Session, owner: str, cid: str, *, lock: bool = False) -> Cluster:
    cl = s.get(Cluster, cid, with_for_update=lock)
    if cl is None:
        raise NotFound(f"no cluster {cid}", field="cluster")
    if cl.owner != owner:
        raise Forbidden("this cluster belongs to another account")
    return cl


def end(c: Coordinator, owner: str, cid: str) -> ClusterOut:
    def body(s: Session) -> None:
        cl = owned(s, owner, cid, lock=True)
        if cl.status != ENDED:
            _end(c, s, cl, "owner ended", "ended by its owner", EndReason.OWNER_ENDED)

    c.db.run(body)  # run again if it loses a deadlock (the lease loop)
    c.notifier.published()
    return show(c, owner, cid)


def report_ray(c: Coordinator, owner: str, cid: str, body: RayIn) -> ClusterOut:
    with c.db.write() as s:
        cl = owned(s, owner, cid, lock=True)
        if cl.status != RUNNING:
            raise Conflict(f"cluster {cid} is {cl.status}: Ray runs only on a running cluster",
                           status=cl.status)
        unknown = sorted(set(body.nodes) - set(cl.leases))
        if unknown:
            raise InvalidInput(f"nodes: {unknown[0]} is not a member of {cid}", field="nodes")
        cl.ray = {"head_address": body.head_address, "dashboard_port": body.dashboard_port,
                  "nodes": body.nodes}
        c.emit(s, "cluster_ray", cid, owner=owner, head_address=body.head_address)
    return show(c, owner, cid)


def tick(c: Coordinator) -> int:
    """One pass of the cluster loop; the number of clusters that changed state.

    One cluster a transaction: ending one locks its leases and then the journal's head,
    and a second ended in the same transaction would lock its leases after the head,
    against the lease loop's order (its leases, then the head): a deadlock on
    PostgreSQL. Each is re-run if it loses one anyway."""
    now = c.now()
    with c.db.read() as s:
        ids = list(s.scalars(select(Cluster.id).where(Cluster.status.in_(LIVE))
                             .order_by(Cluster.id)))
    changed = 0
    for cid in ids:  # one that fails is logged, and the others still move
        try:
            changed += c.db.run(functools.partial(_tick_one, c, cid=cid, now=now))
        except Exception:
            log.exception("the cluster loop's step of %s failed and was skipped", cid)
    if changed:
        c.notifier.published()
    return changed


def _tick_one(c: Coordinator, s: Session, *, cid: str, now: float) -> int:
    cl = s.get(Cluster, cid, with_for_update=True)
    if cl is None or cl.status not in LIVE:  # ended since the read above
        return 0
    if not cl.leases:  # nothing placed yet (or the placing replica died first)
        if now > cl.form_by:
            _end(c, s, cl, "not formed", "placement did not finish", EndReason.OWNER_ENDED)
            return 1
        return 0
    rows = {x.id: x for x in s.scalars(select(Lease).where(Lease.id.in_(cl.leases)))}
    return _step(c, s, cl, rows, now)


def _step(c: Coordinator, s: Session, cl: Cluster, rows: dict[str, Lease], now: float) -> int:
    status = {lid: (rows[lid].status if lid in rows else LeaseStatus.ENDED.value)
              for lid in cl.leases}
    ended = [lid for lid in cl.leases if status[lid] == LeaseStatus.ENDED.value]
    if cl.status == FORMING:
        placing = len(cl.leases) < cl.nodes  # members join one lease at a time
        if not placing and all(v == LeaseStatus.ACTIVE.value for v in status.values()):
            cl.status, cl.ready_at = RUNNING, now
            c.emit(s, "cluster_formed", cl.id, owner=cl.owner, seconds=now - cl.created_at)
            return 1
        if ended or now > cl.form_by:
            why = (f"member {ended[0]} ended before the gang formed "
                   f"({rows[ended[0]].end_reason if ended[0] in rows else 'gone'})"
                   if ended else f"placement did not finish ({len(cl.leases)} of "
                                 f"{cl.nodes} nodes placed)"
                   if placing else f"not every member started within "
                                   f"{cl.form_by - cl.created_at:.0f} s")
            _end(c, s, cl, "not formed", why, EndReason.OWNER_ENDED)
            return 1
        return 0
    head = cl.leases[0]
    if head in ended:
        lease = rows.get(head)
        _end(c, s, cl, "head lost", f"the head's lease {head} ended: "
             f"{lease.end_reason if lease else 'gone'} ({(lease.detail if lease else '') or ''})",
             EndReason.OWNER_ENDED)
        return 1
    new_lost = [lid for lid in ended if lid not in cl.lost]
    for lid in new_lost:
        lease = rows.get(lid)
        cl.lost = [*cl.lost, lid]
        c.emit(s, "cluster_node_lost", cl.id, owner=cl.owner, lease=lid,
               provider=lease.provider_id if lease else None,
               reason=lease.end_reason if lease else None)
    if len(ended) == len(cl.leases):
        _end(c, s, cl, "members ended", "every member's lease ended", EndReason.OWNER_ENDED)
        return 1
    return 1 if new_lost else 0


# --- views ------------------------------------------------------------------------------------

def cluster_out(s: Session, cl: Cluster, c: Coordinator, *, events: bool = False) -> ClusterOut:
    rows = {x.id: x for x in s.scalars(select(Lease).where(Lease.id.in_(cl.leases)))} \
        if cl.leases else {}
    members = [leases.lease_out(rows[lid], c) for lid in cl.leases if lid in rows]
    out = ClusterOut(
        id=cl.id, owner=cl.owner, status=cl.status, end_reason=cl.end_reason,
        detail=cl.detail, nodes=cl.nodes, head_lease=cl.leases[0] if cl.leases else None,
        leases=list(cl.leases), lost=list(cl.lost), ray=cl.ray,
        price_hour=sum(m.price_hour for m in members if m.status != LeaseStatus.ENDED.value),
        escrow=sum(m.escrow for m in members), charged=sum(m.charged for m in members),
        refunded=sum(m.refunded for m in members), created_at=cl.created_at,
        form_by=cl.form_by, ready_at=cl.ready_at, ended_at=cl.ended_at, members=members)
    if events:
        evs = s.scalars(select(Event).where(Event.of_subject(cl.id)).order_by(Event.id)
                        .limit(200)).all()
        out.events = [{"ts": e.ts, "kind": e.kind, **e.body} for e in evs]
    return out


def show(c: Coordinator, owner: str, cid: str) -> ClusterOut:
    with c.db.read() as s:
        return cluster_out(s, owned(s, owner, cid), c, events=True)


def listing(c: Coordinator, owner: str, limit: int = 100) -> list[ClusterOut]:
    with c.db.read() as s:
        rows = s.scalars(select(Cluster).where(Cluster.owner == owner)
                         .order_by(Cluster.created_at.desc()).limit(limit)).all()
        return [cluster_out(s, x, c) for x in rows]
