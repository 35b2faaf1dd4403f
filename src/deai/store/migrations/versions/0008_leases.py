"""Leases by the hour, volumes

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 06:45:00.000000

A slot reserved in the chain; filled in by the change that needs it (a no-op until then).
"""

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
