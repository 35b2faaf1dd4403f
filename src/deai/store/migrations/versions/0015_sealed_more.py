"""Sealed training and sealed /v1 batches (issue 18)

Revision ID: 0015s
Revises: 0014d
Create Date: 2026-11-30 14:00:00.000000
"""
import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = '0015s'
down_revision = '0014d'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
