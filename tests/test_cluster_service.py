"""The coordinator's cluster rules on a real database (SQLite and PostgreSQL), the clock
driven by the test: a gang on distinct providers, all or nothing (too many nodes, or not
formed in time: every lease refunded in full); a lost worker is an event and its billing
stops at its last heartbeat; a lost head ends the cluster with a reason and the other
members are refunded past now; reads are the owner's only; the journal audits."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from deai.coordinator import clusters, leases
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings
from deai.core import ledger
from deai.core.clock import ManualClock
from deai.core.errors import Conflict, Forbidden, InsufficientFunds, InvalidInput, NoCapacity
from deai.core.wire_clusters import ClusterIn, RayIn
from deai.core.wire_leases import ExtendIn
from deai.store import migrate
from deai.store.models import Event, Lease
from tests.helpers import db_audit as audit
from tests.helpers import db_balance as balance
from tests.helpers import seed_lease_hosts

OWNER, OTHER = "a" * 64, "c" * 64
HOSTS = ["b" * 63 + str(i) for i in range(3)]
STAKE = 10_000_000
CFG = leases.LeaseConfig(grace=30.0, warn=60.0, settle_every=10.0, start_timeout=600.0,
                         penalty_bps=100)


@pytest.fixture(params=["sqlite", "postgres"])
def c(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    url = "" if request.param == "sqlite" else request.getfixturevalue("fresh_pg_url")
    coord = Coordinator(Settings(data_dir=tmp_path, database_url=url, devnet=True,
                                 fee_bps=500, challenge_window=100.0), clock=ManualClock())
    migrate.upgrade(coord.db.engine)
    seed_lease_hosts(coord, CFG, HOSTS, STAKE, OWNER, 100_000_000)
    try:
        yield coord
    finally:
        coord.db.dispose()


def ask(**kw: object) -> ClusterIn:
    fields: dict[str, object] = {"nodes": 3, "cpus": 1, "memory_mb": 1024, "hours": 1,
                                 "max_price_hour": 10**6, **kw}
    return ClusterIn.model_validate(fields)


def beat(c: Coordinator, up: list[str]) -> None:
    """Each provider in ``up`` heartbeats the live leases it hosts."""
    with c.db.read() as s:
        rows = s.scalars(select(Lease).where(Lease.status.in_(leases.LIVE))).all()
        mine = {h: [x.id for x in rows if x.provider_id == h] for h in up}
    for h, ids in mine.items():
        leases.heartbeat(c, h, ids, {})


def advance(c: Coordinator, seconds: float, up: list[str]) -> None:
    clock = c.clock
    assert isinstance(clock, ManualClock)
    left = seconds
    while left > 0:
        step = min(5.0, left)
        clock.advance(step)
        left -= step
        beat(c, up)
        leases.tick(c, CFG)
        clusters.tick(c)


def test_gang_forms_on_distinct_hosts_and_loses_a_worker_then_the_head(c: Coordinator) -> None:
    cl = clusters.create(c, OWNER, ask())
    assert cl.status == "forming" and len(cl.leases) == 3
    assert sorted(m.provider_id for m in cl.members) == sorted(HOSTS)  # distinct hosts
    with pytest.raises(Forbidden):
        clusters.show(c, OTHER, cl.id)
    with pytest.raises(Conflict):  # Ray is reported only on a running cluster
        clusters.report_ray(c, OWNER, cl.id, RayIn(head_address="10.0.0.1:6379",
                                                    dashboard_port=8265))
    advance(c, 5, HOSTS)
    cl = clusters.show(c, OWNER, cl.id)
    assert cl.status == "running" and all(m.status == "active" for m in cl.members)
    head = cl.members[0].provider_id
    worker = cl.members[2].provider_id
    alive = [h for h in HOSTS if h != worker]

    # a worker's provider goes silent: its lease ends `provider lost`, billed only up to
    # its last heartbeat; the cluster keeps running and records the loss
    advance(c, 20, HOSTS)
    advance(c, 60, alive)
    cl = clusters.show(c, OWNER, cl.id)
    assert cl.status == "running" and cl.lost == [cl.leases[2]]
    lost = cl.members[2]
    assert lost.status == "ended" and lost.end_reason == "provider lost"
    assert lost.charged + lost.refunded == lost.escrow and lost.refunded > 0
    assert any(e["kind"] == "cluster_node_lost" for e in cl.events)
    charged_then = lost.charged
    advance(c, 20, alive)
    assert clusters.show(c, OWNER, cl.id).members[2].charged == charged_then  # stopped

    # the head's provider goes silent: the cluster ends `head lost`, the rest refunded
    advance(c, 60, [h for h in alive if h != head])
    cl = clusters.show(c, OWNER, cl.id)
    assert cl.status == "ended" and cl.end_reason == "head lost", cl.detail
    assert all(m.status == "ended" for m in cl.members)
    assert cl.charged + cl.refunded == cl.escrow and cl.refunded > 0
    audit(c)


def test_all_or_nothing(c: Coordinator) -> None:
    before = balance(c, ledger.acct(OWNER)) if hasattr(ledger, "acct") else None
    with pytest.raises(NoCapacity):  # three hosts, four nodes: nothing stays placed
        clusters.create(c, OWNER, ask(nodes=4))
    (cl,) = clusters.listing(c, OWNER)
    assert cl.status == "ended" and cl.end_reason == "not formed"
    assert len(cl.leases) == 3 and cl.charged == 0 and cl.refunded == cl.escrow
    if before is not None:
        assert balance(c, ledger.acct(OWNER)) == before

    # placed, but the members never start: at the form timeout every lease is refunded
    cl = clusters.create(c, OWNER, ask(form_timeout=30))
    advance(c, 25, [])
    assert clusters.show(c, OWNER, cl.id).status == "forming"
    advance(c, 10, [])
    cl = clusters.show(c, OWNER, cl.id)
    assert cl.status == "ended" and cl.end_reason == "not formed"
    assert cl.charged == 0 and cl.refunded == cl.escrow
    with c.db.read() as s:
        kinds = {e.kind for e in s.scalars(select(Event).where(Event.subject == cl.id))}
    assert {"cluster_created", "cluster_placed", "cluster_ended"} <= kinds
    audit(c)


def test_an_account_that_cannot_escrow_its_nodes_writes_nothing(c: Coordinator) -> None:
    """A cluster whose first lease failed for want of money left its row and two events,
    and an empty account made them without end (found by a red-team review): refused
    first (402, field ``deposit``), nothing written."""
    with c.db.read() as s:
        events = s.scalar(select(func.count()).select_from(Event))
    for deposit in (None, 10**12):  # nothing at all, or less than its deposit per node
        with pytest.raises(InsufficientFunds) as poor:
            clusters.create(c, OTHER if deposit is None else OWNER,
                            ask(**({"deposit": deposit} if deposit else {})))
        assert poor.value.field == "deposit"
    assert clusters.listing(c, OTHER) == clusters.listing(c, OWNER) == []
    with c.db.read() as s:
        assert s.scalar(select(func.count()).select_from(Event)) == events


def test_owner_ends_a_running_cluster(c: Coordinator) -> None:
    cl = clusters.create(c, OWNER, ask(nodes=2))
    advance(c, 5, HOSTS)
    cl = clusters.report_ray(c, OWNER, cl.id, RayIn(
        head_address="10.0.0.1:6379", dashboard_port=8265,
        nodes={cl.leases[0]: {"role": "head", "pid": 7, "ip": "10.0.0.1"}}))
    assert cl.ray and cl.ray["head_address"] == "10.0.0.1:6379"
    with pytest.raises(InvalidInput, match="nodes"):  # a lease that is not a member
        clusters.report_ray(c, OWNER, cl.id, RayIn(head_address="x:1", dashboard_port=1,
                                                    nodes={"lease_0": {}}))
    advance(c, 30, HOSTS)
    cl = clusters.end(c, OWNER, cl.id)
    assert cl.status == "ended" and cl.end_reason == "owner ended"
    assert cl.charged > 0 and cl.charged + cl.refunded == cl.escrow
    audit(c)


@pytest.mark.parametrize("c", ["postgres"], indirect=True)  # SQLite runs writes one by one
def test_a_member_topped_up_while_its_cluster_ends_gets_the_top_up_back(
        c: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cluster loop reads its members, then ends the cluster (its head is gone); in
    between, the owner tops a worker's lease up. The worker is finished as it is now:
    its whole escrow, top-up included, charged or refunded. Finished from the loop's
    first read, the top-up stayed in the lease's escrow account for good."""
    cl = clusters.create(c, OWNER, ask(nodes=2))
    advance(c, 5, HOSTS)
    head, worker = cl.leases
    leases.end(c, OWNER, head)
    step, topped = clusters._step, []

    def top_up_meanwhile(*args: Any) -> int:
        if not topped:  # the members are read; the owner's request commits now
            t = threading.Thread(target=lambda: topped.append(leases.extend(
                c, OWNER, worker, ExtendIn(amount=50_000))))
            t.start()
            t.join(30)
            assert topped, "the top-up did not commit"
        return step(*args)

    monkeypatch.setattr(clusters, "_step", top_up_meanwhile)
    clusters.tick(c)
    ended = clusters.show(c, OWNER, cl.id)
    assert ended.status == "ended" and ended.end_reason == "head lost"
    with c.db.read() as s:
        w = s.get(Lease, worker)
        assert w is not None and w.status == "ended"
        assert w.escrow == topped[0].escrow and w.charged + w.refunded == w.escrow
    assert balance(c, ledger.escrow(worker)) == 0
    audit(c)


def test_nodes_placed_after_the_cluster_ended_are_ended_and_refunded(
        c: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The cluster ends while its request is still placing nodes (the form timeout here;
    the owner's ``cluster end`` alike): the nodes placed after that end at once, refunded
    in full. Before, they were recorded as members of the ended cluster and ran on,
    billed, with nothing left to end them."""
    create, placed = leases.create, []

    def then_the_cluster_loop(*args: Any, **kw: Any) -> Any:
        out = create(*args, **kw)
        placed.append(out.id)
        if len(placed) == 1:  # the form timeout passes while the request places nodes
            clock = c.clock
            assert isinstance(clock, ManualClock)
            clock.advance(2)
            assert clusters.tick(c) == 1
        return out

    monkeypatch.setattr(leases, "create", then_the_cluster_loop)
    cl = clusters.create(c, OWNER, ask(form_timeout=1))
    monkeypatch.undo()
    assert cl.status == "ended" and cl.end_reason == "not formed"
    assert cl.leases == placed and len(placed) == 1  # no more placed once it ended
    assert all(m.status == "ended" for m in cl.members)
    assert cl.charged == 0 and cl.refunded == cl.escrow
    advance(c, 600, HOSTS)
    cl = clusters.show(c, OWNER, cl.id)
    assert cl.charged == 0 and all(m.status == "ended" for m in cl.members)
    audit(c)
