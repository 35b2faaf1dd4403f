"""Datasets: the providers their owner trusts with the rows

Revision ID: 0032f
Revises: 0031e
Create Date: 2026-12-03 13:20:00.000000

``providers``: a JSON list of provider ids, or NULL for any provider. The matcher
places a dataset's jobs (their primaries and replicas, who read the rows) only on the
listed providers; before, an owner could only refuse the others once leased, and each
refusal used one of the job's attempts. Rows from before stay NULL: as they were.
"""
import sqlalchemy as sa
from alembic import op

revision = '0032f'
down_revision = '0031e'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('datasets', sa.Column('providers', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('datasets') as batch:
        batch.drop_column('providers')
