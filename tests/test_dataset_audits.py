"""An audit of a job on a dataset that was revoked can never run: the dataset's key is
released to nobody new, so each verifier leased it failed at once, and the audit,
queued again, held the result's earnings for ever (``jobs.release_earnings`` keeps a
result waiting for its audit). ``datasets.drop_blocked_audits`` (the upkeep loop)
drops such audits, sealed like the audit, and the earnings follow the challenge
window; audits of jobs on live datasets are untouched. It drops, too, an audit whose
dataset's owner let ``KEY_TRIES`` of its leases end without the key. Both engines."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from deai.coordinator import admission, blob_quota, datasets, jobs, public
from deai.coordinator.service import Coordinator
from deai.core import ledger
from deai.core import wire_datasets as W
from deai.core.datasets import Terms
from deai.store import journal
from deai.store.models import Assignment, Event, Payout, Task
from deai.store.models_datasets import DatasetKey, DatasetUse
from tests.helpers import db_audit, register
from tests.races import ENGINES, coordinator, gate, race

OWNER, BUYER, PROVIDER = "a1" * 32, "b2" * 32, "c3" * 32
REVOKED, LIVE = "ds_" + "1" * 24, "ds_" + "2" * 24


@pytest.fixture(params=ENGINES)
def c(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    yield from coordinator(request, tmp_path)


def published(c: Coordinator, *ids: str, buyer_funds: int = 10_000) -> None:
    """The datasets ``ids`` published by OWNER (its ciphertext uploaded and kept), and
    BUYER funded."""
    c.faucet(BUYER, buyer_funds)
    c.faucet(OWNER, 10_000_000)
    for ds in ids:
        data = f"ciphertext of {ds}".encode()
        blob_quota.admit(c, OWNER, hashlib.sha256(data).hexdigest(), len(data))
        datasets.publish(c, OWNER, W.DatasetIn(
            id=ds, name="rows", blob_digest=c.blobs.put(data), size=100, owner_key="a2V5",
            terms=Terms(price_per_use=1, allow=("embeddings",))))


def audited_job(c: Coordinator, dataset_id: str, aid: str) -> str:
    """A completed job on ``dataset_id`` whose one result (``aid``, paid and due for
    release now) waits for an audit (a look-back queued it); returns its task."""
    def body(s: Session) -> str:
        job, (task,) = admission.create(
            c, s, owner=BUYER, kind="embeddings", model="m", spec={"dataset_id": dataset_id},
            input_digest="d" * 64, max_price=1, shards=[admission.ShardIn("e" * 64, 1, 1)],
            escrow=1000, deadline=3600)
        entry, to_provider, _ = c.settlement.pay_task(s, job.id, task.id, aid, PROVIDER, 100)
        s.add(Payout(assignment_id=aid, task_id=task.id, provider_id=PROVIDER,
                     amount=to_provider, release_at=c.now() - 1, released=False,
                     journal_seq=entry.seq, job_id=job.id, forfeited=False))
        job.status, task.status, task.pending_role = "completed", "done", "audit"
        s.add(DatasetUse(dataset_id=dataset_id, job_id=job.id, job_owner=BUYER,
                         kind="embeddings", price=1, royalty_seq=1, created_at=c.now()))
        return task.id
    return c.db.run(body)


def pending_role(c: Coordinator, task_id: str) -> str | None:
    with c.db.read() as s:
        return s.scalar(select(Task.pending_role).where(Task.id == task_id))


def earned(c: Coordinator) -> int:
    with c.db.read() as s:
        return journal.balance(s, ledger.acct(PROVIDER))


def test_an_audit_a_revoked_dataset_blocks_is_dropped_and_the_earnings_go(
        c: Coordinator) -> None:
    published(c, REVOKED, LIVE)
    blocked = audited_job(c, REVOKED, "asg_blocked")
    kept = audited_job(c, LIVE, "asg_kept")

    assert datasets.drop_blocked_audits(c) == 0  # nothing revoked: both wait
    assert jobs.release_earnings(c) == 0  # each result waits for its audit
    assert earned(c) == 0

    datasets.revoke(c, OWNER, REVOKED)
    assert datasets.drop_blocked_audits(c) == 1
    assert datasets.drop_blocked_audits(c) == 0  # once
    assert (pending_role(c, blocked), pending_role(c, kept)) == (None, "audit")
    assert jobs.release_earnings(c) == 1  # the blocked one's result: paid out now
    assert earned(c) > 0
    with c.db.read() as s:
        (ev,) = s.scalars(select(Event).where(Event.kind == "audit_dropped")).all()
        assert (ev.subject, ev.body["reason"]) == (blocked, "dataset revoked")
        # It tells a result was being audited: sealed until the window closes.
        assert "audit_dropped" in public.SEALED
    # The revoked dataset can be deleted now: no audit of it is queued any more.
    assert datasets.delete(c, OWNER, REVOKED).deleted_at is not None
    db_audit(c)


def verifier(c: Coordinator, n: int) -> str:
    return register(c, f"10.7.0.{n}")


def audit_lease(c: Coordinator, task_id: str, pid: str, status: str, *,
                key: bool = False, role: str = "audit") -> None:
    """A lease of ``task_id`` (an audit's unless ``role``) by ``pid``, in ``status``;
    ``key``: the owner released the dataset's key to it."""
    def body(s: Session) -> None:
        t = s.get(Task, task_id)
        assert t is not None
        s.add(Assignment(id=f"asg_{pid[:12]}", task_id=t.id, job_id=t.job_id,
                         provider_id=pid, role=role, status=status, price=0,
                         leased_at=c.now(), lease_deadline=c.now() + 600, delivered=True))
        if key:
            s.add(DatasetKey(dataset_id=LIVE, job_id=t.job_id, provider_id=pid,
                             wrapped="a2V5", created_at=c.now()))
    c.db.run(body)


def test_an_audit_whose_owner_withholds_the_key_is_dropped_after_its_tries(
        c: Coordinator) -> None:
    """An owner that neither releases the key to the audit's verifiers nor revokes held
    the audit, and the result's earnings, for ever: each verifier waited, failed, and the
    audit was queued again. After ``KEY_TRIES`` audit leases ended without the key it is
    dropped; a lease that had the key and failed for another reason does not count, nor
    does a keyless lease of another role (the job's replica, before it completed)."""
    published(c, LIVE)
    task = audited_job(c, LIVE, "asg_withheld")
    vs = [verifier(c, n) for n in range(1, datasets.KEY_TRIES + 3)]

    audit_lease(c, task, vs[0], "failed", key=True)  # it had the key: not the owner's doing
    for v in vs[1:datasets.KEY_TRIES]:
        audit_lease(c, task, v, "failed")
    audit_lease(c, task, vs[datasets.KEY_TRIES], "failed", role="replica")
    assert datasets.drop_blocked_audits(c) == 0
    assert pending_role(c, task) == "audit"
    assert jobs.release_earnings(c) == 0

    audit_lease(c, task, vs[datasets.KEY_TRIES + 1], "expired")  # the last try, keyless
    assert datasets.drop_blocked_audits(c) == 1
    assert datasets.drop_blocked_audits(c) == 0
    assert pending_role(c, task) is None
    assert jobs.release_earnings(c) == 1
    assert earned(c) > 0
    with c.db.read() as s:
        (ev,) = s.scalars(select(Event).where(Event.kind == "audit_dropped")).all()
        assert (ev.subject, ev.body["reason"]) == (task, "dataset key withheld")
    db_audit(c)


def test_two_leaders_dropping_at_once_drop_each_audit_once(c: Coordinator) -> None:
    """Two upkeep passes at once (a leader and the one taking over, or a pass that runs
    long): each blocked audit is dropped once, one ``audit_dropped`` each, by whichever
    pass locked its task first (``SKIP LOCKED``: the other skips it); none is lost."""
    published(c, REVOKED, buyer_funds=100_000)
    tasks = [audited_job(c, REVOKED, f"asg_{i:03d}") for i in range(12)]
    datasets.revoke(c, OWNER, REVOKED)
    counts: list[int] = []
    meet = gate()
    real = c.db.run

    def run_met(fn: Any, **kw: Any) -> Any:  # both passes read, then both write
        meet()
        return real(fn, **kw)

    c.db.run = run_met  # type: ignore[method-assign]
    try:
        assert race(*[lambda: counts.append(datasets.drop_blocked_audits(c))] * 2) == []
    finally:
        c.db.run = real  # type: ignore[method-assign]
    assert sum(counts) == len(tasks)
    with c.db.read() as s:
        dropped = s.scalars(select(Event.subject).where(Event.kind == "audit_dropped")).all()
    assert sorted(dropped) == sorted(tasks)
    assert all(pending_role(c, t) is None for t in tasks)
    db_audit(c)


def test_an_audit_of_a_job_that_gave_its_use_back_is_dropped(c: Coordinator) -> None:
    """A job on a dataset that ended uncompleted gave its use back (``end_use`` deleted
    the row), yet a done task of it may still be audited (drawn at acceptance, or by a
    look-back): no key is released for it any more, so the audit never ran and held the
    result's earnings, and the provider's look-back backlog, for ever."""
    published(c, LIVE)
    kept = audited_job(c, LIVE, "asg_kept")
    void = audited_job(c, LIVE, "asg_void")
    with c.db.write() as s:  # the second job's use given back, as ``end_use`` does
        job_id = s.scalar(select(Task.job_id).where(Task.id == void))
        s.delete(s.scalars(select(DatasetUse).where(DatasetUse.job_id == job_id)).one())
    assert datasets.drop_blocked_audits(c) == 1
    assert (pending_role(c, void), pending_role(c, kept)) == (None, "audit")
    with c.db.read() as s:
        (ev,) = s.scalars(select(Event).where(Event.kind == "audit_dropped")).all()
        assert (ev.subject, ev.body["reason"]) == (void, "dataset use void")
    db_audit(c)
