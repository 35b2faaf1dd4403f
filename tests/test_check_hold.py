"""A check's lease is extended by heartbeats no later than its ``hold_until``
(``matching.check_hold``): a checker that took a check and kept listing it held the
verdict, and the checked result's pay, until the job's deadline. Past the hold the
lease lapses like any lease held and not returned (``hoarding``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from deai.coordinator import hoarding, jobs, liveness, matching, reputation
from deai.core import ledger
from deai.core.clock import ManualClock
from deai.core.lifecycle import AssignmentStatus, Role
from deai.store.models import Assignment, Event, Job
from tests.lifecycle_worlds import DbWorld


@pytest.mark.parametrize("path", ["service", "liveness"])
def test_a_checks_lease_is_held_no_later_than_its_hold(tmp_path: Path, path: str,
                                                        fresh_url: str) -> None:
    w = DbWorld(tmp_path, database_url=fresh_url)
    clock, st = w.c.clock, w.c.settings
    assert isinstance(clock, ManualClock)
    primary, replica = w.seat(Role.PRIMARY), w.seat(Role.REPLICA)
    with w.c.db.write() as s:
        p, r = s.get(Assignment, primary.id), s.get(Assignment, replica.id)
        assert p is not None and r is not None
        p.leased_at, p.submitted_at = clock.now() - 50.0, clock.now() - 10.0  # a 40 s run
        p.status = AssignmentStatus.SUBMITTED
        r.check_of, r.leased_at, r.lease_deadline = primary.id, clock.now(), clock.now() + 1
        job = s.get(Job, w.job_id)
        assert job is not None
        hold = matching.check_hold(w.c, s, primary.id, job)
        r.hold_until = r.leased_at + hold
    assert hold == max(matching.CHECK_HOLD_MIN, st.verify_timeout,
                       matching.CHECK_HOLD_RUNS * 40.0) + st.lease_ttl
    until = clock.now() + hold

    def beat() -> float:
        if path == "service":
            w.c.heartbeat(replica.provider, [replica.id])
        else:
            live = liveness.of(w.c)
            live.heartbeat(replica.provider, clock.now(), [replica.id])
            live.flush()
        with w.c.db.read() as s:
            a = s.get(Assignment, replica.id)
            assert a is not None
            return a.lease_deadline

    assert beat() == clock.now() + st.lease_ttl  # well inside the hold: a lease's ttl
    clock.advance(hold - st.lease_ttl / 2)
    assert beat() == until  # near its end: no later than the hold
    clock.advance(st.lease_ttl)
    assert beat() == until  # past it: still the hold, which has passed
    assert jobs.expire_leases(w.c) == 1
    with w.c.db.read() as s:
        a = s.get(Assignment, replica.id)
        assert a is not None and a.status == AssignmentStatus.EXPIRED


def as_command(w: DbWorld, wall_seconds: int) -> None:
    """Make ``w``'s job a command job with this wall-clock limit (its shard unchanged)."""
    with w.c.db.write() as s:
        job = s.get(Job, w.job_id)
        assert job is not None
        job.kind = "command"
        job.spec = {"kind": "command", "model": "bwrap-sandbox", "max_price": 100,
                    "wall_seconds": wall_seconds}


def sit_on_checks(w: DbWorld, checker: str, n: int) -> list[tuple[str, str | None]]:
    """``checker`` takes ``n`` checks of a primary that "ran" in 1 s, one after another,
    and heartbeats each (working, or sitting on it) until it ends; their fates."""
    clock, st = w.c.clock, w.c.settings
    assert isinstance(clock, ManualClock)
    primary = w.seat(Role.PRIMARY)
    with w.c.db.write() as s:
        p = s.get(Assignment, primary.id)
        assert p is not None
        p.leased_at, p.submitted_at = clock.now() - 1.0, clock.now()
        p.status = AssignmentStatus.SUBMITTED
    fates = []
    for j in range(n):
        rid = f"asg_check_{j}"
        with w.c.db.write() as s:
            job = s.get(Job, w.job_id)
            assert job is not None
            hold = matching.check_hold(w.c, s, primary.id, job)
            s.add(Assignment(id=rid, task_id=w.task_id, job_id=w.job_id, provider_id=checker,
                             role=Role.REPLICA, status=AssignmentStatus.LEASED, price=1,
                             leased_at=clock.now(), lease_deadline=clock.now() + st.lease_ttl,
                             delivered=True, units=1, check_of=primary.id,
                             hold_until=clock.now() + hold))
        while True:
            clock.advance(10.0)
            w.c.heartbeat(checker, [rid])
            jobs.expire_leases(w.c)
            with w.c.db.read() as s:
                a = s.get(Assignment, rid)
                assert a is not None
                fate = (a.status, a.error)
            if fate[0] != AssignmentStatus.LEASED:
                break
        fates.append(fate)
    return fates


@pytest.mark.parametrize("kind", ["embeddings", "train"])
def test_an_honest_checker_held_to_an_unbounded_hold_is_not_charged(tmp_path: Path,
                                                                     kind: str) -> None:
    """A colluding primary that answers at once sets its checkers' hold to the floor; a
    check of a job whose spec bounds no run (a long chat or embeddings shard, a training
    replay) may honestly take longer, heartbeating all along. Before, each such lapse
    was charged as hoarding: a reputation fail, and from the third within an hour
    probation and a 1 % slash. Now the check just moves on."""
    w = DbWorld(tmp_path)
    with w.c.db.write() as s:
        job = s.get(Job, w.job_id)
        assert job is not None
        job.kind = kind  # (a train job here keeps an embeddings spec: no bound read either)
    honest = w.providers[5]
    with w.c.db.read() as s:
        stake0 = w.c.settlement.balance(s, ledger.stake(honest))
        rep0 = reputation.get(s, honest, kind)
    fates = sit_on_checks(w, honest, hoarding.REPEATED + 1)
    assert set(fates) == {(AssignmentStatus.EXPIRED, jobs.HOLD_PASSED)}
    with w.c.db.read() as s:
        assert w.c.settlement.balance(s, ledger.stake(honest)) == stake0
        assert reputation.get(s, honest, kind).fails == rep0.fails
        assert not s.scalars(select(Event).where(Event.kind == "slash",
                                                 Event.subject == honest)).all()


def test_sitting_on_a_bounded_check_is_still_hoarding(tmp_path: Path) -> None:
    """A command's checks are held four times its wall-clock limit at least, which no
    honest run outlasts: a checker that sits on one to its end is charged as a hoarder."""
    w = DbWorld(tmp_path)
    as_command(w, wall_seconds=30)
    griefer = w.providers[5]
    with w.c.db.read() as s:
        rep0 = reputation.get(s, griefer, "command")
    fates = sit_on_checks(w, griefer, hoarding.REPEATED)
    assert set(fates) == {(AssignmentStatus.EXPIRED, hoarding.LAPSE)}
    with w.c.db.read() as s:
        assert reputation.get(s, griefer, "command").fails > rep0.fails
        assert s.scalars(select(Event).where(Event.kind == "slash",
                                             Event.subject == griefer)).all()


def test_a_commands_checkers_are_held_for_its_wall_clock_limit(tmp_path: Path) -> None:
    """A command job's checkers may take as long as the client's wall-clock limit allows,
    however fast the checked result claims it ran."""
    w = DbWorld(tmp_path)
    primary = w.seat(Role.PRIMARY)
    as_command(w, wall_seconds=1500)
    with w.c.db.write() as s:
        job = s.get(Job, w.job_id)
        assert job is not None
        hold = matching.check_hold(w.c, s, primary.id, job)
    assert hold == matching.CHECK_HOLD_RUNS * 1500 + w.c.settings.lease_ttl


def test_a_commands_primary_is_held_no_later_than_its_bound(tmp_path: Path) -> None:
    """A command's primary lease is held at most four times its wall-clock limit: past
    that no honest run is still going (the sandbox kills it at the limit), so the lease
    lapses as a hoarded one and the task goes to someone else. Before, a provider that
    kept listing it held the job until its deadline. Kinds with no declared bound keep
    the job's deadline."""
    w = DbWorld(tmp_path)
    clock, st = w.c.clock, w.c.settings
    assert isinstance(clock, ManualClock)
    with w.c.db.write() as s:
        job = s.get(Job, w.job_id)
        assert job is not None
        assert matching.primary_hold(w.c, job) is None  # embeddings: no bound
        job.kind = "command"
        job.spec = {"kind": "command", "model": "bwrap-sandbox", "max_price": 100,
                    "wall_seconds": 300}
        hold = matching.primary_hold(w.c, job)
        bulk = matching._Bulk()
        assert matching._primary_hold(w.c, job, 10.0, bulk) == 10.0 + hold
        assert bulk.holds == {w.job_id: hold}  # the spec parsed once a batch
    assert hold == max(matching.CHECK_HOLD_MIN, matching.CHECK_HOLD_RUNS * 300) + st.lease_ttl
    primary = w.seat(Role.PRIMARY)
    with w.c.db.write() as s:
        a = s.get(Assignment, primary.id)
        assert a is not None
        a.hold_until, a.delivered = clock.now() + hold, True
    with w.c.db.read() as s:
        rep0 = reputation.get(s, primary.provider, "command")
    while True:
        clock.advance(10.0)
        w.c.heartbeat(primary.provider, [primary.id])
        jobs.expire_leases(w.c)
        with w.c.db.read() as s:
            a = s.get(Assignment, primary.id)
            assert a is not None
            fate = (a.status, a.error)
        if fate[0] != AssignmentStatus.LEASED:
            break
    assert fate == (AssignmentStatus.EXPIRED, hoarding.LAPSE)
    with w.c.db.read() as s:
        assert reputation.get(s, primary.provider, "command").fails == rep0.fails + 1
