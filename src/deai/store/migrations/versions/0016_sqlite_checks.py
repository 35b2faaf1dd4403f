"""SQLite's lifecycle checks without IN lists

Revision ID: 0016c
Revises: 0015s
Create Date: 2026-12-01 04:30:00.000000

Migrations 0004 and 0010 enforce the lifecycle's CHECK constraints on SQLite with
triggers whose condition is the constraint's text, ``status IN ('leased', ...)``.
SQLite evaluates such an IN list by building an ephemeral table every time the
trigger fires: the two triggers on ``assignments`` cost ~55 µs of a ~85 µs insert,
and every heartbeat flush paid them on ``providers`` although it never writes a
status. The same predicates are re-installed here as chains of equalities (the
same truth table, NULL included: ``NULL = 'x'`` is NULL as ``NULL IN (...)`` is),
and an UPDATE trigger fires only when its column is written. PostgreSQL's real
CHECK constraints are unchanged.
"""
from alembic import op

from deai.core.lifecycle.states import CHECKS
from deai.store.db import sqlite_equalities as equalities

revision = '0016c'
down_revision = '0015s'
branch_labels = None
depends_on = None


def _install(fast: bool) -> None:
    for table, checks in CHECKS.items():
        for name, sql in checks:
            col = sql.split()[0]
            cond = (equalities(sql) if fast else sql).replace(col, f"NEW.{col}")
            for when in ("INSERT", "UPDATE"):
                op.execute(f"DROP TRIGGER IF EXISTS {name}_{when.lower()}")
                event = f"UPDATE OF {col}" if fast and when == "UPDATE" else when
                op.execute(
                    f"CREATE TRIGGER {name}_{when.lower()} BEFORE {event} ON {table} "
                    f"FOR EACH ROW WHEN NOT ({cond}) "
                    f"BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: {name}'); END")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _install(fast=True)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        _install(fast=False)
