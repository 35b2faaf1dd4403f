"""A scarce dataset use held by a job that never ran is paid for (``datasets.hold_fee``).

A buyer could take every one of a dataset's ``max_uses`` with jobs priced for nobody to
take (or with a key per slot), cancel them at no cost and submit again, and nobody else
could buy a use while the owner sold nothing. A job on a dataset with ``max_uses`` that
ends without a model now pays the network ``price × idle / HOLD_PERIOD_S`` (a day idle
costs one price), where *idle* is the time the job had no live lease, until its end or
the dataset's revocation: while a lease is live the job waits on the owner's key or on
that provider, not on the buyer's choice. Both engines, the journal audited."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from deai.client.keys import Identity
from deai.coordinator import admission, jobs
from deai.coordinator.datasets import HOLD_PERIOD_S
from deai.coordinator.service import Coordinator
from deai.core import ledger
from deai.core.clock import ManualClock
from deai.core.lifecycle import AssignmentStatus, JobStatus, Role, TaskStatus
from deai.store import journal
from deai.store.models import Assignment, Event, Job, JournalEntry, Task
from deai.store.models_datasets import Dataset, DatasetUse
from tests.helpers import db_audit, register
from tests.races import ENGINES, coordinator

OWNER, BUYER = "a1" * 32, "b2" * 32
SCARCE, OPEN = "ds_" + "5" * 24, "ds_" + "6" * 24
PRICE = 250_000
COMPUTE = 100_000  # the job's escrow beside the royalty


@pytest.fixture(params=ENGINES)
def c(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    yield from coordinator(request, tmp_path)


def clock(c: Coordinator) -> ManualClock:
    assert isinstance(c.clock, ManualClock)
    return c.clock


def dataset(c: Coordinator, dsid: str, max_uses: int | None) -> None:
    with c.db.write() as s:
        s.add(Dataset(id=dsid, owner=OWNER, name="rows", blob_digest=c.blobs.put(b"ct"),
                      size=2, info={}, owner_key="k", price_per_use=PRICE, allow=["train"],
                      expires_at=None, max_uses=max_uses, uses=0, royalties=0,
                      created_at=c.now()))


def use(c: Coordinator, dsid: str) -> str:
    """A job of BUYER's on ``dsid`` admitted now, its escrow holding the royalty."""
    def body(s: Session) -> str:
        job, _ = admission.create(
            c, s, owner=BUYER, kind="train", model="mlp-digits",
            spec={"kind": "train", "model": "mlp-digits", "dataset_id": dsid},
            input_digest=c.blobs.put(b"{}"), max_price=1, shards=[
                admission.ShardIn(c.blobs.put(b"shard"), 1, 1)],
            escrow=COMPUTE + PRICE, deadline=4 * 86_400.0)
        d = s.get(Dataset, dsid, with_for_update=True)
        assert d is not None
        d.uses += 1
        s.add(DatasetUse(dataset_id=dsid, job_id=job.id, job_owner=BUYER, kind="train",
                         price=PRICE, royalty_seq=None, created_at=c.now()))
        return job.id
    return c.db.run(body)


def lease(c: Coordinator, job_id: str, n: int = 1, provider: Identity | None = None) -> str:
    """A provider (``provider``, else a new one) takes the job's task now and holds it,
    waiting for the owner's key; the lease's id."""
    pid = register(c, f"10.9.0.{n}", cpu=f"cpu {n}", ident=provider)

    def body(s: Session) -> None:
        job = s.get(Job, job_id)
        assert job is not None
        task = s.scalars(select(Task).where(Task.job_id == job_id)).one()
        # as the matcher leaves them (``matching._lease``)
        job.status, task.status = JobStatus.RUNNING, TaskStatus.ASSIGNED
        task.attempts += 1
        s.add(Assignment(id=aid, task_id=task.id, job_id=job_id,
                         provider_id=pid, role=Role.PRIMARY,
                         status=AssignmentStatus.LEASED, price=1, leased_at=c.now(),
                         lease_deadline=c.now() + 10**6, delivered=True))

    aid = f"asg_{job_id[-10:]}_{n}"
    c.db.run(body)
    return aid


def fees(c: Coordinator, job_id: str) -> list[dict[str, object]]:
    with c.db.read() as s:
        return [r.body for r in s.scalars(select(JournalEntry).where(
            JournalEntry.kind == "hold_fee").order_by(JournalEntry.seq))
            if r.body["job"] == job_id]


def ended(c: Coordinator, job_id: str, fee: int) -> None:
    """The job's hold fee was ``fee``: paid to the network, counted in its cost (not in
    the dataset's royalties), the rest of its escrow back, the use no longer counted."""
    with c.db.read() as s:
        job = s.get(Job, job_id)
        assert job is not None
        assert (job.cost, job.refunded) == (fee, COMPUTE + PRICE - fee)
        assert journal.balance(s, ledger.escrow(job_id)) == 0
        void = s.scalars(select(Event).where(Event.kind == "dataset_use_void",
                                             Event.body["job"].as_string() == job_id)).one()
        assert void.body["hold_fee"] == fee
        assert s.scalar(select(DatasetUse).where(DatasetUse.job_id == job_id)) is None
    db_audit(c)


def test_a_scarce_use_held_by_a_job_nobody_took_costs_its_time(c: Coordinator) -> None:
    c.faucet(BUYER, 10_000_000)
    dataset(c, SCARCE, max_uses=2)
    held = use(c, SCARCE)
    clock(c).advance(2 * 3600)  # two hours queued, priced for nobody
    jobs.cancel(c, BUYER, held)
    fee = PRICE * 7200 // HOLD_PERIOD_S
    assert fee > 0
    assert fees(c, held) == [{"dataset": SCARCE, "job": held, "payer": BUYER,
                              "amount": fee, "seconds": 7200}]
    ended(c, held, fee)
    with c.db.read() as s:
        d = s.get(Dataset, SCARCE)
        assert d is not None and (d.uses, d.royalties) == (0, 0)
        assert journal.balance(s, ledger.acct(OWNER)) == 0  # nothing for an idle job
        assert journal.balance(s, ledger.FEE) == fee
        assert journal.balance(s, ledger.acct(BUYER)) == 10_000_000 - fee


def test_the_time_after_the_first_lease_is_not_charged(c: Coordinator) -> None:
    """The job then waits on the owner's release (an owner stalling it would earn) or on
    the providers; the hour before the lease is the buyer's."""
    c.faucet(BUYER, 10_000_000)
    dataset(c, SCARCE, max_uses=2)
    job_id = use(c, SCARCE)
    clock(c).advance(3600)
    lease(c, job_id)
    clock(c).advance(5 * 3600)  # the owner never releases the key
    jobs.cancel(c, BUYER, job_id)
    fee = PRICE * 3600 // HOLD_PERIOD_S
    assert [f["seconds"] for f in fees(c, job_id)] == [3600]
    ended(c, job_id, fee)


def test_a_use_held_past_a_day_costs_one_price_no_more(c: Coordinator) -> None:
    c.faucet(BUYER, 10_000_000)
    dataset(c, SCARCE, max_uses=1)
    job_id = use(c, SCARCE)
    clock(c).advance(3 * 86_400 + 5)
    jobs.cancel(c, BUYER, job_id)
    assert [(f["amount"], f["seconds"]) for f in fees(c, job_id)] == [(PRICE, HOLD_PERIOD_S)]
    ended(c, job_id, PRICE)


def test_a_dataset_without_max_uses_has_no_scarce_use_to_hold(c: Coordinator) -> None:
    c.faucet(BUYER, 10_000_000)
    dataset(c, OPEN, max_uses=None)
    job_id = use(c, OPEN)
    clock(c).advance(10 * 3600)
    jobs.cancel(c, BUYER, job_id)
    assert fees(c, job_id) == []
    ended(c, job_id, 0)


def test_a_buyers_own_provider_dropping_the_job_at_once_stops_no_clock(
        c: Coordinator) -> None:
    """The buyer's second key takes the job as soon as it is queued and reports a failure
    a second later; nobody else takes it at its price. The lease was live one second:
    the queue's days after it are charged, up to the price."""
    c.faucet(BUYER, 10_000_000)
    dataset(c, SCARCE, max_uses=1)
    job_id = use(c, SCARCE)
    clock(c).advance(60)
    aid = lease(c, job_id)
    clock(c).advance(1)
    pid = c.db.run(lambda s: s.get(Assignment, aid).provider_id)  # type: ignore[union-attr]
    jobs.report_failure(c, pid, aid, "out of memory")
    clock(c).advance(3 * 86_400)
    jobs.cancel(c, BUYER, job_id)
    assert [(f["amount"], f["seconds"]) for f in fees(c, job_id)] == [(PRICE, HOLD_PERIOD_S)]
    ended(c, job_id, PRICE)


def test_an_owner_stalling_a_lease_then_refusing_it_is_not_paid_for_the_stall(
        c: Coordinator) -> None:
    """The owner's own provider takes the job and holds it (heartbeating) for 20 hours,
    then the owner refuses it: those hours were a live lease, not the buyer's holding."""
    from deai.coordinator import dataset_refusals
    from deai.core import wire_datasets as W

    c.faucet(BUYER, 10_000_000)
    dataset(c, SCARCE, max_uses=1)
    job_id = use(c, SCARCE)
    clock(c).advance(600)
    aid = lease(c, job_id)
    clock(c).advance(20 * 3600)
    pid = c.db.run(lambda s: s.get(Assignment, aid).provider_id)  # type: ignore[union-attr]
    refused = W.RefuseIn(job_id=job_id, providers=[pid])
    assert dataset_refusals.refuse(c, OWNER, SCARCE, refused) == [pid]
    clock(c).advance(300)  # queued again, then the buyer gives up
    jobs.cancel(c, BUYER, job_id)
    assert [f["seconds"] for f in fees(c, job_id)] == [900]
    ended(c, job_id, PRICE * 900 // HOLD_PERIOD_S)


def test_no_use_is_scarce_once_the_dataset_is_revoked(c: Coordinator) -> None:
    from deai.coordinator import datasets as ds

    c.faucet(BUYER, 10_000_000)
    dataset(c, SCARCE, max_uses=2)
    job_id = use(c, SCARCE)
    clock(c).advance(3600)
    ds.revoke(c, OWNER, SCARCE)
    clock(c).advance(9 * 3600)
    jobs.cancel(c, BUYER, job_id)
    assert [f["seconds"] for f in fees(c, job_id)] == [3600]
    ended(c, job_id, PRICE * 3600 // HOLD_PERIOD_S)


def test_the_uncovered_time_between_leases() -> None:
    from deai.coordinator.datasets import _uncovered

    assert _uncovered(0, 100, []) == 100
    assert _uncovered(0, 100, [(10, 20), (15, 30), (50, 60)]) == 100 - 20 - 10
    assert _uncovered(0, 100, [(-5, 200)]) == 0  # clipped to the span
    assert _uncovered(10, 20, [(0, 5), (25, 30)]) == 10  # outside it


def test_a_result_made_without_the_key_is_rejected_and_ends_no_idle_time(
        c: Coordinator) -> None:
    """The buyer's second key takes the job and at once submits made-up output (it was
    never released the key): the result is rejected, its lease ended then, and the queue's
    time after it is charged. A submitted result no longer stops the clock for free."""
    from deai.core import auth, wire
    from deai.store.models import Provider

    c.faucet(BUYER, 10_000_000)
    dataset(c, SCARCE, max_uses=1)
    job_id = use(c, SCARCE)
    clock(c).advance(60)
    ident = Identity.generate()
    aid = lease(c, job_id, provider=ident)
    out = c.blobs.put(b"made-up weights")
    jobs.submit_result(c, ident.id, aid, wire.ResultIn(
        output_digest=out, units=1, seconds=1.0, output_b64=base64.b64encode(
            b"made-up weights").decode(),
        signature=ident.sign(auth.result_message(aid, out, 1))))
    with c.db.read() as s:
        a = s.get(Assignment, aid)
        assert a is not None and a.status == AssignmentStatus.REJECTED
        assert "no dataset key" in (a.error or "")
        assert s.get(Provider, ident.id) is not None
    clock(c).advance(2 * 86_400)
    jobs.cancel(c, BUYER, job_id)
    ended(c, job_id, PRICE)


def test_a_checkpoint_made_without_the_key_is_refused(c: Coordinator) -> None:
    """A primary never released the key cannot record a checkpoint either: its chain
    was made without the rows, and an honest provider leased next would resume from it
    and be paid a royalty's model trained on none of them."""
    import hashlib

    from deai.coordinator import blob_quota, checkpoints
    from deai.core import wire
    from deai.core.errors import Conflict
    from deai.store.models_datasets import DatasetKey

    c.faucet(BUYER, 10_000_000)
    dataset(c, SCARCE, max_uses=1)
    job_id = use(c, SCARCE)
    ident = Identity.generate()
    aid = lease(c, job_id, provider=ident)
    weights = b"weights made without the rows"
    blob_quota.admit(c, ident.id, hashlib.sha256(weights).hexdigest(), len(weights))
    body = wire.CheckpointIn(step=4, digest=c.blobs.put(weights), chain_hash="0" * 64)
    with pytest.raises(Conflict, match="no dataset key") as exc:
        checkpoints.record(c, ident.id, aid, body)
    assert exc.value.field == "assignment"
    with c.db.write() as s:  # released the key, it gets past that check to the chain's
        s.add(DatasetKey(dataset_id=SCARCE, job_id=job_id, provider_id=ident.id,
                         wrapped="a2V5", created_at=c.now()))
    with pytest.raises(Exception) as later:
        checkpoints.record(c, ident.id, aid, body)
    assert "no dataset key" not in str(later.value)


def test_only_a_primary_is_held_to_the_key(c: Coordinator) -> None:
    """A checker may judge without the rows (a chain whose checkpoints were never uploaded
    is unreplayable whatever the key): rejecting its result would let the cheat's audit
    be dropped as a withheld key."""
    from deai.coordinator.datasets import require_key

    job = Job(id="job_x", spec={"dataset_id": SCARCE})
    with c.db.read() as s:
        for role, why in ((Role.PRIMARY, "no dataset key"), (Role.REPLICA, None),
                          (Role.REFEREE, None), (Role.AUDIT, None)):
            got = require_key(s, job, Assignment(role=role.value, provider_id="p" * 64))
            assert (got if got is None else got[:14]) == why
        assert require_key(s, Job(id="job_y", spec={}), Assignment(
            role=Role.PRIMARY.value, provider_id="p" * 64)) is None  # no dataset
