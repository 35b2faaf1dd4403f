"""A slash racing the leader's release of the same payouts (PostgreSQL).

The release claims due payouts ``FOR UPDATE SKIP LOCKED`` and posts them; a slash (or
a forfeit) returns the provider's unreleased earnings on the job. Before, the slash read
the payouts without a lock while a release held them: once the release committed, the
slash forfeited the same payout from pending a second time (the provider paid and the
client refunded), and the provider's other earnings could never be released. The
applier now locks the payouts a slash or forfeit takes back before any effect
(``effects._Applier._lock_parties``), so the slash sees the release and claws it back.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from deai.coordinator import admission, effects, jobs
from deai.coordinator.service import Coordinator
from deai.coordinator.settings import Settings
from deai.core import ledger
from deai.core.clock import ManualClock
from deai.core.lifecycle import Role
from deai.core.lifecycle import effects as E
from deai.core.verify import policy
from deai.store import journal, migrate
from deai.store.models import Job, JournalEntry, Payout, Task
from tests.helpers import db_audit
from tests.races import gate, race

CLIENT = "aa" * 32
PROVIDER = "bb" * 32


@pytest.fixture
def c(fresh_pg_url: str, tmp_path: Path) -> Iterator[Coordinator]:
    c = Coordinator(Settings(data_dir=tmp_path, database_url=fresh_pg_url, devnet=True),
                    clock=ManualClock())
    migrate.upgrade(c.db.engine)
    yield c
    c.db.dispose()


def _paid_job(c: Coordinator, s: Session, aid: str, release_at: float) -> tuple[str, str]:
    """A job of one task whose result ``aid`` was paid 100 µ, released at ``release_at``."""
    job, (task,) = admission.create(
        c, s, owner=CLIENT, kind="embeddings", model="m", spec={}, input_digest="d" * 64,
        max_price=1, shards=[admission.ShardIn("e" * 64, 1, 1)], escrow=1000, deadline=3600)
    entry, to_provider, _ = c.settlement.pay_task(s, job.id, task.id, aid, PROVIDER, 100)
    s.add(Payout(assignment_id=aid, task_id=task.id, provider_id=PROVIDER,
                 amount=to_provider, release_at=release_at, released=False,
                 journal_seq=entry.seq, job_id=job.id, forfeited=False))
    return job.id, task.id


def test_a_payout_is_never_both_released_and_taken_back(
        c: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    now = c.now()

    def setup(s: Session) -> tuple[str, str]:
        c.settlement.faucet(s, CLIENT, 10_000)
        due = _paid_job(c, s, "asg_1", now - 1)
        _paid_job(c, s, "asg_2", now + 10_000)  # another job's, due later
        return due

    job_id, task_id = c.db.run(setup)
    claimed = threading.Event()
    release = c.settlement.release

    def held_release(s: Session, *a: Any, **kw: Any) -> Any:
        claimed.set()  # the payouts are claimed, not yet committed
        time.sleep(1.0)  # widen the window (the leader loop's ordinary latency)
        return release(s, *a, **kw)

    monkeypatch.setattr(c.settlement, "release", held_release)

    def verdict() -> None:
        assert claimed.wait(10)

        def body(s: Session) -> None:
            job = s.get(Job, job_id, with_for_update=True)
            task = s.get(Task, task_id, with_for_update=True)
            assert job is not None and task is not None
            effects.apply(c, s, job, task, [E.Slash(PROVIDER, None, Role.PRIMARY)])
        c.db.run(body)

    assert race(lambda: jobs.release_earnings(c), verdict) == []
    monkeypatch.undo()
    with c.db.read() as s:
        pending = journal.balance(s, ledger.pending(PROVIDER))
        rows = s.scalars(select(Payout)).all()
        unreleased = sum(p.amount for p in rows if not p.released)
        kinds = [e.kind for e in s.scalars(select(JournalEntry).order_by(JournalEntry.seq))]
    # pending holds exactly the unreleased, unforfeited payouts: the slash clawed the
    # released one back instead of forfeiting it from pending a second time
    assert pending == unreleased
    assert kinds[-2:] == ["release", "clawback"]
    c.clock.advance(20_000)  # the other job's payout comes due, and is released
    assert jobs.release_earnings(c) == 1


def test_verdicts_at_once_never_slash_more_than_the_stake(
        c: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    """Three verdicts against one provider read its stake at the same moment and each
    cuts half of what it read: the journal would refuse the third (more than the stake
    left), failing its verdict. Each cut is clamped to the stake as it stands when
    posted (``Settlement.slash``): every verdict lands, the stake ends at zero, not
    below, and the books balance."""
    def setup(s: Session) -> list[tuple[str, str]]:
        c.settlement.faucet(s, CLIENT, 10_000)
        c.settlement.faucet(s, PROVIDER, 1_000)
        c.settlement.bond(s, PROVIDER, 1_000)
        return [_paid_job(c, s, f"asg_{i}", c.now() + 10_000) for i in range(3)]

    jobs_tasks = c.db.run(setup)
    read_all = gate(3)
    real = policy.slash_amounts

    def after_all_read(stake: int, *a: Any, **kw: Any) -> Any:
        read_all()  # each verdict has read the stake; none has posted its cut yet
        return real(stake, *a, **kw)

    monkeypatch.setattr(policy, "slash_amounts", after_all_read)

    def verdict(job_id: str, task_id: str) -> None:
        def body(s: Session) -> None:
            job = s.get(Job, job_id, with_for_update=True)
            task = s.get(Task, task_id, with_for_update=True)
            assert job is not None and task is not None
            effects.apply(c, s, job, task, [E.Slash(PROVIDER, None, Role.PRIMARY)])
        c.db.run(body)

    assert race(*(functools.partial(verdict, j, t) for j, t in jobs_tasks)) == []
    monkeypatch.undo()
    with c.db.read() as s:
        stake = journal.balance(s, ledger.stake(PROVIDER))
        cuts = [e.body["amount"] for e in s.scalars(
            select(JournalEntry).where(JournalEntry.kind == "slash"))]
    db_audit(c)
    assert stake == 0 and sum(cuts) == 1_000 and len(cuts) == 2  # the third found nothing
