"""``db.insert_many`` and ``db.update_many``: the matcher's bulk writes in the driver's own
SQL must write exactly what SQLAlchemy's ``insert``/``update`` write, on both engines
(JSON columns, ``None`` in a JSON column, booleans, the lifecycle's enums), and only
ever name the table's own columns."""

from __future__ import annotations

from typing import Any, cast

import pytest
from sqlalchemy import Table, bindparam, insert, select, text, update

from deai.core.lifecycle import AssignmentStatus, Role, TaskStatus
from deai.store import db as dbm
from deai.store import migrate
from deai.store.db import Database
from deai.store.models import Assignment, Event, Job, Task

AT = cast(Table, Assignment.__table__)
ET = cast(Table, Event.__table__)
TT = cast(Table, Task.__table__)


@pytest.fixture
def db(fresh_url: str) -> Any:
    d = Database(fresh_url)
    migrate.upgrade(d.engine)
    with d.write() as s:
        s.execute(text(
            "INSERT INTO providers (id, name, hardware, benchmark, compute_units, threads, "
            "slots, status, registered_at, last_seen, reputation, tasks_done, capabilities, "
            "operator, origin, fingerprint) VALUES ('p1', 'p', '{}', '{}', 1.0, 1, 1, "
            "'active', 0, 0, 0.5, 0, '{}', 'p1', '', '')"))
        s.add(Job(id="j1", owner="o", status="running", kind="embeddings", model="m",
                  spec={}, input_digest="d", items=1, units=1, max_price=1, escrow=0,
                  created_at=0.0, deadline_at=1.0))
        s.flush()
        for k in range(4):
            s.add(Task(id=f"t{k}", job_id="j1", idx=k, status=TaskStatus.QUEUED,
                       input_digest="d", items=1, units=1, attempts=0, updated_at=0.0))
    yield d
    d.dispose()


def lease(k: int, forced: Any) -> dict[str, Any]:
    return {"id": f"a{k}", "task_id": f"t{k}", "job_id": "j1", "provider_id": "p1",
            "role": Role.PRIMARY if k % 2 else Role.REPLICA,
            "status": AssignmentStatus.LEASED, "price": 7 + k, "leased_at": 1.5,
            "lease_deadline": 2.5, "delivered": bool(k % 2), "input_digest": None,
            "check_of": None, "forced": forced}


def dump(d: Database, table: Table, key: str) -> list[tuple[Any, ...]]:
    """Every row as the ORM-free driver sees it (the stored values, JSON as text), and
    as SQLAlchemy reads it back."""
    with d.read() as s:
        raw = s.connection().exec_driver_sql(
            f"SELECT * FROM {table.name} ORDER BY {key}").all()
        typed = s.execute(select(table).order_by(table.c[key])).all()
    return [tuple(r) for r in raw] + [tuple(r) for r in typed]


def test_insert_many_writes_what_sqlalchemy_writes(db: Database) -> None:
    forced = [None, {"at": [1, 2], "x": "é"}]
    with db.write() as s:
        s.execute(insert(AT), [lease(k, forced[k]) for k in (0, 1)])
        s.execute(insert(ET), [{"ts": 1.0, "kind": "task_assigned", "subject": "t0",
                                "body": {"job": "j1", "price": 7}}])
    want = dump(db, AT, "id"), dump(db, ET, "id")
    with db.write() as s:
        s.execute(text("DELETE FROM assignments"))
        s.execute(text("DELETE FROM events"))
    with db.write() as s:
        dbm.insert_many(s, AT, [lease(k, forced[k]) for k in (0, 1)])
        dbm.insert_many(s, ET, [{"ts": 1.0, "kind": "task_assigned", "subject": "t0",
                                 "body": {"job": "j1", "price": 7}}])
        dbm.insert_many(s, ET, [])  # nothing to write: no statement
    got_a, got_e = dump(db, AT, "id"), dump(db, ET, "id")
    assert got_a == want[0]
    assert [r[1:] for r in got_e] == [r[1:] for r in want[1]]  # ids are the sequence's


def test_update_many_updates_only_rows_whose_where_holds(db: Database) -> None:
    rows = [{"b_id": f"t{k}", "b_from": TaskStatus.QUEUED if k != 2 else TaskStatus.ASSIGNED,
             "b_to": TaskStatus.ASSIGNED, "b_need": None, "b_n": k + 1, "b_t": 9.5}
            for k in range(3)]
    with db.write() as s:
        s.execute(update(TT).where(TT.c.id == bindparam("b_id"),
                                   TT.c.status == bindparam("b_from"))
                  .values(status=bindparam("b_to"), pending_role=bindparam("b_need"),
                          attempts=bindparam("b_n"), updated_at=bindparam("b_t")), rows)
    want = dump(db, TT, "id")
    with db.write() as s:
        s.execute(text("UPDATE tasks SET status = 'queued', attempts = 0, updated_at = 0"))
    with db.write() as s:
        dbm.update_many(s, TT, rows, where={"id": "b_id", "status": "b_from"},
                        values={"status": "b_to", "pending_role": "b_need",
                                "attempts": "b_n", "updated_at": "b_t"})
    got = dump(db, TT, "id")
    assert got == want
    by_id = {r[0]: r for r in got[:4]}
    assert by_id["t2"] != by_id["t1"]  # t2's where did not hold: left queued


def test_only_the_tables_columns_reach_the_statement(db: Database) -> None:
    with pytest.raises(ValueError, match="no column"), db.write() as s:
        dbm.insert_many(s, ET, [{"ts": 1.0, "kind": "k", "subject": "s", "body": {},
                                 "kind) VALUES (1); DROP TABLE events; --": 1}])
    with pytest.raises(ValueError, match="no column"), db.write() as s:
        dbm.update_many(s, TT, [{"x": 1, "y": "t0"}], values={"status = 'done', x": "x"},
                        where={"id": "y"})
    with db.read() as s:
        assert s.scalar(text("SELECT count(*) FROM events")) == 0
