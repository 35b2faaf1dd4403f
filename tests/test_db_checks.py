"""The lifecycle's CHECK constraints hold on both engines: a status or role outside the
lifecycle table is refused by the database itself, whatever code writes it (SQLite
has them since ``migrations/versions/0018_sqlite_check_constraints.py`` rebuilt its
tables; before, triggers enforced them), and a database migrated through that rebuild
keeps its rows, its indexes and its foreign keys."""

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
    if db.is_sqlite:  # in the tables, as equalities (an IN list built a table per row)
        with db.read() as s:
            assert s.execute(text("SELECT name FROM sqlite_master WHERE type = 'trigger' "
                                  "AND name LIKE 'ck_%'")).all() == []
            for table, checks in CHECKS.items():
                body = s.execute(text("SELECT sql FROM sqlite_master WHERE name = :t"),
                                 {"t": table}).scalar_one()
                assert all(f"CONSTRAINT {name} CHECK" in body for name, _ in checks)
                assert " IN (" not in body
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


def _indexes(db: Database) -> set[tuple[str, str, str]]:
    with db.read() as s:
        return {tuple(r) for r in s.execute(text(
            "SELECT name, tbl_name, sql FROM sqlite_master WHERE type = 'index'")).all()}


def test_the_sqlite_rebuild_keeps_rows_indexes_and_keys(tmp_path: Path) -> None:
    """A database with rows in every rebuilt table, upgraded through 0018k: the rows and
    indexes are as they were, the triggers are gone, the constraints and the foreign
    keys hold; downgraded, the triggers are back and the rows still there."""
    d = Database(f"sqlite:///{tmp_path / 'old.db'}")
    migrate.upgrade(d.engine, "0017a")
    _rows(d)
    with d.write() as s:
        s.execute(text(
            "INSERT INTO jobs (id, owner, kind, model, spec, input_digest, status, items, "
            "units, max_price, escrow, cost, refunded, created_at, deadline_at) VALUES "
            "('j1', 'o', 'embeddings', 'm', '{}', 'd', 'running', 1, 1, 1, 0, 0, 0, 0, 0)"))
        s.execute(text(
            "INSERT INTO tasks (id, job_id, idx, status, input_digest, items, units, "
            "attempts, updated_at) VALUES ('t1', 'j1', 0, 'assigned', 'd', 1, 1, 1, 0)"))
        s.execute(text(
            "INSERT INTO assignments (id, task_id, job_id, provider_id, role, status, price, "
            "leased_at, lease_deadline, delivered) VALUES "
            "('a1', 't1', 'j1', 'p1', 'primary', 'leased', 5, 0, 60, 0)"))
    before = {t: _all(d, t) for t in CHECKS}
    indexes = _indexes(d)
    migrate.upgrade(d.engine, "0018k")
    assert {t: _all(d, t) for t in CHECKS} == before
    assert _indexes(d) == indexes
    with d.read() as s:
        assert s.execute(text("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' "
                              "AND name LIKE 'ck_%'")).scalar() == 0
        assert s.execute(text("PRAGMA foreign_keys")).scalar() == 1
    _refused(d, "UPDATE assignments SET status = 'lost' WHERE id = 'a1'")
    with pytest.raises(IntegrityError, match="(?i)foreign key"), d.write() as s:
        s.execute(text(
            "INSERT INTO assignments (id, task_id, job_id, provider_id, role, status, price, "
            "leased_at, lease_deadline, delivered) VALUES "
            "('a2', 'nope', 'j1', 'p1', 'primary', 'leased', 5, 0, 60, 0)"))
    migrate.downgrade(d.engine, "0017a")
    assert {t: _all(d, t) for t in CHECKS} == before
    with d.read() as s:
        assert s.execute(text("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' "
                              "AND name LIKE 'ck_%'")).scalar() == 2 * sum(
            len(v) for v in CHECKS.values())
    _refused(d, "UPDATE assignments SET role = 'judge' WHERE id = 'a1'")
    d.dispose()


def test_a_migration_that_leaves_a_dangling_key_is_not_committed(tmp_path: Path) -> None:
    """Foreign keys are off while SQLite migrates (a rebuild drops a parent table): a
    row left naming nothing fails the upgrade, and the upgrade is rolled back whole."""
    d = Database(f"sqlite:///{tmp_path / 'bad.db'}")
    migrate.upgrade(d.engine, "0017a")
    raw = d.engine.raw_connection()
    try:  # a dangling key written with the keys off (as a broken migration would leave it)
        raw.execute("PRAGMA foreign_keys=OFF")
        raw.execute(
            "INSERT INTO tasks (id, job_id, idx, status, input_digest, items, units, "
            "attempts, updated_at) VALUES ('t9', 'no-such-job', 0, 'queued', 'd', 1, 1, 0, 0)")
        raw.execute("PRAGMA foreign_keys=ON")
    finally:
        raw.close()
    with pytest.raises(RuntimeError, match="foreign key"):
        migrate.upgrade(d.engine)
    with d.read() as s:
        assert s.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0017a"
        assert s.execute(text("SELECT count(*) FROM sqlite_master WHERE type = 'trigger'")
                         ).scalar() > 0
    d.dispose()


def _all(db: Database, table: str) -> list[Any]:
    with db.read() as s:
        return [tuple(r) for r in s.execute(text(f"SELECT * FROM {table} ORDER BY 1")).all()]
