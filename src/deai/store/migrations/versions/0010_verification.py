"""Verification: the audit role, and forced errors planted in checks

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 07:20:00.000000

Migration 0004 installed the lifecycle's CHECK constraints (triggers on SQLite)
from the table as it was; this one re-installs the role and need constraints
from the table as it is now (``audit`` joined the roles).
"""
import sqlalchemy as sa
from alembic import op

from deai.core.lifecycle.states import CHECKS

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

NAMES = {"ck_assignments_role", "ck_tasks_need"}


def upgrade() -> None:
    with op.batch_alter_table("assignments") as b:
        b.add_column(sa.Column("forced", sa.JSON(), nullable=True))
    sqlite = op.get_bind().dialect.name == "sqlite"
    for table, checks in CHECKS.items():
        for name, sql in checks:
            if name not in NAMES:
                continue
            col = sql.split()[0]
            if sqlite:
                cond = sql.replace(col, f"NEW.{col}")
                for when in ("INSERT", "UPDATE"):
                    op.execute(f"DROP TRIGGER IF EXISTS {name}_{when.lower()}")
                    op.execute(
                        f"CREATE TRIGGER {name}_{when.lower()} BEFORE {when} ON {table} "
                        f"FOR EACH ROW WHEN NOT ({cond}) "
                        f"BEGIN SELECT RAISE(ABORT, 'CHECK constraint failed: {name}'); END")
            else:
                op.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}")
                op.create_check_constraint(name, table, sql)


def downgrade() -> None:
    with op.batch_alter_table("assignments") as b:
        b.drop_column("forced")
