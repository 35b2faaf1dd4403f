"""Hardening: privacy, idempotency, blob quotas, bounded inputs

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 06:45:00.000000

``blob_refs``: who uploaded which blob (and how big it is), so a blob is read
only by an account that uploaded it, owns a job that uses it, or holds a live
lease that needs it (``coordinator.access``).
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('blob_refs',
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('account', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('digest', 'account')
    )
    op.create_index('ix_blob_refs_account', 'blob_refs', ['account'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_blob_refs_account', table_name='blob_refs')
    op.drop_table('blob_refs')
