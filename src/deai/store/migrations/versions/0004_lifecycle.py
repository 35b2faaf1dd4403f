"""Lifecycle: CHECK constraints on statuses and roles

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30 06:45:00.000000

A slot reserved in the chain; filled in by the change that needs it (a no-op until then).
"""

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
