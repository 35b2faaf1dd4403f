"""The upkeep loops against a real database, with time driven by the injected clock.

No sleeping: the coordinator's ``ManualClock`` is advanced past each deadline
(lease, heartbeat, job deadline, challenge window, check timeout) and the loop
function is called once, as the background task would.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from deai.coordinator import jobs
from deai.core import ledger
from deai.core.clock import ManualClock
from deai.core.lifecycle import AssignmentStatus, JobStatus, Role, TaskStatus
from deai.core.lifecycle import decide as D
from deai.store.models import Assignment, Event, Job, Payout, Provider, Task
from tests.lifecycle_worlds import ESCROW, DbWorld


def beat(w: DbWorld) -> None:
    """Every provider heartbeats now."""
    with w.c.db.write() as s:
        for p in s.scalars(select(Provider)):
            p.last_seen = w.c.now()


def world(tmp_path: Path) -> tuple[DbWorld, ManualClock]:
    w = DbWorld(tmp_path)
    clock = w.c.clock
    assert isinstance(clock, ManualClock)
    beat(w)
    return w, clock


def lease(w: DbWorld, deadline_in: float) -> str:
    seat = w.seat(Role.PRIMARY)
    w.apply(D.on_placed(w.ctx(), Role.PRIMARY))
    with w.c.db.write() as s:
        a = s.get(Assignment, seat.id)
        assert a is not None
        a.lease_deadline = w.c.now() + deadline_in
    return seat.id


def row(w: DbWorld, cls, key, *attrs: str):  # type: ignore[no-untyped-def]
    with w.c.db.read() as s:
        obj = s.get(cls, key)
        values = tuple(getattr(obj, a) for a in attrs)
        return values[0] if len(values) == 1 else values


def test_a_lease_past_its_deadline_expires_and_the_task_requeues(tmp_path: Path) -> None:
    w, clock = world(tmp_path)
    aid = lease(w, deadline_in=60)
    clock.advance(59)
    beat(w)  # still heartbeating: only the deadline can end the lease
    assert jobs.expire_leases(w.c) == 0
    clock.advance(2)
    beat(w)
    assert jobs.expire_leases(w.c) == 1
    assert row(w, Assignment, aid, "status") == AssignmentStatus.EXPIRED
    assert row(w, Task, w.task_id, "status") == TaskStatus.QUEUED


def test_a_silent_provider_loses_its_lease_before_the_deadline(tmp_path: Path) -> None:
    w, clock = world(tmp_path)
    aid = lease(w, deadline_in=3600)
    clock.advance(w.c.settings.heartbeat_timeout + 1)  # nobody heartbeats meanwhile
    assert jobs.expire_leases(w.c) == 1
    assert row(w, Assignment, aid, "error") == "provider stopped heartbeating"


def test_a_job_past_its_deadline_fails_and_is_refunded(tmp_path: Path) -> None:
    w, clock = world(tmp_path)
    lease(w, deadline_in=10**6)
    clock.advance(3599)
    assert jobs.enforce_deadlines(w.c) == 0
    clock.advance(2)
    assert jobs.enforce_deadlines(w.c) == 1
    status, refunded = row(w, Job, w.job_id, "status", "refunded")
    assert status == JobStatus.FAILED and refunded == ESCROW
    assert w.snapshot()["money"] == {"client": ESCROW}


def test_earnings_are_released_when_the_window_closes(tmp_path: Path) -> None:
    w, clock = world(tmp_path)
    aid = lease(w, deadline_in=3600)
    w.apply(D.on_primary(w.ctx(), D.Party(aid, w.seats[0].provider, Role.PRIMARY),
                         replicate=False, rho=0.0))
    assert row(w, Job, w.job_id, "status") == JobStatus.COMPLETED
    pid = w.seats[0].provider
    with w.c.db.read() as s:
        pending = w.c.settlement.balance(s, ledger.pending(pid))
    assert pending > 0
    clock.advance(w.c.settings.challenge_window - 1)
    assert jobs.release_earnings(w.c) == 0
    clock.advance(2)
    assert jobs.release_earnings(w.c) == 1
    with w.c.db.read() as s:
        assert w.c.settlement.balance(s, ledger.pending(pid)) == 0
        assert s.scalars(select(Payout)).one().released


def test_a_required_check_nobody_takes_sends_the_task_back(tmp_path: Path) -> None:
    w, clock = world(tmp_path)
    aid = lease(w, deadline_in=3600)
    w.apply(D.on_primary(w.ctx(), D.Party(aid, w.seats[0].provider, Role.PRIMARY),
                         replicate=True, rho=1.0))
    assert w.need() == Role.REPLICA
    clock.advance(w.c.settings.verify_timeout + 1)
    assert jobs.give_up_checks(w.c) == 1
    # a new provider's result must be checked (ρ = 1): run it again rather than trust it
    assert row(w, Task, w.task_id, "status") == TaskStatus.QUEUED
    assert row(w, Assignment, aid, "status") == AssignmentStatus.EXPIRED
    with w.c.db.read() as s:
        kinds = [e.kind for e in s.scalars(select(Event).order_by(Event.id))]
    assert "check_abandoned" in kinds and "unverified" not in kinds
