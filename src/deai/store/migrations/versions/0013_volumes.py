"""Volumes and snapshots for leases (issue 13)

Revision ID: 0013v
Revises: 0012c
Create Date: 2026-11-30 14:00:00.000000
"""
import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = '0013v'
down_revision = '0012c'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
