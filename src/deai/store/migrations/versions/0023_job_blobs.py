"""The blobs a job's shards name by digest

Revision ID: 0023j
Revises: 0022b
Create Date: 2026-12-02 01:10:00.000000

A command job's input may name files by digest: blobs its owner uploaded. They
were named only inside the shards, so nothing the retention loop reads used them:
once the upload's record ran out (24 h), the sweep deleted the bytes of a job that
may run for seven days, and the owner could no longer read them either.
``job_blobs`` records them at submission, for ``blob_quota.in_use`` and
``access.owner_may_read``.
"""
import sqlalchemy as sa
from alembic import op

revision = '0023j'
down_revision = '0022b'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'job_blobs',
        sa.Column('job_id', sa.String(length=40), nullable=False),
        sa.Column('digest', sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id']),
        sa.PrimaryKeyConstraint('job_id', 'digest'))
    op.create_index('ix_job_blobs_digest', 'job_blobs', ['digest'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_job_blobs_digest', table_name='job_blobs')
    op.drop_table('job_blobs')
