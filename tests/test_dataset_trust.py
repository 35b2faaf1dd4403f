"""A dataset's owner names the only providers its jobs run on (``Dataset.providers``).

Before, an owner who trusted a few providers could only refuse the others once the
matcher had leased them the job, and each refusal used one of the job's attempts: on
an open market, a trust list failed the jobs it was meant to protect. Now the matcher
places a primary or a replica of a job on a dataset (who read its rows) only on a
provider the list names; an audit or a referee stays the network's verifiers', whom
the list does not bind (an owner that could keep them away would keep its buyers'
cheats unaudited). Both engines, the real matcher."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import select

from deai.client.keys import Identity
from deai.coordinator import datasets, jobs, matching
from deai.coordinator.dataset_refusals import REFUSED
from deai.coordinator.datasets import HOLD_PERIOD_S
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings
from deai.core import wire
from deai.core import wire_datasets as W
from deai.core.clock import ManualClock
from deai.core.errors import Conflict, Forbidden, NoCapacity, NotFound
from deai.core.lifecycle import AssignmentStatus, Role, TaskStatus
from deai.store import migrate
from deai.store.models import Assignment, Event, Job, Task
from deai.store.models_datasets import Dataset
from tests.helpers import register
from tests.races import ENGINES, coordinator
from tests.test_dataset_hold import BUYER, OWNER, PRICE, SCARCE, clock, dataset, ended, fees, use
from tests.test_dataset_refuse import lease_of, placed, refuse, trainers


@pytest.fixture(params=ENGINES)
def c(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    yield from coordinator(request, tmp_path)


def trust(c: Coordinator, providers: list[str] | None, who: str = OWNER) -> W.DatasetOut:
    return datasets.set_providers(c, who, SCARCE, W.ProvidersIn(providers=providers))


def leased_to(c: Coordinator, job_id: str) -> list[str]:
    with c.db.read() as s:
        return sorted(s.scalars(select(Assignment.provider_id).where(
            Assignment.job_id == job_id, Assignment.status == AssignmentStatus.LEASED)))


def test_a_datasets_jobs_go_only_to_the_providers_its_owner_names(c: Coordinator) -> None:
    c.faucet(BUYER, 10_000_000)
    dataset(c, SCARCE, max_uses=None)
    a, b, d = trainers(c, 3)
    out = trust(c, [b, b])  # named twice: kept once
    assert out.providers == [b]
    with c.db.read() as s:  # public: where the buyer's job will run
        assert datasets.show(c, SCARCE).providers == [b]
        assert s.scalars(select(Event.kind).where(Event.subject == SCARCE)).all() == [
            "dataset_providers"]

    job_id = use(c, SCARCE)
    assert placed(c, job_id, [a, b, d]) == b
    more = [use(c, SCARCE) for _ in range(2)]
    for _ in range(3):  # b's one slot taken, a and d free and as cheap: never them
        matching.match_once(c)
    assert [leased_to(c, j) for j in more] == [[], []]
    for j in more:
        jobs.cancel(c, BUYER, j)

    # The owner changes its mind: from now on the job goes only to the new list's. Its
    # live lease stays until the owner refuses it (which no longer costs an attempt of a
    # provider the matcher would otherwise pick at random).
    trust(c, [d])
    assert leased_to(c, job_id) == [b]
    assert refuse(c, job_id, b) == [b]
    assert placed(c, job_id, [a, b, d]) == d

    # Back to anyone: a new job may go to a, as before any list.
    assert trust(c, None).providers is None
    second = use(c, SCARCE)
    assert placed(c, second, [a, b, d]) in {a, b, d}


def test_only_the_owner_names_them_and_bad_lists_change_nothing(c: Coordinator) -> None:
    dataset(c, SCARCE, max_uses=None)
    (a,) = trainers(c, 1)
    with pytest.raises(Forbidden):
        trust(c, [a], who=BUYER)
    with pytest.raises(NotFound):
        datasets.set_providers(c, OWNER, "ds_" + "0" * 24, W.ProvidersIn(providers=[a]))
    for bad in ([], ["A" * 64], ["f" * 65], [a] * (W.MAX_TRUSTED + 1)):
        with pytest.raises(ValidationError):
            W.ProvidersIn(providers=bad)
    with pytest.raises(ValidationError):  # the key must be there: null means any
        W.ProvidersIn.model_validate({})
    with c.db.write() as s:
        row = s.get(Dataset, SCARCE)
        assert row is not None
        row.deleted_at = c.now()
    with pytest.raises(Conflict) as gone:
        trust(c, [a])
    assert gone.value.field == "dataset"
    with c.db.read() as s:
        row = s.get(Dataset, SCARCE)
        assert row is not None and row.providers is None


def test_checks_that_read_the_rows_are_bound_and_the_networks_verifiers_are_not(
        c: Coordinator) -> None:
    """A replica re-runs the job on the rows: the owner's list binds it. An audit or a
    referee goes to the network's verifiers, whom the list does not name: bound, a
    dataset's jobs could never be audited (the owner can still refuse one, and an audit
    refused ``KEY_TRIES`` times is dropped as withheld, ``datasets``)."""
    c.faucet(BUYER, 10_000_000)
    dataset(c, SCARCE, max_uses=None)
    (a,) = trainers(c, 1)
    trust(c, [a])
    job_id = use(c, SCARCE)
    with c.db.read() as s:
        job = s.get(Job, job_id)
        assert job is not None
        task = s.scalars(select(Task).where(Task.job_id == job_id)).one()
        of = matching._Demands(c)
        of.know(s, [job])
        assert of(job, task).only == frozenset({a})
        assert of(job, task, verifier=True).only is None
        # Read through the job's own session when not known beforehand (``demand``).
        assert matching.demand(c, job, task).only == frozenset({a})
        assert BUYER in of(job, task).exclude  # never its own buyer's provider


def test_a_quote_and_an_admission_count_the_named_providers_only(c: Coordinator) -> None:
    c.faucet(BUYER, 10_000_000)
    dataset(c, SCARCE, max_uses=None)
    with c.db.write() as s:  # the public summary a job is planned from
        row = s.get(Dataset, SCARCE)
        assert row is not None
        row.info = {"n": 40, "features": 4, "classes": 3, "sha256": "0" * 64}
    a, b = trainers(c, 2)
    trust(c, [b])
    q = jobs.quote(c, wire.QuoteIn(spec=RAW, shard_units=[1]))
    assert [e["provider"] for e in q.eligible] == [b]
    assert {i["provider"]: i["reasons"] for i in q.ineligible}[a] == ["excluded for this task"]

    # No named provider could run it: refused, naming why, and nothing moves.
    trust(c, ["e" * 64])  # a provider that never registered
    before = c.balance(BUYER)
    body = wire.JobIn(spec=RAW, input_digest=c.blobs.put(b"{}"))
    with pytest.raises(NoCapacity) as none:
        jobs.submit(c, BUYER, body)
    assert none.value.field == "spec"
    assert c.balance(BUYER) == before
    assert datasets.show(c, SCARCE).uses == 0
    trust(c, [b])
    job = jobs.submit(c, BUYER, body)
    assert datasets.show(c, SCARCE).uses == 1
    assert placed(c, job.id, [a, b]) == b


RAW = {"kind": "train", "model": "mlp-digits", "dataset": "file", "dataset_id": SCARCE,
       "dataset_terms": {"price_per_use": 250_000, "allow": ["train"]},
       "max_price": 1, "deadline": 600, "epochs": 1, "batch_size": 16}


def test_the_wait_an_owners_refusal_causes_is_not_the_buyers_to_pay(c: Coordinator) -> None:
    """On a dataset that names its providers, only a provider the owner listed holds a
    lease it refuses: the wait after the refusal, until the next lease, is not charged
    to the buyer as idle holding (without a list it is: a buyer's own keys, refused at
    once, would otherwise hold a scarce use for free). A listed provider that reports a
    failure in the refusal's words is no refusal: the wait after it is charged."""
    c.faucet(BUYER, 10_000_000)
    dataset(c, SCARCE, max_uses=1)
    a, b, d = trainers(c, 3)
    trust(c, [a, b, d])
    job_id = use(c, SCARCE)
    clock(c).advance(3600)  # an hour queued: the buyer's to pay
    assert placed(c, job_id, [a]) == a
    clock(c).advance(30)
    assert refuse(c, job_id, a) == [a]
    clock(c).advance(2 * 3600)  # two hours waiting because of the owner: not charged
    assert placed(c, job_id, [b]) == b
    clock(c).advance(30)
    lease_id = lease_of(c, job_id, b)[0]
    jobs.report_failure(c, b, lease_id, REFUSED)  # b fails, quoting the refusal's words
    clock(c).advance(1800)  # half an hour queued after a failure: charged
    assert placed(c, job_id, [d]) == d
    clock(c).advance(30)
    jobs.cancel(c, BUYER, job_id)
    assert [f["seconds"] for f in fees(c, job_id)] == [3600 + 1800]
    ended(c, job_id, PRICE * (3600 + 1800) // HOLD_PERIOD_S)


VERIFIER = Identity.generate()


@pytest.fixture(params=ENGINES)
def cv(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    """A coordinator whose network trusts one verifier (``VERIFIER``), serving training."""
    url = "" if request.param == "sqlite" else request.getfixturevalue("fresh_pg_url")
    c = Coordinator(Settings(data_dir=tmp_path, database_url=url, devnet=True,
                             verifiers=frozenset({VERIFIER.id})), clock=ManualClock())
    migrate.upgrade(c.db.engine)
    try:
        register(c, "10.99.0.1", workload="train", model="mlp-digits", price=1,
                 cpu="verifier", ident=VERIFIER)
        yield c
    finally:
        c.db.dispose()


def with_summary(c: Coordinator) -> None:
    with c.db.write() as s:  # the public summary a job is planned from
        row = s.get(Dataset, SCARCE)
        assert row is not None
        row.info = {"n": 40, "features": 4, "classes": 3, "sha256": "0" * 64}


def test_a_listed_jobs_replica_comes_from_the_list_and_never_from_outside_it(
        cv: Coordinator) -> None:
    """A replica re-runs the job on the rows: the owner's list binds it as it binds the
    primary (another listed provider checks; an unlisted one never does, however free),
    while audits and referees stay the network's verifiers'. The owner's list is the
    owner's trust, checks included: see docs/sealed.md for what that leaves open."""
    c = cv
    c.faucet(BUYER, 10_000_000)
    dataset(c, SCARCE, max_uses=None)
    a, b, d = trainers(c, 3)
    trust(c, [a, b])
    job_id = use(c, SCARCE)
    assert placed(c, job_id, [a, b, d, VERIFIER.id]) in {a, b}
    with c.db.write() as s:  # its result came in and waits for a replica
        job = s.get(Job, job_id)
        assert job is not None
        job.spec = dict(RAW)  # a whole spec, as admission stores it
        task = s.scalars(select(Task).where(Task.job_id == job_id)).one()
        lease = s.scalars(select(Assignment).where(Assignment.job_id == job_id)).one()
        lease.status = AssignmentStatus.SUBMITTED
        lease.output_digest = c.blobs.put(b"a model")
        task.status, task.pending_role = TaskStatus.VERIFYING, Role.REPLICA
        primary = lease.provider_id
    for pid in (a, b, d, VERIFIER.id):
        c.heartbeat(pid, [])
    matching.match_once(c)
    with c.db.read() as s:
        replica = s.scalars(select(Assignment.provider_id).where(
            Assignment.job_id == job_id, Assignment.role == Role.REPLICA)).one()
    assert replica == (b if primary == a else a)


def test_admission_counts_neither_the_buyer_nor_a_verifier_as_a_listed_provider(
        cv: Coordinator) -> None:
    c = cv
    dataset(c, SCARCE, max_uses=1)
    with_summary(c)
    (a,) = trainers(c, 1)
    c.faucet(a, 10_000_000)
    body = wire.JobIn(spec=RAW, input_digest=c.blobs.put(b"{}"))
    for only in ([a], [VERIFIER.id]):  # a submits: its own provider never runs it
        trust(c, only)
        with pytest.raises(NoCapacity):
            jobs.submit(c, a, body)
        assert datasets.show(c, SCARCE).uses == 0


def test_a_provider_the_list_leaves_out_is_never_released_the_key(c: Coordinator) -> None:
    """A lease placed before the list (or planned as it changed) may be held by a provider
    the list leaves out: ``pending`` names it apart (the serve loop refuses it) and a
    release to it is refused, nothing stored."""
    c.faucet(BUYER, 10_000_000)
    dataset(c, SCARCE, max_uses=None)
    a, b = trainers(c, 2)
    job_id = use(c, SCARCE)
    holder = placed(c, job_id, [a, b])
    trust(c, [b if holder == a else a])
    (p,) = datasets.pending(c, OWNER)
    assert (p.providers, p.unlisted) == ([], [holder])
    with pytest.raises(Conflict) as out:
        datasets.release(c, OWNER, SCARCE, W.ReleaseIn(job_id=job_id, keys={holder: "a2V5"}))
    assert out.value.field == "keys"
    with c.db.read() as s:
        assert datasets.released_to(s, job_id) == set()
    trust(c, None)
    (p,) = datasets.pending(c, OWNER)
    assert (p.providers, p.unlisted) == ([holder], [])


def test_a_lapsed_lease_reads_neither_the_key_nor_the_rows(c: Coordinator) -> None:
    """Past its deadline a lease reads nothing, before the sweep ends it too (as any
    blob's reader, ``access.lease_may_read``): the dataset's key and ciphertext were
    served to it until the sweep came. Its owner is not released a key for it either."""
    c.faucet(BUYER, 10_000_000)
    dataset(c, SCARCE, max_uses=None)
    a, b = trainers(c, 2)
    job_id = use(c, SCARCE)
    holder = placed(c, job_id, [a, b])
    assert datasets.release(c, OWNER, SCARCE, W.ReleaseIn(
        job_id=job_id, keys={holder: "a2V5"})) == [holder]
    assert datasets.key_for(c, holder, SCARCE, job_id).wrapped == "a2V5"
    assert datasets.content(c, holder, SCARCE) == b"ct"
    with c.db.read() as s:
        deadline = s.scalars(select(Assignment.lease_deadline).where(
            Assignment.job_id == job_id)).one()
    clock(c).advance(deadline - c.now() + 1)  # lapsed; no sweep yet
    with c.db.read() as s:
        assert s.scalars(select(Assignment.status).where(
            Assignment.job_id == job_id)).one() == AssignmentStatus.LEASED
    with pytest.raises(NotFound):
        datasets.key_for(c, holder, SCARCE, job_id)
    with pytest.raises(NotFound):
        datasets.content(c, holder, SCARCE)
    assert datasets.pending(c, OWNER) == []
