"""A check's lease held no later than ``hold_until``

Revision ID: 0027h
Revises: 0026l
Create Date: 2026-12-02 04:30:00.000000

Heartbeats extended every lease they listed, without bound but the job's deadline:
a checker that took a check and kept listing it held the verdict (and the checked
result's pay) until the job ended and was refunded. A check's lease now carries the
latest time heartbeats may extend it to (``matching.check_hold``); past it the lease
lapses as any lease held and not returned. NULL: a primary's, bounded by its job.
"""
import sqlalchemy as sa
from alembic import op

revision = '0027h'
down_revision = '0026l'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('assignments', sa.Column('hold_until', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('assignments') as batch:
        batch.drop_column('hold_until')
