"""A cluster's member leases are its members from the transaction that makes each one
(SQLite and PostgreSQL, the clock driven by the test).

Before, each member lease was committed on its own and the member list written only
after the last one: a replica killed in between (SIGKILL: no handler runs) left a
cluster with no members, which the form timeout ended ``not formed`` while its leases
went on, started and were billed to the owner with nothing left to end them. Here the
placing request dies between two members, the way a killed process would: nothing
after the first lease's commit runs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from deai.coordinator import clusters, leases
from deai.coordinator.service import Coordinator
from deai.core import ledger
from deai.core.clock import ManualClock
from deai.core.wire_clusters import ClusterIn
from deai.store.models import Lease
from deai.store.models_clusters import Cluster
from tests.helpers import db_audit as audit
from tests.helpers import db_balance as balance
from tests.helpers import seed_lease_hosts
from tests.races import ENGINES, coordinator

OWNER = "a" * 64
HOSTS = ["b" * 63 + str(i) for i in range(3)]
STAKE = 10_000_000
CFG = leases.LeaseConfig(grace=30.0, warn=60.0, settle_every=10.0, start_timeout=600.0,
                         penalty_bps=100)


@pytest.fixture(params=ENGINES)
def c(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    """Three lease hosts with the network, and a funded owner."""
    for coord in coordinator(request, tmp_path):
        seed_lease_hosts(coord, CFG, HOSTS, STAKE, OWNER, 100_000_000)
        yield coord


def ask(**kw: object) -> ClusterIn:
    return ClusterIn.model_validate({"nodes": 3, "cpus": 1, "memory_mb": 1024, "hours": 1,
                                     "max_price_hour": 10**6, **kw})


def advance(c: Coordinator, seconds: float, up: list[str]) -> None:
    """The clock moves on in steps of 5 s; at each, the hosts in ``up`` heartbeat the
    live leases they hold, then the lease loop and the cluster loop run."""
    clock = c.clock
    assert isinstance(clock, ManualClock)
    for _ in range(round(seconds / 5)):
        clock.advance(5)
        with c.db.read() as s:
            rows = s.scalars(select(Lease).where(Lease.status.in_(leases.LIVE))).all()
            mine = {h: [x.id for x in rows if x.provider_id == h] for h in up}
        for h, ids in mine.items():
            leases.heartbeat(c, h, ids, {})
        leases.tick(c, CFG)
        clusters.tick(c)


class Killed(BaseException):
    """The placing process is gone: no ``except Exception`` of it runs."""


def die_on(monkeypatch: pytest.MonkeyPatch, nth: int) -> None:
    """``leases.create``'s ``nth`` call never happens: the process died before it."""
    create, calls = leases.create, [0]

    def dying(*args: Any, **kw: Any) -> Any:
        calls[0] += 1
        if calls[0] == nth:
            raise Killed
        return create(*args, **kw)

    monkeypatch.setattr(leases, "create", dying)


def the_cluster(c: Coordinator) -> tuple[Cluster, list[Lease]]:
    with c.db.read() as s:
        cl = s.scalars(select(Cluster)).one()
        rows = list(s.scalars(select(Lease).order_by(Lease.created_at, Lease.id)))
        s.expunge_all()  # read as they are now, after the session's end
        return cl, rows


def test_a_placer_killed_between_members_leaves_no_lease_behind(
        c: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    before = balance(c, ledger.acct(OWNER))
    die_on(monkeypatch, 3)
    with pytest.raises(Killed):
        clusters.create(c, OWNER, ask(form_timeout=30))
    monkeypatch.undo()
    cl, made = the_cluster(c)
    assert cl.status == "forming" and len(made) == 2
    assert sorted(cl.leases) == sorted(x.id for x in made)  # each from its own commit

    # Its hosts start both leases; the third node never comes, and the gang never forms.
    advance(c, 25, HOSTS)
    cl, made = the_cluster(c)
    assert cl.status == "forming" and all(x.status == "active" for x in made)
    advance(c, 10, HOSTS)
    cl, made = the_cluster(c)
    assert cl.status == "ended" and cl.end_reason == "not formed"
    assert cl.detail == "placement did not finish (2 of 3 nodes placed)"
    assert all(x.status == "ended" for x in made)
    # Started members are billed for their active time (docs/clusters.md), nothing past
    # the end however long their hosts go on beating; the rest of each escrow came back.
    charged = [x.charged for x in made]
    assert all(x > 0 for x in charged)
    assert all(x.charged + x.refunded == x.escrow for x in made)
    advance(c, 600, HOSTS)
    _, made = the_cluster(c)
    assert [x.charged for x in made] == charged and all(x.status == "ended" for x in made)
    assert balance(c, ledger.acct(OWNER)) == before - sum(charged)
    audit(c)


def test_a_member_never_started_is_refunded_in_full(
        c: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The repro's case: killed after the first member; its host takes the lease up only
    after the form timeout has ended the cluster: it is never started nor billed."""
    before = balance(c, ledger.acct(OWNER))
    die_on(monkeypatch, 2)
    with pytest.raises(Killed):
        clusters.create(c, OWNER, ask(nodes=2, form_timeout=30))
    monkeypatch.undo()
    advance(c, 35, [])
    cl, (lease,) = the_cluster(c)
    assert cl.status == "ended" and cl.leases == [lease.id]
    assert lease.status == "ended" and lease.charged == 0 and lease.refunded == lease.escrow
    advance(c, 600, HOSTS)  # its host heartbeats it now: too late
    _, (lease,) = the_cluster(c)
    assert lease.status == "ended" and lease.charged == 0
    assert balance(c, ledger.acct(OWNER)) == before
    audit(c)


def test_a_gang_half_placed_does_not_form(c: Coordinator,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Members are recorded as they are placed, so the cluster loop sees a forming
    cluster with fewer members than nodes: every one of them active is not the gang."""
    create, made = leases.create, []

    def then_the_cluster_loop(*args: Any, **kw: Any) -> Any:
        out = create(*args, **kw)
        made.append(out.id)
        clock = c.clock
        assert isinstance(clock, ManualClock)
        clock.advance(1)
        leases.heartbeat(c, out.provider_id, [out.id], {})  # its host starts it at once
        clusters.tick(c)
        cl, _ = the_cluster(c)
        assert cl.leases == made
        assert cl.status == ("running" if len(made) == 3 else "forming")
        return out

    monkeypatch.setattr(leases, "create", then_the_cluster_loop)
    cl = clusters.create(c, OWNER, ask())
    monkeypatch.undo()
    assert cl.status == "running" and cl.leases == made and cl.head_lease == made[0]
    audit(c)


def test_no_member_is_placed_once_the_owner_ended_it(
        c: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    """The owner's ``end`` while the request places nodes: the members so far end with
    the cluster, and the next lease is not made at all (the member's join refuses it in
    the lease's own transaction), so there is nothing to end late."""
    create, made = leases.create, []

    def then_the_owner_ends(*args: Any, **kw: Any) -> Any:
        out = create(*args, **kw)
        made.append(out.id)
        if len(made) == 1:
            clusters.end(c, OWNER, clusters.listing(c, OWNER)[0].id)
        return out

    monkeypatch.setattr(leases, "create", then_the_owner_ends)
    cl = clusters.create(c, OWNER, ask())
    monkeypatch.undo()
    assert cl.status == "ended" and cl.end_reason == "owner ended"
    assert cl.leases == made and len(made) == 1
    _, rows = the_cluster(c)
    assert [x.id for x in rows] == made and rows[0].status == "ended"
    assert cl.charged == 0 and cl.refunded == cl.escrow
    audit(c)

