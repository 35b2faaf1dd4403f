"""SQLite's lifecycle checks as CHECK constraints, not triggers

Revision ID: 0018k
Revises: 0017a
Create Date: 2026-12-01 19:30:00.000000

SQLite cannot add a constraint to a table, so migrations 0004, 0010 and 0016
enforced the lifecycle's CHECK constraints there with BEFORE triggers. A trigger
runs a sub-program per row: the two on ``assignments`` took ~4 µs of an ~11 µs
insert, and every matcher batch fires them once per lease and ``tasks``' once per
task it moves (``bench/bench_matcher.py``). A CHECK constraint is evaluated inline
in the row's own program, for the price of the comparisons.

Each of the four tables is rebuilt with its constraints, by SQLite's own recipe
(https://sqlite.org/lang_altertable.html#otheralter): a new table from the old
one's CREATE statement with the constraints added, its rows copied, the old table
dropped (and its triggers with it), the new one renamed, the indexes made again
from their own statements. By hand rather than Alembic's batch mode, which reflects
the table first: that took 40 ms a database, and every test makes fresh ones. The rebuild drops a table that others' foreign keys name, so
``deai.store.migrate.upgrade`` runs SQLite's migrations with foreign keys off and
checks them all (``PRAGMA foreign_key_check``) before it commits. The predicates
are written as chains of equalities, as 0016 wrote the triggers': SQLite evaluates
an IN list by building an ephemeral table each time the statement runs, which an
executemany does once per row. PostgreSQL's constraints are unchanged. A later
change to a lifecycle's values must rebuild its table the same way on SQLite.
"""
import re

from alembic import op

from deai.core.lifecycle.states import CHECKS
from deai.store.db import sqlite_equalities as equalities

revision = '0018k'
down_revision = '0017a'
branch_labels = None
depends_on = None


def _triggers(table: str, install: bool) -> None:
    """Drop ``table``'s check triggers, or install them as 0016 left them."""
    for name, sql in CHECKS[table]:
        col = sql.split()[0]
        for when in ("INSERT", "UPDATE"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}_{when.lower()}")
            if install:
                event = f"UPDATE OF {col}" if when == "UPDATE" else when
                op.execute(
                    f"CREATE TRIGGER {name}_{when.lower()} BEFORE {event} ON {table} "
                    f"FOR EACH ROW WHEN NOT ({equalities(sql).replace(col, f'NEW.{col}')}) "
                    f"BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: {name}'); END")


def _clauses(table: str) -> str:
    return "".join(f",\n\tCONSTRAINT {name} CHECK ({equalities(sql)})"
                   for name, sql in CHECKS[table])


def _rebuild(table: str, with_checks: bool) -> None:
    """``table`` made again from its own statement, with or without its checks."""
    conn = op.get_bind()
    create, = conn.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).one()
    indexes = [r[0] for r in conn.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = ? "
        "AND sql IS NOT NULL", (table,))]  # the primary key's own index has no statement
    head, body = create.split("(", 1)
    if not re.fullmatch(rf'\s*CREATE TABLE "?{table}"?\s*', head):
        raise RuntimeError(f"unexpected statement for {table}: {head!r}")
    body = body.rstrip()
    if with_checks:
        body = body[:-1].rstrip() + _clauses(table) + "\n)"
    else:
        if _clauses(table) not in body:
            raise RuntimeError(f"{table} lacks the checks 0018k added")
        body = body.replace(_clauses(table), "")
    op.execute(f"CREATE TABLE _new_{table} ({body}")
    op.execute(f"INSERT INTO _new_{table} SELECT * FROM {table}")
    op.execute(f"DROP TABLE {table}")
    op.execute(f"ALTER TABLE _new_{table} RENAME TO {table}")
    for sql in indexes:
        op.execute(sql)


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in CHECKS:
        _triggers(table, install=False)
        _rebuild(table, with_checks=True)


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    for table in CHECKS:
        _rebuild(table, with_checks=False)
        _triggers(table, install=True)
