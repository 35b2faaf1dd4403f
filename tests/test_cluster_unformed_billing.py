"""A cluster that never forms bills its owner nothing (SQLite and PostgreSQL), the clock
driven by the test: one member starts (the lease loop charges it every few seconds, and
its earnings may even pass the challenge window), another never takes its lease up; at
``not formed`` every charge comes back to the owner, the provider keeps none of it, and
the journal still audits. Before, a provider operator with two keys was paid for every
gang that landed on the pair."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from deai.coordinator import clusters, leases
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings
from deai.core import ledger
from deai.core.clock import ManualClock
from deai.core.wire_clusters import ClusterOut
from deai.core.wire_leases import HostIn
from deai.store import migrate
from deai.store.models import Event, LeaseEarning, Provider
from tests.test_cluster_service import HOSTS, OWNER, STAKE, ask, audit, balance, beat

FUNDS = 100_000_000
CFG = leases.LeaseConfig(grace=30.0, warn=60.0, settle_every=10.0, start_timeout=120.0,
                         penalty_bps=100)


def coordinator(request: pytest.FixtureRequest, tmp_path: Path,
                challenge_window: float) -> Iterator[Coordinator]:
    url = "" if request.param == "sqlite" else request.getfixturevalue("fresh_pg_url")
    coord = Coordinator(Settings(data_dir=tmp_path, database_url=url, devnet=True,
                                 fee_bps=500, challenge_window=challenge_window),
                        clock=ManualClock())
    migrate.upgrade(coord.db.engine)
    with coord.db.write() as s:
        for h in HOSTS[:2]:
            s.add(Provider(id=h, name=h[-4:], hardware={}, benchmark={}, registered_at=0.0,
                           last_seen=coord.now(), capabilities={"sandbox": True}))
        s.flush()
        for h in HOSTS[:2]:
            coord.settlement.post(s, ledger.faucet(h, STAKE))
            coord.settlement.post(s, ledger.bond(h, STAKE))
        coord.settlement.post(s, ledger.faucet(OWNER, FUNDS))
    for h in HOSTS[:2]:
        leases.set_host(coord, CFG, h, HostIn(cpus=2, memory_mb=8192, network=True,
                                              prices={"cpu": 360_000, "memory_gb": 36_000}))
    try:
        yield coord
    finally:
        coord.db.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def c(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    yield from coordinator(request, tmp_path, challenge_window=600.0)


@pytest.fixture(params=["sqlite", "postgres"])
def c_released(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    """Earnings leave pending 20 s after each charge: released before the gang gives up."""
    yield from coordinator(request, tmp_path, challenge_window=20.0)


def advance(c: Coordinator, seconds: float, up: list[str]) -> None:
    clock = c.clock
    assert isinstance(clock, ManualClock)
    for _ in range(int(seconds // 5)):
        clock.advance(5.0)
        beat(c, up)
        leases.tick(c, CFG)
        clusters.tick(c)


def never_forms(c: Coordinator) -> tuple[ClusterOut, str]:
    """A gang of two: one host starts at once, the other never takes its lease up (the
    lease loop ends it ``provider lost`` after the start timeout, 120 s)."""
    cl = clusters.create(c, OWNER, ask(nodes=2))
    fast = cl.members[0].provider_id
    advance(c, 125, [fast])
    out = clusters.show(c, OWNER, cl.id)
    assert out.status == "ended" and out.end_reason == "not formed"
    return out, fast


def check_nothing_billed(c: Coordinator, cl: ClusterOut, fast: str) -> None:
    assert cl.charged == 0 and cl.refunded == cl.escrow, (cl.charged, cl.refunded, cl.escrow)
    assert all(m.charged == 0 for m in cl.members)
    assert balance(c, ledger.acct(OWNER)) == FUNDS
    assert balance(c, ledger.pending(fast)) == 0
    assert balance(c, ledger.acct(fast)) == 0 and balance(c, ledger.stake(fast)) == STAKE
    with c.db.read() as s:
        assert all(e.released for e in s.scalars(select(LeaseEarning)))
        returned = [e.body["cluster"] for e in s.scalars(
            select(Event).where(Event.kind == "lease_charges_returned"))]
    assert returned == [cl.id]
    audit(c)
    leases.tick(c, CFG)  # the release of earnings pays nothing out later either
    assert balance(c, ledger.acct(fast)) == 0


def test_a_member_that_started_is_not_billed(c: Coordinator) -> None:
    cl, fast = never_forms(c)
    started = next(m for m in cl.members if m.provider_id == fast)
    assert started.started_at is not None and started.end_reason == "owner ended"
    check_nothing_billed(c, cl, fast)


def test_earnings_already_released_come_back(c_released: Coordinator) -> None:
    c = c_released
    cl, fast = never_forms(c)
    with c.db.read() as s:
        kinds = [e.body["released"] > 0 for e in s.scalars(
            select(Event).where(Event.kind == "lease_charges_returned"))]
    assert kinds == [True], "no earnings were released before the gang gave up"
    check_nothing_billed(c, cl, fast)
