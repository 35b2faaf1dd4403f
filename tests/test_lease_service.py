"""The coordinator's lease rules on a real database (SQLite and PostgreSQL), with the clock
driven by the test: placement, bad input that moves nothing, activation by heartbeat,
per-second charges, warning then escrow exhaustion, time up, extend, provider lost with
a pro-rata refund and a stake penalty, release of earnings; the journal audits."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from deai.coordinator import leases
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings
from deai.core import ledger
from deai.core.clock import ManualClock
from deai.core.errors import (
    Conflict,
    Forbidden,
    InsufficientFunds,
    InvalidInput,
    NoCapacity,
    NotFound,
)
from deai.core.leases import cost_of
from deai.core.wire_leases import ExtendIn, HostIn, HostOut, LeaseIn, LeaseOut
from deai.store import journal, migrate
from deai.store.models import Event, JournalEntry, Lease, LeaseHost, Provider
from tests.helpers import in_background, paused
from tests.races import gate, race

OWNER, HOST, OTHER = "a" * 64, "b" * 64, "c" * 64
STAKE = 10_000_000
PRICE = 396_000  # 1 CPU + 1 GiB at the prices below: 110 µ a second
CFG = leases.LeaseConfig(grace=30.0, warn=60.0, settle_every=60.0, start_timeout=120.0,
                         penalty_bps=100)


@pytest.fixture(params=["sqlite", "postgres"])
def c(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    url = "" if request.param == "sqlite" else request.getfixturevalue("fresh_pg_url")
    coord = Coordinator(Settings(data_dir=tmp_path, database_url=url, devnet=True,
                                 fee_bps=500, challenge_window=100.0), clock=ManualClock())
    migrate.upgrade(coord.db.engine)
    with coord.db.write() as s:
        s.add(Provider(id=HOST, name="host", hardware={}, benchmark={}, registered_at=0.0,
                       last_seen=coord.now(), capabilities={"sandbox": True}))
        s.flush()
        coord.settlement.post(s, ledger.faucet(HOST, STAKE))
        coord.settlement.post(s, ledger.bond(HOST, STAKE))
        coord.settlement.post(s, ledger.faucet(OWNER, 10_000_000))
    leases.set_host(coord, CFG, HOST, HostIn(cpus=2, memory_mb=4096,
                                             prices={"cpu": 360_000, "memory_gb": 36_000}))
    try:
        yield coord
    finally:
        coord.db.dispose()


def advance(c: Coordinator, seconds: float, *, beat: list[str] | None = None) -> None:
    """Move the clock in steps of 10 s, the provider heartbeating ``beat`` at each."""
    clock = c.clock
    assert isinstance(clock, ManualClock)
    left = seconds
    while left > 0:
        step = min(10.0, left)
        clock.advance(step)
        left -= step
        if beat is not None:
            leases.heartbeat(c, HOST, beat, {})
        leases.tick(c, CFG)


def balance(c: Coordinator, account: str) -> int:
    with c.db.read() as s:
        return journal.balance(s, account)


def audit(c: Coordinator) -> ledger.AuditReport:
    with c.db.read() as s:
        rows = s.scalars(select(JournalEntry).order_by(JournalEntry.seq)).all()
        claimed = journal.balances(s, {a for r in rows for a, _ in r.postings})
        rep = ledger.audit([journal.to_entry(r) for r in rows], claimed)
    assert rep.ok, rep.problems
    return rep


def start(c: Coordinator, **kw: object) -> str:
    body = LeaseIn(**{"cpus": 1, "memory_mb": 1024, "hours": 1, "max_price_hour": 10**6,
                      **kw})  # type: ignore[arg-type]
    lease = leases.create(c, OWNER, body)
    assert lease.status == "pending" and lease.price_hour == PRICE
    assert leases.heartbeat(c, HOST, [lease.id], {}) == []
    assert leases.show(c, OWNER, lease.id).status == "active"
    return lease.id


def test_bad_input_and_no_capacity_move_nothing(c: Coordinator) -> None:
    before = balance(c, ledger.acct(OWNER))
    with pytest.raises(NoCapacity) as e:
        leases.create(c, OWNER, LeaseIn(cpus=1, memory_mb=1024, hours=1, max_price_hour=1000))
    assert "over the maximum" in e.value.message
    with pytest.raises(NoCapacity):
        leases.create(c, OWNER, LeaseIn(cpus=3, memory_mb=1024, hours=1,
                                        max_price_hour=10**7))
    with pytest.raises(InsufficientFunds):
        leases.create(c, OWNER, LeaseIn(cpus=1, memory_mb=1024, hours=1000,
                                        max_price_hour=10**6))
    with pytest.raises(InvalidInput) as e2:
        leases.set_host(c, CFG, HOST, HostIn(cpus=1, memory_mb=1024, prices={"disk": 1}))
    assert e2.value.field == "prices"
    with pytest.raises(ValueError):
        LeaseIn(cpus=1, memory_mb=1024, max_price_hour=1)  # neither hours nor deposit
    assert balance(c, ledger.acct(OWNER)) == before
    with c.db.read() as s:
        assert s.scalars(select(Lease)).all() == []
    audit(c)


def test_charges_per_second_then_time_up_refunds_the_rest(c: Coordinator) -> None:
    lid = start(c, hours=0.05)  # 180 s
    with pytest.raises(Forbidden):
        leases.show(c, OTHER, lid)
    advance(c, 120, beat=[lid])
    mid = leases.show(c, OWNER, lid)
    assert mid.charged == cost_of(PRICE, 120) and mid.status == "active"
    advance(c, 70, beat=[lid])
    done = leases.show(c, OWNER, lid)
    assert (done.status, done.end_reason) == ("ended", "time up")
    assert done.charged == cost_of(PRICE, 180) == 19_800
    assert done.refunded == done.escrow - done.charged == 0
    fee = balance(c, ledger.FEE)
    assert 0 < fee <= 19_800 * 500 // 10_000
    assert balance(c, ledger.pending(HOST)) + balance(c, ledger.acct(HOST)) == 19_800 - fee
    advance(c, 110)  # the challenge window passes: earnings become spendable
    assert balance(c, ledger.pending(HOST)) == 0
    assert balance(c, ledger.acct(HOST)) == 19_800 - fee
    assert leases.heartbeat(c, HOST, [lid], {}) == [lid]  # the agent is told to stop it
    audit(c)


def test_escrow_runs_out_after_a_warning_and_extend_tops_up(c: Coordinator) -> None:
    lid = start(c, hours=None, deposit=11_000)  # 100 s
    advance(c, 30, beat=[lid])
    assert leases.show(c, OWNER, lid).warned_at is None
    extended = leases.extend(c, OWNER, lid, ExtendIn(amount=11_000))  # 200 s in all
    assert extended.escrow == 22_000 and extended.ends_at is not None
    advance(c, 120, beat=[lid])
    warned = leases.show(c, OWNER, lid)
    assert warned.warned_at is not None and warned.status == "active"
    advance(c, 60, beat=[lid])
    done = leases.show(c, OWNER, lid)
    assert (done.end_reason, done.charged, done.refunded) == ("escrow exhausted", 22_000, 0)
    kinds = [e["kind"] for e in done.events]
    assert kinds.index("lease_warning") < kinds.index("lease_ended")
    with pytest.raises(Conflict):
        leases.extend(c, OWNER, lid, ExtendIn(hours=1))
    audit(c)


def test_provider_lost_refunds_pro_rata_and_takes_stake(c: Coordinator) -> None:
    lid = start(c)
    escrow = leases.show(c, OWNER, lid).escrow
    advance(c, 100, beat=[lid])
    advance(c, 25)  # silence, inside the grace
    assert leases.show(c, OWNER, lid).status == "active"
    advance(c, 20)  # past the grace
    lost = leases.show(c, OWNER, lid)
    assert lost.end_reason == "provider lost"
    assert lost.charged == cost_of(PRICE, 100)  # billed to the last heartbeat only
    assert lost.refunded == escrow - lost.charged
    assert lost.penalty == STAKE // 100
    assert balance(c, ledger.stake(HOST)) == STAKE - STAKE // 100
    assert balance(c, ledger.escrow(lid)) == 0
    with c.db.read() as s:
        kinds = [e.kind for e in s.scalars(select(Event).where(Event.subject == lid))]
    assert kinds[-1] == "lease_ended"
    audit(c)


def test_a_lease_nobody_starts_ends_and_owner_end_refunds(c: Coordinator) -> None:
    orphan = leases.create(c, OWNER, LeaseIn(cpus=1, memory_mb=1024, hours=1,
                                             max_price_hour=10**6))
    assert [x.id for x in leases.work_for(c, HOST, set())[0]] == [orphan.id]  # offered
    advance(c, 130)
    gone = leases.show(c, OWNER, orphan.id)
    assert (gone.end_reason, gone.charged, gone.refunded) == ("provider lost", 0, gone.escrow)
    assert gone.penalty == STAKE // 100
    with c.db.write() as s:  # back to the minimum stake, and online again
        c.settlement.post(s, ledger.faucet(HOST, gone.penalty))
        c.settlement.post(s, ledger.bond(HOST, gone.penalty))
    leases.heartbeat(c, HOST, [], {})
    lid = start(c)
    advance(c, 10, beat=[lid])
    ended = leases.end(c, OWNER, lid)
    assert ended.end_reason == "owner ended" and ended.charged == cost_of(PRICE, 10)
    failed = leases.create(c, OWNER, LeaseIn(cpus=1, memory_mb=1024, hours=1,
                                             max_price_hour=10**6))
    assert leases.heartbeat(c, HOST, [], {failed.id: "bwrap: no"}) == [failed.id]
    refused = leases.show(c, OWNER, failed.id)
    assert refused.end_reason == "policy" and refused.refunded == refused.escrow
    audit(c)


def test_a_spot_lease_is_preempted_after_notice(c: Coordinator) -> None:
    spot = leases.create(c, OWNER, LeaseIn(cpus=2, memory_mb=1024, hours=1, spot=True,
                                           max_price_hour=10**6))
    assert spot.price_hour == (2 * 360_000 + 36_000) // 2  # half price
    leases.heartbeat(c, HOST, [spot.id], {})
    advance(c, 20, beat=[spot.id])
    with pytest.raises(NoCapacity):  # a spot lease never preempts another
        leases.create(c, OWNER, LeaseIn(cpus=1, memory_mb=1024, hours=1, spot=True,
                                        max_price_hour=10**6))
    new = leases.create(c, OWNER, LeaseIn(cpus=1, memory_mb=1024, hours=1,
                                          max_price_hour=10**6), CFG)
    assert new.provider_id == HOST and new.price_hour == PRICE > spot.price_hour
    noticed = leases.show(c, OWNER, spot.id)
    assert noticed.preempt_at == c.now() + CFG.notice and noticed.status == "active"
    assert "lease_preempt_notice" in [e["kind"] for e in noticed.events]
    _, _, notices = leases.work_for(c, HOST, {spot.id, new.id})
    assert [n.id for n in notices] == [spot.id]
    advance(c, 60, beat=[spot.id, new.id])
    gone = leases.show(c, OWNER, spot.id)
    assert (gone.end_reason, gone.penalty) == ("preempted", 0)
    assert gone.charged == cost_of(spot.price_hour, 80)
    assert gone.refunded == gone.escrow - gone.charged
    assert leases.show(c, OWNER, new.id).status == "active"
    audit(c)


def releases(c: Coordinator) -> int:
    with c.db.read() as s:
        return len(s.scalars(select(JournalEntry).where(JournalEntry.kind == "release")).all())


def test_two_ticks_at_once_release_the_earnings_once(c: Coordinator,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Two lease loops at once (two leaders for a moment), every lease ended: each reads
    the earnings due and posts their release. Claimed, they are released once; read
    without a lock, both posted it, and the second found the pending account empty."""
    lid = start(c, hours=0.05)
    advance(c, 190, beat=[lid])  # time up: its earnings wait out the challenge window
    assert leases.show(c, OWNER, lid).status == "ended"
    clock = c.clock
    assert isinstance(clock, ManualClock)
    clock.advance(150)  # past the window, not yet released (no tick ran)
    assert balance(c, ledger.pending(HOST)) > 0
    before = releases(c)
    meet, release = gate(), ledger.release

    def slow(*args: object, **kw: object) -> ledger.Draft:
        meet()  # both ticks have read the earnings due before either posts
        return release(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(ledger, "release", slow)
    assert race(lambda: leases.tick(c, CFG), lambda: leases.tick(c, CFG)) == []
    assert releases(c) == before + 1
    assert balance(c, ledger.pending(HOST)) == 0
    audit(c)


def test_two_requests_for_the_last_capacity_get_one_lease(
        c: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two owners ask at once for the host's whole capacity; both have read it free
    before either writes. One gets the lease, the other is told there is no capacity:
    the host is never leased past what it offers. Read without a lock, both got it."""
    meet, hosts, first = gate(), leases.hosts, threading.local()

    def read_together(*args: Any, **kw: Any) -> Any:
        got = hosts(*args, **kw)
        if not getattr(first, "done", False):  # a request's first read only
            first.done = True
            meet()
        return got

    monkeypatch.setattr(leases, "hosts", read_together)
    made: list[str] = []

    def ask() -> None:
        made.append(leases.create(c, OWNER, LeaseIn(cpus=2, memory_mb=1024, hours=1,
                                                    max_price_hour=10**6)).id)

    errors = race(ask, ask)
    assert len(made) == 1 and len(errors) == 1 and isinstance(errors[0], NoCapacity), errors
    with c.db.read() as s:
        live = s.execute(select(Lease.id, Lease.cpus).where(Lease.status.in_(leases.LIVE))).all()
    assert [x.id for x in live] == made and sum(x.cpus for x in live) == 2
    audit(c)


def test_the_start_window_counts_from_the_offer_and_an_unreceived_lease_costs_no_stake(
        c: Coordinator) -> None:
    """A lease the provider's lease agent never received (no lease agent polls, or the
    coordinator held it back) ends refunded without a penalty; one it received and did
    not start within the start timeout, counted from that moment, costs the penalty."""
    unseen = leases.create(c, OWNER, LeaseIn(cpus=1, memory_mb=1024, hours=1,
                                             max_price_hour=10**6))
    advance(c, 130)  # nobody polls for lease work
    gone = leases.show(c, OWNER, unseen.id)
    assert (gone.status, gone.end_reason) == ("ended", "provider lost")
    assert (gone.charged, gone.refunded, gone.penalty) == (0, gone.escrow, 0)
    assert "never taken up" in (gone.detail or "")
    assert balance(c, ledger.stake(HOST)) == STAKE

    leases.heartbeat(c, HOST, [], {})  # online again (silent lease agents look offline)
    late = leases.create(c, OWNER, LeaseIn(cpus=1, memory_mb=1024, hours=1,
                                           max_price_hour=10**6))
    advance(c, 100)  # not offered yet
    assert [x.id for x in leases.work_for(c, HOST, set())[0]] == [late.id]
    assert leases.work_for(c, HOST, {late.id})[0] == []
    advance(c, 100)  # 200 s after its creation, 100 s after the offer: still waiting
    assert leases.show(c, OWNER, late.id).status == "pending"
    advance(c, 30)
    lost = leases.show(c, OWNER, late.id)
    assert (lost.end_reason, lost.refunded, lost.penalty) == ("provider lost", lost.escrow,
                                                              STAKE // 100)
    assert balance(c, ledger.stake(HOST)) == STAKE - STAKE // 100
    audit(c)


def test_a_lease_the_agent_claims_to_know_and_never_starts_costs_the_penalty(
        c: Coordinator) -> None:
    """An agent that names a pending lease in ``known`` without ever being handed it (so
    that it never comes in ``start``) has it as much as one handed over: its start window
    counts, and a miss costs the penalty. Before, the lease ended "never taken up", free,
    and a host offering the lowest price broke every cluster it headed that way."""
    lease = leases.create(c, OWNER, LeaseIn(cpus=1, memory_mb=1024, hours=1,
                                            max_price_hour=10**6))
    for _ in range(13):  # the agent polls every 10 s, saying it knows the lease
        assert leases.work_for(c, HOST, {lease.id}) == ([], [], [])
        advance(c, 10)
    lost = leases.show(c, OWNER, lease.id)
    assert (lost.status, lost.end_reason) == ("ended", "provider lost")
    assert "never taken up" not in (lost.detail or "")
    assert (lost.refunded, lost.penalty) == (lost.escrow, STAKE // 100)
    assert balance(c, ledger.stake(HOST)) == STAKE - STAKE // 100
    audit(c)


def test_ending_the_preempting_lease_withdraws_its_notices(c: Coordinator) -> None:
    """A non-spot lease that preempts a spot lease and ends (or fails) before the notice
    runs out takes its notice back: the spot lease runs on. Before, the preemptor was
    refunded in full and the spot lease still died at ``preempt_at``."""
    spot = leases.create(c, OWNER, LeaseIn(cpus=2, memory_mb=1024, hours=1, spot=True,
                                           max_price_hour=10**6))
    leases.heartbeat(c, HOST, [spot.id], {})
    advance(c, 20, beat=[spot.id])
    evict = leases.create(c, OWNER, LeaseIn(cpus=1, memory_mb=1024, hours=1,
                                            max_price_hour=10**6), CFG)
    assert leases.show(c, OWNER, spot.id).preempt_at is not None
    ended = leases.end(c, OWNER, evict.id)
    assert (ended.charged, ended.refunded) == (0, ended.escrow)
    kept = leases.show(c, OWNER, spot.id)
    assert kept.preempt_at is None and kept.status == "active"
    assert "lease_preempt_withdrawn" in [e["kind"] for e in kept.events]
    _, _, notices = leases.work_for(c, HOST, {spot.id})
    assert notices == []
    advance(c, 90, beat=[spot.id])
    assert leases.show(c, OWNER, spot.id).status == "active"

    # a preemptor that fails to start withdraws its notice too; a second one that runs
    # has its victim preempted as before
    failing = leases.create(c, OWNER, LeaseIn(cpus=1, memory_mb=1024, hours=1,
                                              max_price_hour=10**6), CFG)
    assert leases.heartbeat(c, HOST, [spot.id], {failing.id: "bwrap: no"}) == [failing.id]
    assert leases.show(c, OWNER, spot.id).preempt_at is None
    runs = leases.create(c, OWNER, LeaseIn(cpus=1, memory_mb=1024, hours=1,
                                           max_price_hour=10**6), CFG)
    advance(c, 70, beat=[spot.id, runs.id])
    assert leases.show(c, OWNER, spot.id).end_reason == "preempted"
    assert leases.show(c, OWNER, runs.id).status == "active"
    audit(c)


def test_a_failure_reported_for_a_running_lease_is_a_lost_provider(c: Coordinator) -> None:
    """A provider that reports a running lease ``failed`` is paid up to its last heartbeat
    only, and the lease ends ``provider lost``; before, it ended ``policy`` billed to now,
    the silence before the report included. No stake penalty: the lease's own programs
    can end its sandbox. (A lease that never started ends ``policy``: see above.)"""
    lid = start(c)
    advance(c, 100, beat=[lid])
    clock = c.clock
    assert isinstance(clock, ManualClock)
    clock.advance(29)  # silent, still inside the grace
    assert leases.heartbeat(c, HOST, [], {lid: "whatever"}) == [lid]
    x = leases.show(c, OWNER, lid)
    assert x.end_reason == "provider lost" and "whatever" in (x.detail or "")
    assert x.charged == cost_of(PRICE, 100) and x.refunded == x.escrow - x.charged
    assert x.penalty == 0 and balance(c, ledger.stake(HOST)) == STAKE
    audit(c)


def test_a_host_whose_lease_agent_is_silent_gets_no_new_leases(c: Coordinator) -> None:
    """A provider kept online by its job agent alone, its lease agent gone: placement
    passes over it (each lease placed there would wait out the start timeout, never
    taken up) until its lease agent polls or beats again."""
    advance(c, leases.AGENT_SILENT + 10)
    with c.db.write() as s:  # the job agent's heartbeat
        p = s.get(Provider, HOST)
        assert p is not None
        p.last_seen = c.now()
    with pytest.raises(NoCapacity) as e:
        leases.create(c, OWNER, LeaseIn(cpus=1, memory_mb=1024, hours=1,
                                        max_price_hour=10**6))
    assert "lease agent silent" in e.value.message
    assert leases.work_for(c, HOST, set())[0] == []  # the lease agent polls again
    placed = leases.create(c, OWNER, LeaseIn(cpus=1, memory_mb=1024, hours=1,
                                             max_price_hour=10**6))
    assert placed.provider_id == HOST
    audit(c)


def test_a_withdrawn_host_drains_its_leases_and_takes_no_new_one(c: Coordinator) -> None:
    """``withdraw_host``: no lease is placed on the host from then on; the one it runs goes
    on, charged as before, to its end, and is not extended (so the host drains and its
    agent can stop without ending anyone's lease); its offer put again takes leases."""
    lid = start(c, hours=0.05)  # 180 s
    advance(c, 60, beat=[lid])
    before = leases.show(c, OWNER, lid)
    out = leases.withdraw_host(c, HOST)
    assert (out.withdrawn, out.live, out.until) == (True, [lid], before.ends_at)
    again = leases.withdraw_host(c, HOST)  # twice is the same as once
    assert (again.withdrawn, again.live) == (False, [lid])
    with pytest.raises(NoCapacity):
        leases.create(c, OWNER, LeaseIn(cpus=1, memory_mb=1024, hours=1,
                                        max_price_hour=10**6))
    escrow = balance(c, ledger.acct(OWNER))
    with pytest.raises(Conflict) as e:
        leases.extend(c, OWNER, lid, ExtendIn(hours=1))
    assert e.value.details["status"] == "host_withdrawn" and e.value.field == "lease"
    assert balance(c, ledger.acct(OWNER)) == escrow  # the refused extension moved nothing
    assert leases.work_for(c, HOST, {lid})[0] == []  # the agent's poll: nothing to stop
    advance(c, 130, beat=[lid])
    done = leases.show(c, OWNER, lid)
    assert (done.status, done.end_reason) == ("ended", "time up")
    assert done.charged == cost_of(PRICE, 180)
    with c.db.read() as s:
        kinds = [e.kind for e in s.scalars(select(Event).where(Event.subject == HOST))]
    assert kinds.count("lease_host_withdrawn") == 1
    assert "lease_host_withdrawn" in [e["kind"] for e in done.events]  # its owner was told
    drained = leases.withdraw_host(c, HOST)
    assert (drained.live, drained.saving) == ([], [])  # the agent may stop
    leases.set_host(c, CFG, HOST, HostIn(cpus=2, memory_mb=4096,
                                         prices={"cpu": 360_000, "memory_gb": 36_000}))
    assert start(c)
    with pytest.raises(NotFound):
        leases.withdraw_host(c, OTHER)  # not a provider
    audit(c)


def test_an_extension_racing_a_withdrawal_is_seen_by_it_or_refused(c: Coordinator) -> None:
    """An extension that passed its host check while the host withdrew: the withdrawal
    reports the lease's true end either way (it waits for the extension, or the extension
    waits for it and is refused). Unlocked on PostgreSQL, the extension went through and
    the withdrawal reported the end before it: a host that stopped then lost stake."""
    lid = start(c, hours=0.05)

    def extend() -> LeaseOut | Conflict:
        try:
            return leases.extend(c, OWNER, lid, ExtendIn(hours=1))
        except Conflict as e:
            return e

    # ``_extend`` held past its host check (SQLite: the withdrawal waits for it anyway)
    with paused(leases.core, "escrow_for", hold=2 if not c.db.is_sqlite else 0.1) as p:
        extended = in_background(extend)
        assert p.reached.wait(10)
        p.go_after(0.3)  # once the withdrawal waits on the lease
        out = leases.withdraw_host(c, HOST)
        got = extended(10)
    final = leases.show(c, OWNER, lid)
    assert out.live == [lid] and out.until == final.ends_at
    if isinstance(got, Conflict):
        assert got.details["status"] == "host_withdrawn"
    audit(c)


def test_an_offer_put_again_while_the_host_withdraws_is_one_or_the_other(
        c: Coordinator) -> None:
    """``set_host`` holding the host's row while a withdrawal comes: the withdrawal waits
    for it and deletes the offer it wrote (or, the other way round, the offer is written
    again after the withdrawal). Read unlocked on PostgreSQL, the withdrawal deleted the
    row under the offer's update, which then matched no row: a 500."""

    def offer() -> HostOut | Exception:
        try:
            return leases.set_host(c, CFG, HOST, HostIn(
                cpus=4, memory_mb=8192, prices={"cpu": 360_000, "memory_gb": 36_000}))
        except Exception as e:  # noqa: BLE001 - the test reports it
            return e

    # inside the offer's transaction (SQLite: the withdrawal waits for it anyway)
    with paused(leases, "_host_out", hold=2 if not c.db.is_sqlite else 0.1) as p:
        offered = in_background(offer)
        assert p.reached.wait(10)
        p.go_after(0.3)  # once the withdrawal waits on the row
        out = leases.withdraw_host(c, HOST)
        got = offered(10)
    assert not isinstance(got, Exception), repr(got)
    assert got.cpus == 4 and out.withdrawn  # the offer, then its withdrawal
    with c.db.read() as s:
        assert s.get(LeaseHost, HOST) is None
        kinds = s.scalars(select(Event.kind).where(Event.subject == HOST, Event.kind.in_(
            ("lease_host", "lease_host_withdrawn"))).order_by(Event.id)).all()
    assert kinds[-2:] == ["lease_host", "lease_host_withdrawn"]
    assert leases.set_host(c, CFG, HOST, HostIn(  # and it may offer again
        cpus=2, memory_mb=4096, prices={"cpu": 360_000, "memory_gb": 36_000})).cpus == 2


def test_a_volume_still_saving_keeps_the_agent_from_stopping(c: Coordinator) -> None:
    """A lease that ended with a volume owes its last snapshot: the withdrawal lists it
    under ``saving`` (stopping the agent then loses the home's last state)."""
    from deai.coordinator import volumes
    from deai.core.wire_volumes import VolumeIn

    volumes.create(c, OWNER, VolumeIn(name="home", size_gb=1))
    lid = start(c, hours=0.05, volume="home")
    assert leases.withdraw_host(c, HOST).live == [lid]
    advance(c, 190, beat=[lid])
    assert leases.show(c, OWNER, lid).status == "ended"
    out = leases.withdraw_host(c, HOST)
    assert (out.live, out.saving) == ([], [lid])


def test_an_outage_of_the_coordinator_costs_no_host_its_stake(c: Coordinator) -> None:
    """Nobody could heartbeat while the coordinator was away: back, it counts a host's
    silence from its return (``jobs.recover`` → ``leases.resumed``), not from the last
    beat before the outage; before, every live lease ended at the first tick, each
    taking a penalty from its host. Billing still stops at the last beat."""
    from deai.coordinator import jobs

    lid = start(c)
    advance(c, 100, beat=[lid])
    clock = c.clock
    assert isinstance(clock, ManualClock)
    clock.advance(600)  # the coordinator is down ten minutes
    jobs.recover(c)  # a restart: an outage of the whole fleet
    advance(c, 20)  # back, inside the grace: the host has not beaten yet
    assert leases.show(c, OWNER, lid).status == "active"
    advance(c, 20)  # past the grace counted from the return, still silent: lost
    lost = leases.show(c, OWNER, lid)
    assert lost.end_reason == "provider lost"
    assert lost.charged == cost_of(PRICE, 100)  # to its last heartbeat, before the outage
    assert lost.penalty == STAKE // 100  # silent after the return: its stake, once
    audit(c)


def test_a_start_missed_while_a_volume_restores_costs_no_stake(c: Coordinator) -> None:
    """A volume's content is its renter's: a snapshot made to unpack slowly had the host
    miss the start window of that lease (and of the next, started after it), and its
    stake paid for the renter's data, a penalty a renter could farm. A start missed while
    the host restored a volume ends the lease, refunded, without one."""
    from deai.coordinator import volumes
    from deai.core.wire_volumes import VolumeIn
    from deai.store.models_volumes import Volume

    home = volumes.create(c, OWNER, VolumeIn(name="home", size_gb=1))
    with c.db.write() as s:  # a snapshot saved by an earlier lease: there is one to restore
        v = s.get(Volume, home.id)
        assert v is not None
        v.head, v.head_size = c.blobs.put(b"snapshot"), 8
    slow = leases.create(c, OWNER, LeaseIn(cpus=1, memory_mb=1024, hours=1,
                                           max_price_hour=10**6, volume="home"))
    behind = leases.create(c, OWNER, LeaseIn(cpus=1, memory_mb=1024, hours=1,
                                             max_price_hour=10**6))
    assert {x.id for x in leases.work_for(c, HOST, set())[0]} == {slow.id, behind.id}
    advance(c, 130)
    for lid in (slow.id, behind.id):
        gone = leases.show(c, OWNER, lid)
        assert (gone.end_reason, gone.penalty, gone.refunded) == ("provider lost", 0,
                                                                  gone.escrow)
        assert "volume" in (gone.detail or "")
    assert balance(c, ledger.stake(HOST)) == STAKE

    # A lease handed over after the missed one covers nothing: a host's own renter key
    # cannot spare it every penalty with a fresh lease each start window.
    leases.heartbeat(c, HOST, [], {})
    missed = leases.create(c, OWNER, LeaseIn(cpus=1, memory_mb=1024, hours=1,
                                             max_price_hour=10**6))
    assert [x.id for x in leases.work_for(c, HOST, set())[0]] == [missed.id]
    advance(c, 100, beat=[])
    cover = leases.create(c, OWNER, LeaseIn(cpus=1, memory_mb=1024, hours=1,
                                            max_price_hour=10**6, volume="home"))
    assert [x.id for x in leases.work_for(c, HOST, {missed.id})[0]] == [cover.id]
    advance(c, 30, beat=[])
    assert leases.show(c, OWNER, missed.id).penalty == STAKE // 100
    audit(c)


def test_the_public_market_lists_hosts_a_page_at_a_time(c: Coordinator,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """An offer costs a host nothing; the public answer listed every host at once. Now a
    page of ``HOSTS_LISTED`` by id, a cursor to the next, and the count of all."""
    monkeypatch.setattr(leases, "HOSTS_LISTED", 2)
    more = [f"{k:x}" * 64 for k in range(1, 5)]  # 1111..., 2222..., ...
    with c.db.write() as s:
        for pid in more:
            s.add(Provider(id=pid, name=pid[:4], hardware={}, benchmark={}, registered_at=0.0,
                           last_seen=c.now(), capabilities={"sandbox": True}))
    for pid in more:
        leases.set_host(c, CFG, pid, HostIn(cpus=1, memory_mb=1024,
                                            prices={"cpu": 1, "memory_gb": 1}))
    seen, after, pages = [], "", 0
    while True:
        got = leases.public_summary(c, after)
        assert got["hosts_total"] == 5 and len(got["hosts"]) <= 2
        seen += [h["provider_id"] for h in got["hosts"]]
        pages += 1
        if got["next"] is None:
            break
        after = got["next"]
    assert seen == sorted([*more, HOST]) and pages == 3
