"""Datasets, terms, uses and royalties (issue 18)

Revision ID: 0014d
Revises: 0013v
Create Date: 2026-11-30 14:00:00.000000
"""
import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

revision = '0014d'
down_revision = '0013v'
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
