"""Operators, network origins, hardware fingerprints and verifiers

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 07:20:00.000000

A slot reserved in the chain; filled in by the change that needs it (a no-op until then).
"""

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
