"""Hardware challenges and verified compute units

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 06:45:00.000000

A slot reserved in the chain; filled in by the change that needs it (a no-op until then).
"""

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
