"""Lifecycle: CHECK constraints on statuses and roles

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 06:45:00.000000

The allowed values come from ``deai.core.lifecycle.states.CHECKS``, the same text
the models declare. PostgreSQL gets real CHECK constraints; SQLite cannot add a
constraint to an existing table without rebuilding it (and the tables it is
referenced from), so there the same predicates are enforced by triggers that
abort an INSERT or UPDATE writing a value outside the table.
"""
from alembic import op

from deai.core.lifecycle.states import CHECKS

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def _column(sql: str) -> str:
    return sql.split()[0]


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for table, checks in CHECKS.items():
            for name, sql in checks:
                col = _column(sql)
                cond = sql.replace(col, f"NEW.{col}")
                for when in ("INSERT", "UPDATE"):
                    op.execute(
                        f"CREATE TRIGGER {name}_{when.lower()} BEFORE {when} ON {table} "
                        f"FOR EACH ROW WHEN NOT ({cond}) "
                        f"BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: {name}'); END")
        return
    for table, checks in CHECKS.items():
        for name, sql in checks:
            op.create_check_constraint(name, table, sql)


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        for checks in CHECKS.values():
            for name, _ in checks:
                for when in ("insert", "update"):
                    op.execute(f"DROP TRIGGER IF EXISTS {name}_{when}")
        return
    for table, checks in CHECKS.items():
        for name, _ in checks:
            op.drop_constraint(name, table, type_="check")
