"""A /v1 request's primary lease is held by heartbeats at most ``REQUEST_HOLD`` (and a
lease's ttl), its caller's longest wait: a provider holding one, beating on, held it for
the job's whole hour, the caller answered 504 after ten minutes and the escrow held
(past it the lease lapses as hoarding, ``jobs.expire_leases``). A job's lease keeps its
job's bound. Both engines, the gateway's own admission."""

from __future__ import annotations

from sqlalchemy import select

from deai.coordinator import jobs, matching
from deai.coordinator.openai import gateway, keys
from deai.coordinator.service import Coordinator
from deai.core import wire
from deai.core.clock import ManualClock
from deai.core.lifecycle import AssignmentStatus
from deai.store.models import Assignment
from tests.helpers import MODEL
from tests.test_provider_index import c, provider, queue

__all__ = ["c"]  # the engines' fixture


def test_a_requests_lease_is_held_no_longer_than_its_caller_waits(c: Coordinator) -> None:
    assert matching.REQUEST_HOLD == gateway.WAIT
    provider(c, 0, price=1_000, slots=2)
    c.faucet("d" * 64, 10**9)
    key = keys.authenticate(c, keys.create(c, "d" * 64, wire.ApiKeyIn(name="t")).key or "")
    started = gateway.start(c, key, "embeddings", {"model": MODEL, "input": "hello"})
    (tid,) = queue(c, 1)  # a job's task, placed by the matcher
    matching.match_once(c)
    with c.db.read() as s:
        held = {a.task_id: (a.leased_at, a.hold_until) for a in s.scalars(
            select(Assignment).where(Assignment.task_id.in_([started.task_id, tid])))}
    leased, until = held[started.task_id]
    assert until == leased + matching.REQUEST_HOLD + c.settings.lease_ttl
    assert held[tid][1] is None  # embeddings: the job's deadline bounds it


def test_a_streamed_request_is_held_by_its_jobs_deadline_not_the_callers_wait(
        c: Coordinator) -> None:
    """Once text is streamed the request runs on past its caller's wait and is billed
    when it completes: its lease is no longer held only for that wait. Before, a slow
    honest stream lapsed unpaid at ten minutes with its provider beating on, ran again
    from scratch, and its caller (holding ten minutes of text) could cancel for a
    refund."""
    pid = provider(c, 0, price=1_000)
    c.faucet("d" * 64, 10**9)
    key = keys.authenticate(c, keys.create(c, "d" * 64, wire.ApiKeyIn(name="t")).key or "")
    started = gateway.start(c, key, "embeddings", {"model": MODEL, "input": "hello"})
    with c.db.read() as s:
        (a,) = s.scalars(select(Assignment).where(Assignment.task_id == started.task_id))
        aid = a.id
        assert a.hold_until is not None
    assert gateway.mark_streamed(c, started.job_id)
    clock = c.clock
    assert isinstance(clock, ManualClock)
    for _ in range(int((matching.REQUEST_HOLD + 2 * c.settings.lease_ttl) // 20) + 1):
        clock.advance(20)
        c.heartbeat(pid, [aid])
        jobs.expire_leases(c)
    with c.db.read() as s:
        a = s.get(Assignment, aid)
        assert a is not None and a.hold_until is None
        assert a.status == AssignmentStatus.LEASED  # still the streaming provider's
    assert not gateway.cancel(c, "d" * 64, started.job_id)  # answered: runs on, billed
