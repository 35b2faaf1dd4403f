"""A dataset's owner turns away providers it does not trust (``dataset_refusals.refuse``).

An owner that released its key only to providers it trusted could only withhold it
from the others, and the job held its use, and the provider's slot, until its deadline:
a buyer whose own provider took its job at once held a scarce use for free. Now the
owner refuses such a provider: the lease fails, the task is placed again without it,
the job fails after ``max_attempts`` refusals, and the hold fee charges the queue's time
around the refused leases (``datasets.hold_fee``). Both engines, the real matcher, the journal
audited."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from deai.coordinator import dataset_refusals, jobs, matching
from deai.coordinator.dataset_refusals import REFUSED
from deai.coordinator.datasets import HOLD_PERIOD_S
from deai.coordinator.service import Coordinator
from deai.core import wire_datasets as W
from deai.core.errors import Conflict, Forbidden, InvalidInput, NotFound
from deai.core.lifecycle import AssignmentStatus
from deai.store.models import Assignment, Event, Job, Task
from deai.store.models_datasets import DatasetKey
from tests.helpers import db_audit, register
from tests.races import ENGINES, coordinator
from tests.test_dataset_hold import (
    BUYER,
    COMPUTE,
    OWNER,
    PRICE,
    SCARCE,
    clock,
    dataset,
    ended,
    fees,
    use,
)


@pytest.fixture(params=ENGINES)
def c(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    yield from coordinator(request, tmp_path)


def trainers(c: Coordinator, n: int) -> list[str]:
    """``n`` bonded providers of the job's model, each its own operator, origin and
    hardware."""
    out = []
    for i in range(n):
        pid = register(c, f"10.{20 + i}.0.1", workload="train", model="mlp-digits", price=1,
                       cpu=f"cpu {i}")
        c.faucet(pid, c.settings.min_stake)
        c.bond(pid, c.settings.min_stake)
        out.append(pid)
    return out


def placed(c: Coordinator, job_id: str, online: list[str]) -> str:
    """The matcher's next round, the ``online`` providers having just heartbeated: who
    holds the job's live lease."""
    for pid in online:
        c.heartbeat(pid, [])
    matching.match_once(c)
    with c.db.read() as s:
        (pid,) = s.scalars(select(Assignment.provider_id).where(
            Assignment.job_id == job_id, Assignment.status == AssignmentStatus.LEASED)).all()
    return pid


def refuse(c: Coordinator, job_id: str, *pids: str, who: str = OWNER) -> list[str]:
    return dataset_refusals.refuse(c, who, SCARCE, W.RefuseIn(job_id=job_id, providers=list(pids)))


def lease_of(c: Coordinator, job_id: str, pid: str) -> tuple[str, str, str | None]:
    """``pid``'s lease of the job: its id, status and error."""
    with c.db.read() as s:
        a = s.scalars(select(Assignment).where(Assignment.job_id == job_id,
                                               Assignment.provider_id == pid)).one()
        return a.id, a.status, a.error


def test_a_refused_provider_loses_the_lease_and_the_task_goes_to_another(
        c: Coordinator) -> None:
    c.faucet(BUYER, 10_000_000)
    dataset(c, SCARCE, max_uses=2)
    pool = trainers(c, 2)
    job_id = use(c, SCARCE)
    clock(c).advance(3600)  # an hour queued before any provider
    first = placed(c, job_id, pool)

    # Nothing changes on a refusal that is not the owner's, or names no lease of the job.
    with pytest.raises(Forbidden):
        refuse(c, job_id, first, who=BUYER)
    with pytest.raises(NotFound) as nf:
        refuse(c, "job_" + "0" * 28, first)
    assert nf.value.field == "job_id"
    other = next(p for p in pool if p != first)
    with pytest.raises(InvalidInput) as bad:
        refuse(c, job_id, first, other)
    assert bad.value.field == "providers"
    assert lease_of(c, job_id, first)[1] == AssignmentStatus.LEASED

    assert refuse(c, job_id, first) == [first]
    lost, status, error = lease_of(c, job_id, first)
    assert (status, error) == (AssignmentStatus.FAILED, REFUSED)
    assert c.heartbeat(first, [lost]).drop == [lost]  # its agent stops the work
    assert refuse(c, job_id, first) == []  # its lease has ended: skipped, no error
    with c.db.read() as s:  # no failure of the provider's: an event of its own
        kinds = s.scalars(select(Event.kind).where(Event.kind.in_(
            ("lease_refused", "task_failed")))).all()
    assert kinds == ["lease_refused"]
    clock(c).advance(2 * 3600)  # two more hours before another provider takes it
    assert placed(c, job_id, pool) == other  # never the refused one again

    # Released the key, a provider runs the job: it can no longer be refused.
    with c.db.write() as s:
        s.add(DatasetKey(dataset_id=SCARCE, job_id=job_id, provider_id=other,
                         wrapped="a2V5", created_at=c.now()))
    with pytest.raises(Conflict) as late:
        refuse(c, job_id, other)
    assert late.value.field == "providers"

    # The buyer cancels: the hold ran from admission to the first lease not refused.
    clock(c).advance(5 * 3600)
    jobs.cancel(c, BUYER, job_id)
    assert [f["seconds"] for f in fees(c, job_id)] == [3 * 3600]
    ended(c, job_id, PRICE * 3 * 3600 // HOLD_PERIOD_S)


def test_a_job_every_provider_of_which_is_refused_fails_after_its_attempts(
        c: Coordinator) -> None:
    c.faucet(BUYER, 10_000_000)
    dataset(c, SCARCE, max_uses=1)
    attempts = c.settings.max_attempts
    pool = trainers(c, attempts + 1)
    job_id = use(c, SCARCE)
    refused: list[str] = []
    for _ in range(attempts):
        clock(c).advance(600)
        pid = placed(c, job_id, pool)
        assert pid not in refused
        assert refuse(c, job_id, pid) == [pid]
        refused.append(pid)
    with c.db.read() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.status == "failed"
        task = s.scalars(select(Task).where(Task.job_id == job_id)).one()
        assert task.error is not None and REFUSED in task.error
    # The whole time was held: every lease was refused.
    held = attempts * 600
    assert [f["seconds"] for f in fees(c, job_id)] == [held]
    ended(c, job_id, PRICE * held // HOLD_PERIOD_S)
    assert COMPUTE > 0
    db_audit(c)


def test_the_owner_trust_file_names_providers_by_id(tmp_path: Path) -> None:
    from deai.client.datasets import read_trust

    a, b = "ab" * 32, "cd" * 32
    good = tmp_path / "trusted"
    good.write_text(f"# my own machines\n{a}\n\n{b}  # the lab's\n{a}\n")
    assert read_trust(good) == frozenset({a, b})
    bad = tmp_path / "bad"
    bad.write_text(f"{a}\nnot-a-provider\n")
    with pytest.raises(InvalidInput, match="line 2") as exc:
        read_trust(bad)
    assert exc.value.field == "trust"
