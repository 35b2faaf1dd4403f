"""``Database.run`` re-runs a transaction that PostgreSQL aborts for a deadlock or a
serialization failure, and gives up after its bounded number of attempts.

The races are forced, not hoped for: two threads lock two rows in opposite
orders behind a barrier, so PostgreSQL's deadlock detector must kill one; a
REPEATABLE READ transaction updates a row another committed after its snapshot.
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from deai.store.db import Database

pytestmark = pytest.mark.postgres


@pytest.fixture
def db(fresh_pg_url: str) -> Database:
    d = Database(fresh_pg_url)
    with d.write() as s:
        s.execute(text("create table t (id int primary key, v int not null)"))
        s.execute(text("insert into t values (1, 0), (2, 0)"))
    yield d
    d.dispose()


def _crossed(db: Database, runner) -> tuple[list[int], list[BaseException]]:  # type: ignore[no-untyped-def]
    """Two transactions lock rows 1,2 and 2,1; each waits for the other to hold its first."""
    barrier = threading.Barrier(2)
    calls = [0, 0]
    errors: list[BaseException] = []

    def body(i: int, first: int, second: int):  # type: ignore[no-untyped-def]
        def fn(s: Session) -> None:
            calls[i] += 1
            s.execute(text("update t set v = v + 1 where id = :i"), {"i": first})
            if calls[i] == 1:  # only the first attempt meets the other at the barrier
                barrier.wait(timeout=30)
            s.execute(text("update t set v = v + 1 where id = :i"), {"i": second})
        try:
            runner(fn)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            errors.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=body, args=(0, 1, 2)),
               threading.Thread(target=body, args=(1, 2, 1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return calls, errors


def test_deadlock_is_retried_and_both_commit(db: Database) -> None:
    calls, errors = _crossed(db, db.run)
    assert errors == []
    assert sorted(calls) == [1, 2]  # the deadlock's victim ran twice, the winner once
    assert db.retries == 1
    with db.read() as s:
        assert s.execute(text("select v from t order by id")).scalars().all() == [2, 2]


def test_without_retries_the_deadlock_surfaces(db: Database) -> None:
    calls, errors = _crossed(db, lambda fn: db.run(fn, attempts=1))
    assert len(errors) == 1 and isinstance(errors[0], OperationalError)
    assert getattr(errors[0].orig, "sqlstate", None) == "40P01"
    with db.read() as s:  # the victim changed nothing
        assert sorted(s.execute(text("select v from t")).scalars().all()) == [1, 1]


def test_serialization_failure_is_retried(db: Database) -> None:
    seen: list[int] = []

    def fn(s: Session) -> int:
        v = s.execute(text("select v from t where id = 1")).scalar_one()
        seen.append(v)
        if len(seen) == 1:  # another transaction commits after our snapshot was taken
            with db.write() as other:
                other.execute(text("update t set v = 10 where id = 1"))
        s.execute(text("update t set v = :v where id = 1"), {"v": v + 1})
        return v + 1

    assert db.run(fn, isolation="REPEATABLE READ") == 11
    assert seen == [0, 10]
    assert db.retries == 1


def test_other_errors_are_not_retried(db: Database) -> None:
    calls = []

    def fn(s: Session) -> None:
        calls.append(1)
        s.execute(text("insert into t values (1, 5)"))  # duplicate key

    with pytest.raises(Exception, match="duplicate key"):
        db.run(fn)
    assert calls == [1] and db.retries == 0


def test_gives_up_after_the_bounded_attempts(db: Database) -> None:
    calls = []

    def fn(s: Session) -> None:
        calls.append(1)
        s.execute(text("select v from t where id = 1")).scalar_one()
        with db.write() as other:
            other.execute(text("update t set v = v + 1 where id = 1"))
        s.execute(text("update t set v = 0 where id = 1"))

    with pytest.raises(OperationalError) as info:
        db.run(fn, attempts=3, isolation="REPEATABLE READ")
    assert getattr(info.value.orig, "sqlstate", None) == "40001"
    assert len(calls) == 3 and db.retries == 2
