"""Chain settlement: deposits, epochs, withdrawals

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 06:45:00.000000

A slot reserved in the chain; filled in by the change that needs it (a no-op until then).
"""

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
