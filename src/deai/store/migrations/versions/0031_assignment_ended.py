"""Assignments: when a lease ended without its result standing

Revision ID: 0031e
Revises: 0030d
Create Date: 2026-12-03 10:50:00.000000

``ended_at``: the moment a lease failed, expired, was cancelled, refused or had its
result rejected (``effects``). A dataset job's hold fee charges the time the job had no
live lease (``datasets.hold_fee``): the gaps between its leases. Rows from before stay
NULL and count as live to the job's end: in the buyer's favour.
"""
import sqlalchemy as sa
from alembic import op

revision = '0031e'
down_revision = '0030d'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('assignments', sa.Column('ended_at', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('assignments') as batch:
        batch.drop_column('ended_at')
