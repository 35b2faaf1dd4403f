"""Datasets: when the owner deleted one

Revision ID: 0030d
Revises: 0029s
Create Date: 2026-12-02 19:30:00.000000

``deleted_at``: the moment the owner deleted the dataset (``DELETE
/api/datasets/{id}``). A deleted dataset keeps its row (its uses and royalties are
history, named by the journal) but no longer keeps its bytes: they fall to the blob
TTL like any upload, stop counting against the owner's quota and its count of
datasets, and nobody reads them through it any more.
"""
import sqlalchemy as sa
from alembic import op

revision = '0030d'
down_revision = '0029s'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('datasets', sa.Column('deleted_at', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('datasets') as batch:
        batch.drop_column('deleted_at')
