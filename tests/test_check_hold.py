"""A check's lease is extended by heartbeats no later than its ``hold_until``
(``matching.check_hold``): a checker that took a check and kept listing it held the
verdict, and the checked result's pay, until the job's deadline. Past the hold the
lease lapses like any lease held and not returned (``hoarding``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from deai.coordinator import jobs, liveness, matching
from deai.core.clock import ManualClock
from deai.core.lifecycle import AssignmentStatus, Role
from deai.store.models import Assignment
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
        hold = matching.check_hold(w.c, s, primary.id)
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
