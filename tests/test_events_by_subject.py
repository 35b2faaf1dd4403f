"""``Event.of_subject``: a lease's, a cluster's or a job's events are found through the
partial index ``ix_events_subject`` on both engines (a view an owner polls must not walk
the events table, which grows by one row per placement), and the index leaves out the
matcher's ``task_assigned`` rows without changing what the views read."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import insert, select

from deai.store import migrate
from deai.store.db import Database
from deai.store.models import Event


@pytest.fixture
def db(fresh_url: str) -> Any:
    d = Database(fresh_url)
    migrate.upgrade(d.engine)
    rows = [{"ts": float(i), "kind": "task_assigned", "subject": f"t{i % 50}",
             "body": {"provider": "p"}} for i in range(2000)]
    rows += [{"ts": 3000.0 + i, "kind": kind, "subject": "lease-1", "body": {"n": i}}
             for i, kind in enumerate(("lease_created", "lease_started", "lease_warning"))]
    rows += [{"ts": 4000.0, "kind": "task_assigned", "subject": "lease-1", "body": {}},
             {"ts": 4001.0, "kind": "result_corrected", "subject": "job-1", "body": {}}]
    with d.write() as s:
        s.execute(insert(Event), rows)
    yield d
    d.dispose()


def plan(d: Database, stmt: Any) -> str:
    with d.read() as s:
        conn = s.connection()
        sql = str(stmt.compile(conn, compile_kwargs={"literal_binds": True}))
        if conn.dialect.name == "sqlite":
            return " ".join(str(r[-1]) for r in conn.exec_driver_sql(
                f"EXPLAIN QUERY PLAN {sql}").all())
        conn.exec_driver_sql("SET LOCAL enable_seqscan = off")  # a small table: ask
        return " ".join(r[0] for r in conn.exec_driver_sql(f"EXPLAIN {sql}").all())


def test_a_subjects_events_are_read_through_the_partial_index(db: Database) -> None:
    by_lease = select(Event).where(Event.of_subject("lease-1")).order_by(Event.id).limit(100)
    assert "ix_events_subject" in plan(db, by_lease)
    with db.read() as s:
        got = [(e.kind, e.body) for e in s.scalars(by_lease)]
    # What the views read: every event of the subject but the matcher's placement events.
    assert got == [("lease_created", {"n": 0}), ("lease_started", {"n": 1}),
                   ("lease_warning", {"n": 2})]
    corrected = select(Event.body).where(Event.kind == "result_corrected",
                                         Event.of_subject("job-1"))
    with db.read() as s:
        assert list(s.scalars(corrected)) == [{}]


def test_the_placement_events_are_left_out_of_the_index(db: Database) -> None:
    """``task_assigned`` rows are not in the index: a read that needs them by subject
    cannot use it (and none does), so the matcher's insert maintains no entry for them."""
    of_task = select(Event).where(Event.subject == "t7", Event.kind == "task_assigned")
    assert "ix_events_subject" not in plan(db, of_task)
