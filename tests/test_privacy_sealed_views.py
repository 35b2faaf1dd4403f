"""The public views say nothing of checks while their challenge window is open.

A leaseholder reads the explorer, ``/api/events``, the event stream and ``/metrics``
while it holds a lease: a provider page listing another provider's assignment on its
task, a ``verifying`` total or a check counter that moves with its own result, would
tell it that its lease is a check (and whose). And a run of sealed events must not
stall the public feed behind it. The coordinator's applier on a real SQLite database
(``tests.lifecycle_worlds.DbWorld``) on an injected clock, which the tests move past
the window to see everything disclosed.
"""

from __future__ import annotations

from pathlib import Path

import httpx
from sqlalchemy import update

from deai.coordinator import explorer_views as views
from deai.coordinator.metrics import Metrics
from deai.core.clock import ManualClock
from deai.core.lifecycle import Role
from deai.core.lifecycle import decide as D
from deai.store.models import Assignment
from tests.explorer_world import serve
from tests.lifecycle_worlds import DbWorld


def advance(w: DbWorld) -> None:
    clock = w.c.clock
    assert isinstance(clock, ManualClock)
    clock.advance(w.c.settings.challenge_window + 1)


def checked(root: Path) -> tuple[DbWorld, str, str]:
    """A primary's result checked by a replica that agrees, both leased just now:
    returns the world, the primary's and the replica's providers."""
    w = DbWorld(root)
    primary, replica = w.seat(Role.PRIMARY), w.seat(Role.REPLICA)
    with w.c.db.write() as s:  # leased now, announced as the matcher does
        s.execute(update(Assignment).values(leased_at=w.c.now()))
        for x in (primary, replica):
            w.c.emit(s, "task_assigned", w.task_id, job=w.job_id, provider=x.provider,
                     price=900, role=x.role)
    party = {x.id: D.Party(x.id, x.provider, x.role) for x in (primary, replica)}
    w.apply(D.on_placed(w.ctx(), Role.PRIMARY))
    w.apply(D.on_primary(w.ctx(), party[primary.id], replicate=True, rho=1.0))
    return w, primary.provider, replica.provider


def test_provider_page_lists_assignments_only_once_their_window_closed(
        tmp_path: Path) -> None:
    w, primary, replica = checked(tmp_path)
    for pid in (primary, replica):
        page = views.provider_detail(w.c, pid, 50)
        assert (page.recent, page.assignments) == ([], {}), pid[:4]
    advance(w)
    page = views.provider_detail(w.c, primary, 50)
    assert [(r.task_id, r.role) for r in page.recent] == [(w.task_id, "primary")]
    assert sum(page.assignments.values()) == 1


def test_overview_and_metrics_show_no_pending_check(tmp_path: Path) -> None:
    w, primary, _ = checked(tmp_path)
    o = views.overview(w.c, 600.0, 3600.0)
    assert "verifying" not in o.tasks and "verifying" not in o.jobs, (o.tasks, o.jobs)
    assert o.tasks.get("assigned") == 1 and o.jobs_running == 1
    assert o.verification.overhead == 0.0
    m = Metrics()
    m.refresh(w.c)
    assert m.registry.get_sample_value("deai_tasks", {"status": "verifying"}) is None
    assert m.registry.get_sample_value("deai_tasks", {"status": "assigned"}) == 1
    assert m.registry.get_sample_value("deai_jobs", {"status": "verifying"}) is None
    assert m.registry.get_sample_value("deai_placements_total") == 0
    advance(w)
    o = views.overview(w.c, 600.0, 3600.0)
    assert o.verification.overhead == 1.0  # one replica per primary, now public
    m.refresh(w.c)
    assert m.registry.get_sample_value("deai_placements_total") == 2


def test_verification_counts_wait_for_the_window(tmp_path: Path) -> None:
    w, _, _ = checked(tmp_path)
    with w.c.db.write() as s:
        w.c.emit(s, "check_passed", w.task_id, job=w.job_id, provider=w.providers[0])
    o = views.overview(w.c, 600.0, 3600.0)
    m = Metrics()
    m.refresh(w.c)
    passed = {"kind": "check_passed"}
    assert o.verification.checks_passed == 0
    assert m.registry.get_sample_value("deai_verification_outcomes_total", passed) == 0
    advance(w)
    assert views.overview(w.c, 600.0, 3600.0).verification.checks_passed == 1
    m.refresh(w.c)
    assert m.registry.get_sample_value("deai_verification_outcomes_total", passed) == 1


def test_public_events_behind_a_run_of_sealed_ones_are_delivered(tmp_path: Path) -> None:
    w = DbWorld(tmp_path)
    c = w.c
    start = views.latest_event_id(c)
    with c.db.write() as s:
        for i in range(600):  # more than a page (and a stream batch) of them
            c.emit(s, "task_assigned", f"job_x.t{i:05d}", job="job_x", provider="p",
                   price=1, role="primary")
        c.emit(s, "faucet", "someone", amount=5)
    with serve(c) as url:
        page = httpx.get(f"{url}/api/events", params={"after": start, "limit": 500}).json()
        kinds = [e["kind"] for e in page["events"]]
        assert "faucet" in kinds and "task_assigned" not in kinds, kinds
        assert page["next_after"] == page["last_id"] == views.latest_event_id(c)
        got: list[str] = []
        with httpx.stream("GET", f"{url}/api/events/stream",
                          params={"after": start, "heartbeat": 0.5}, timeout=20) as r:
            for line in r.iter_lines():
                if line.startswith("data:") or line.startswith(": heartbeat"):
                    got.append(line)
                if line.startswith("data:") or len(got) >= 4:
                    break
        assert got and got[-1].startswith("data:") and '"faucet"' in got[-1], got


def test_the_event_feed_pages_through_sealed_runs_longer_than_a_scan(
        tmp_path: Path) -> None:
    w = DbWorld(tmp_path)
    c = w.c
    start = views.latest_event_id(c)
    with c.db.write() as s:
        for i in range(views.SCAN + 10):
            c.emit(s, "check_started", f"t{i}", job="job_x", provider="p", role="replica")
        c.emit(s, "faucet", "someone", amount=5)
    first = views.events_after(c, start, 100)
    assert first.events == [] and first.next_after == start + views.SCAN
    second = views.events_after(c, first.next_after, 100)
    assert [e.kind for e in second.events] == ["faucet"]
    assert second.next_after == second.last_id
    advance(w)  # the run's window closed: a reader from the start sees it all, in order
    again = views.events_after(c, start, 500)
    assert len(again.events) == 500 and again.next_after == again.events[-1].id
