"""The lifecycle's CHECK constraints hold on both engines: a status or role outside the
lifecycle table is refused by the database itself, whatever code writes it (SQLite
enforces them with triggers, ``migrations/versions/0016_sqlite_checks.py``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from deai.core.lifecycle.states import CHECKS
from deai.store import migrate
from deai.store.db import Database


@pytest.fixture(params=["sqlite", "postgres"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    url = (f"sqlite:///{tmp_path / 'checks.db'}" if request.param == "sqlite"
           else request.getfixturevalue("fresh_pg_url"))
    d = Database(url)
    migrate.upgrade(d.engine)
    yield d
    d.dispose()


def _rows(db: Database) -> None:
    with db.write() as s:
        s.execute(text(
            "INSERT INTO providers (id, name, hardware, benchmark, compute_units, threads, "
            "slots, status, registered_at, last_seen, reputation, tasks_done, capabilities, "
            "operator, origin, fingerprint) VALUES ('p1', 'p', '{}', '{}', 1.0, 1, 1, "
            "'active', 0, 0, 0.5, 0, '{}', 'p1', '', '')"))


def _refused(db: Database, sql: str) -> None:
    with pytest.raises(IntegrityError, match="(?i)check"), db.write() as s:
        s.execute(text(sql))


def test_every_check_is_installed_and_refuses_a_value_outside_the_table(db: Database) -> None:
    _rows(db)
    if db.is_sqlite:  # equalities, not an IN list (an ephemeral table per row fired)
        with db.read() as s:
            sql = s.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' "
                                 "AND name LIKE 'ck_%'")).all()
        assert len(sql) == 2 * sum(len(v) for v in CHECKS.values())
        assert not [name for name, body in sql if " IN (" in body]
    assert {t for t in CHECKS} >= {"providers", "jobs", "tasks", "assignments"}
    _refused(db, "UPDATE providers SET status = 'sleeping' WHERE id = 'p1'")
    with db.write() as s:  # a value in the table, and a write of another column
        s.execute(text("UPDATE providers SET status = 'active' WHERE id = 'p1'"))
        s.execute(text("UPDATE providers SET last_seen = 5 WHERE id = 'p1'"))
    with db.read() as s:
        assert s.execute(text("SELECT status, last_seen FROM providers")).one() == (
            "active", 5)


def test_nullable_need_admits_null_and_refuses_an_unknown_role(db: Database) -> None:
    with db.write() as s:
        s.execute(text(
            "INSERT INTO jobs (id, owner, kind, model, spec, input_digest, status, items, "
            "units, max_price, escrow, cost, refunded, created_at, deadline_at) VALUES "
            "('j1', 'o', 'embeddings', 'm', '{}', 'd', 'pending', 1, 1, 1, 0, 0, 0, 0, 0)"))
    _refused(db, "UPDATE jobs SET status = 'paused' WHERE id = 'j1'")
    cols = ("id, job_id, idx, status, input_digest, items, units, attempts, updated_at, "
            "pending_role")
    with db.write() as s:
        s.execute(text(f"INSERT INTO tasks ({cols}) VALUES "
                       "('t1', 'j1', 0, 'queued', 'd', 1, 1, 0, 0, NULL)"))
    _refused(db, f"INSERT INTO tasks ({cols}) VALUES "
                 "('t2', 'j1', 1, 'lost', 'd', 1, 1, 0, 0, NULL)")
    _refused(db, "UPDATE tasks SET pending_role = 'judge' WHERE id = 't1'")
    with db.write() as s:
        s.execute(text("UPDATE tasks SET pending_role = 'replica' WHERE id = 't1'"))
        s.execute(text("UPDATE tasks SET pending_role = NULL, status = 'assigned' "
                       "WHERE id = 't1'"))
    with db.read() as s:
        assert s.execute(text("SELECT status, pending_role FROM tasks")).one() == (
            "assigned", None)
