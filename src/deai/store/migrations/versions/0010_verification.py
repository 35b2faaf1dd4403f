"""Verification: audits, forced errors, provisional results and look-back

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 07:20:00.000000

A slot reserved in the chain; filled in by the change that needs it (a no-op until then).
"""

revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
