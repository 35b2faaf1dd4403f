"""A dataset owner's refusal (``dataset_refusals.refuse``) racing the refused provider's
result (``jobs.submit_result``) or the buyer's cancel (``jobs.cancel``).

Whichever commits first, the lease ends once: refused (failed, ``REFUSED``, a
``lease_refused`` event), rejected (its result, made without the key, is rejected by the
key rule: ``datasets.require_key``) or cancelled with its job. The loser is told so with
a 409 (the lease or job is over) or does nothing (a refusal skips a lease that has
ended, its job's use given back or not); it never acts on what it read before the
winner committed. The job's escrow comes back once, less the hold fee of the queue's
time before the lease, and the journal audits.

The refusal takes the job's row lock first, as the result and the cancel do. Run against
a copy of ``refuse`` without its locks, on PostgreSQL, it read the lease live while the
other side held it, then wrote its own end over the other's: a lease both rejected and
refused, a task queued again under a cancelled job.

Ten rounds of each race start both sides at a barrier; then each interleaving is forced
once, one side held inside its transaction (``paused``) while the other provably waits
on the job's row lock (PostgreSQL says so in ``pg_stat_activity``). Both engines."""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import select, text

from deai.client.keys import Identity
from deai.coordinator import dataset_refusals, datasets, jobs
from deai.coordinator.dataset_refusals import REFUSED
from deai.coordinator.datasets import HOLD_PERIOD_S
from deai.coordinator.service import Coordinator
from deai.core import auth, wire
from deai.core import wire_datasets as W
from deai.core.errors import Conflict, InvalidInput
from deai.core.lifecycle import AssignmentStatus, JobStatus, TaskStatus, decide
from deai.store.models import Assignment, Event, Job, Task
from tests.helpers import Pause, in_background, paused
from tests.races import ENGINES, coordinator, race
from tests.test_dataset_hold import (
    BUYER,
    OWNER,
    PRICE,
    SCARCE,
    clock,
    dataset,
    ended,
    lease,
    use,
)

QUEUED = 600  # each job's time queued before its lease: what its hold fee charges
FEE = PRICE * QUEUED // HOLD_PERIOD_S
ROUNDS = 10
NO_KEY = "no dataset key"  # the key rule's rejection (``datasets.require_key``)


@pytest.fixture(params=ENGINES)
def c(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Coordinator]:
    yield from coordinator(request, tmp_path)


def market(c: Coordinator) -> None:
    """A funded buyer and the owner's dataset, scarce: a job that ends unused pays for
    the time it held a use."""
    c.faucet(BUYER, 100_000_000)
    dataset(c, SCARCE, max_uses=100)


class Round:
    """A fresh job of BUYER's on the dataset, queued ``QUEUED`` seconds, then leased to a
    provider never released the key. ``last``: the lease is the task's last attempt, so
    that its refusal (or rejection) fails the job."""

    def __init__(self, c: Coordinator, n: int, *, last: bool) -> None:
        self.c, self.last = c, last
        self.job = use(c, SCARCE)
        clock(c).advance(QUEUED)
        if last:  # ``lease`` counts one attempt more
            with c.db.write() as s:
                task = s.scalars(select(Task).where(Task.job_id == self.job)).one()
                task.attempts = c.settings.max_attempts - 1
        self.ident = Identity.generate()
        self.lease = lease(c, self.job, n, provider=self.ident)

    def refuse(self) -> list[str]:
        return dataset_refusals.refuse(self.c, OWNER, SCARCE, W.RefuseIn(
            job_id=self.job, providers=[self.ident.id]))

    def submit(self) -> wire.ResultOut:
        """The provider's made-up result (it never had the rows)."""
        out = f"made-up weights for {self.lease}".encode()
        digest = self.c.blobs.put(out)
        return jobs.submit_result(self.c, self.ident.id, self.lease, wire.ResultIn(
            output_digest=digest, units=1, seconds=1.0,
            output_b64=base64.b64encode(out).decode(),
            signature=self.ident.sign(auth.result_message(self.lease, digest, 1))))

    def cancel(self) -> wire.JobOut:
        return jobs.cancel(self.c, BUYER, self.job)

    def state(self) -> tuple[str, str | None, list[str]]:
        """The lease's status and error, and the kinds of the events of its task and job
        that end a lease or the job, oldest first."""
        with self.c.db.read() as s:
            a = s.get(Assignment, self.lease)
            assert a is not None
            kinds = list(s.scalars(select(Event.kind).where(
                Event.subject.in_((a.task_id, self.job)),
                Event.kind.in_(("lease_refused", "result_rejected", "job_cancelled",
                                "job_failed"))).order_by(Event.id)))
            return a.status, a.error, kinds

    def job_and_task(self) -> tuple[str, str]:
        with self.c.db.read() as s:
            job = s.get(Job, self.job)
            task = s.scalars(select(Task).where(Task.job_id == self.job)).one()
            assert job is not None
            return job.status, task.status


def tried(fn: Callable[[], object]) -> object:
    """What ``fn`` returned, or what it raised."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - the test judges it
        return e


def documented(got: object) -> None:
    """``got`` is a side's answer or a 409 or 422: nothing else escapes."""
    if isinstance(got, Exception):
        assert isinstance(got, (Conflict, InvalidInput)), repr(got)


def sent(fn: Callable[[], object]) -> tuple[threading.Event, Callable[[float], object]]:
    """``fn`` started in a thread: an event set once it has returned or raised, and the
    function that waits for it and gives what it did (``in_background``)."""
    done = threading.Event()

    def run() -> object:
        try:
            return tried(fn)
        finally:
            done.set()

    return done, in_background(run)


def at_once(*fns: Callable[[], object]) -> list[object]:
    """``fns`` started together at a barrier, each in its own thread: what each gave."""
    got: list[object] = [None] * len(fns)

    def side(i: int) -> Callable[[], None]:
        return lambda: got.__setitem__(i, tried(fns[i]))

    assert race(*(side(i) for i in range(len(fns)))) == []
    return got


def refused_or_submitted(r: Round, refused: object, submitted: object) -> None:
    """After a refusal and the provider's result, in either order: one of them ended the
    lease, the other saw it over; the job's escrow comes back once."""
    documented(refused)
    documented(submitted)
    status, error, kinds = r.state()
    if refused == [r.ident.id]:  # the refusal came first
        assert isinstance(submitted, Conflict), repr(submitted)
        assert (status, error) == (AssignmentStatus.FAILED, REFUSED)
        assert [k for k in kinds if k != "job_failed"] == ["lease_refused"], kinds
    else:  # the result came first and is rejected by the key rule; the refusal skips it
        assert refused == [], repr(refused)
        assert isinstance(submitted, wire.ResultOut) and submitted.status == "rejected"
        assert status == AssignmentStatus.REJECTED and NO_KEY in (error or ""), error
        assert [k for k in kinds if k != "job_failed"] == ["result_rejected"], kinds
    job, task = r.job_and_task()
    if r.last:  # its last attempt gone, the job failed with it
        assert (job, task) == (JobStatus.FAILED, TaskStatus.FAILED)
        assert kinds[-1] == "job_failed"
    else:  # queued again for another provider; the buyer gives up
        assert task == TaskStatus.QUEUED and "job_failed" not in kinds
        assert r.cancel().status == JobStatus.CANCELLED
    ended(r.c, r.job, FEE)


def refused_or_cancelled(r: Round, refused: object, cancelled: object) -> None:
    """After a refusal and the buyer's cancel, in either order: the lease ended once, the
    job ended once, its escrow came back once."""
    documented(cancelled)
    status, error, kinds = r.state()
    job, task = r.job_and_task()
    assert task == TaskStatus.FAILED  # the job is over: no task queued under it
    if refused == [r.ident.id]:  # the refusal came first
        assert (status, error) == (AssignmentStatus.FAILED, REFUSED)
        if r.last:  # it failed the job: nothing left to cancel
            assert isinstance(cancelled, Conflict), repr(cancelled)
            assert job == JobStatus.FAILED and kinds == ["lease_refused", "job_failed"]
        else:
            assert isinstance(cancelled, wire.JobOut), repr(cancelled)
            assert job == JobStatus.CANCELLED and kinds == ["lease_refused", "job_cancelled"]
    else:  # the cancel came first and ended the lease; the refusal skips it (even once
        # the cancel gave the job's use back: before, that was a 404 on ``job_id``)
        assert refused == [], repr(refused)
        assert isinstance(cancelled, wire.JobOut), repr(cancelled)
        assert status == AssignmentStatus.CANCELLED
        assert job == JobStatus.CANCELLED and kinds == ["job_cancelled"]
    ended(r.c, r.job, FEE)


def test_a_refusal_racing_the_result_or_the_cancel_ends_the_lease_once(
        c: Coordinator) -> None:
    """Both sides started at a barrier, a fresh job each round, every other one on its
    last attempt. Who wins is chance; the books and the lease's end must not be."""
    market(c)
    for n in range(1, ROUNDS + 1):
        r = Round(c, n, last=n % 2 == 0)
        refused_or_submitted(r, *at_once(r.refuse, r.submit))
    for n in range(ROUNDS + 1, 2 * ROUNDS + 1):
        r = Round(c, n, last=n % 2 == 0)
        refused_or_cancelled(r, *at_once(r.refuse, r.cancel))


def waits_on_the_job(c: Coordinator, pause: Pause, done: threading.Event) -> None:
    """The writer sent while another is held (``pause``) waits for it: on PostgreSQL
    ``pg_stat_activity`` shows it waiting on a lock at the job's ``SELECT ... FOR
    UPDATE`` (a writer that took no lock there would read the row and run on); on SQLite,
    whose writers take turns, it has not returned half a second on. Then the held one
    goes on."""
    if c.db.is_sqlite:
        time.sleep(0.5)
    else:
        end = time.time() + 10
        while True:
            with c.db.read() as s:  # a fresh snapshot of the activity each time
                queries = list(s.scalars(text(
                    "SELECT query FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'")))
            if any("FROM jobs" in q and "FOR UPDATE" in q for q in queries):
                break
            assert time.time() < end, f"no writer waits on the job's row: {queries}"
            time.sleep(0.02)
    assert not done.is_set()  # still waiting
    pause.go.set()


def test_a_refusal_waits_for_the_result_or_the_cancel_holding_the_job(
        c: Coordinator) -> None:
    """Each order forced once: the result (or the cancel) held inside its transaction
    while the refusal comes, which waits and then finds the lease over; and the refusal
    held while the result comes, which waits and then is told the lease is over."""
    market(c)
    # (round, its task's last attempt, where the first side is held and why, the first
    # side, the second, how their answers are checked, the lease's end)
    cases = [
        (1, False, datasets, "require_key", "submit", "refuse",  # the result, rows locked
         lambda r, first, second: refused_or_submitted(r, second, first),
         (AssignmentStatus.REJECTED,)),
        (2, True, decide, "on_cancel", "cancel", "refuse",  # the cancel, the job locked
         lambda r, first, second: refused_or_cancelled(r, second, first),
         (AssignmentStatus.CANCELLED,)),
        (3, False, decide, "on_refused", "refuse", "submit",  # the refusal, lease locked
         lambda r, first, second: refused_or_submitted(r, first, second),
         (AssignmentStatus.FAILED, REFUSED)),
    ]
    for n, last, owner, name, first, second, check, end in cases:
        r = Round(c, n, last=last)
        with paused(owner, name, hold=30) as p:
            _, answered_first = sent(getattr(r, first))
            assert p.reached.wait(10)
            waiting, answered_second = sent(getattr(r, second))
            waits_on_the_job(c, p, waiting)
            check(r, answered_first(10), answered_second(10))
        assert r.state()[:len(end)] == end, (first, second)
