"""Clusters: a gang of leases that becomes a Ray cluster (issue 14)

Revision ID: 0012c
Revises: 0011i
Create Date: 2026-11-30 10:30:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0012c'
down_revision = '0011i'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'clusters',
        sa.Column('id', sa.String(length=40), nullable=False),
        sa.Column('owner', sa.String(length=64), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('end_reason', sa.String(length=32), nullable=True),
        sa.Column('nodes', sa.Integer(), nullable=False),
        sa.Column('leases', sa.JSON(), nullable=False),
        sa.Column('lost', sa.JSON(), nullable=False),
        sa.Column('ray', sa.JSON(), nullable=True),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('form_by', sa.Float(), nullable=False),
        sa.Column('ready_at', sa.Float(), nullable=True),
        sa.Column('ended_at', sa.Float(), nullable=True),
        sa.Column('detail', sa.Text(), nullable=True),
        sa.CheckConstraint("status IN ('forming', 'running', 'ended')",
                           name='ck_clusters_status'),
        sa.CheckConstraint("end_reason IS NULL OR end_reason IN ('owner ended', 'not formed', "
                           "'head lost', 'members ended')", name='ck_clusters_end_reason'),
        sa.CheckConstraint("(status = 'ended') = (end_reason IS NOT NULL)",
                           name='ck_clusters_ended_reason'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_clusters_owner', 'clusters', ['owner'])
    op.create_index('ix_clusters_status', 'clusters', ['status'])
    op.create_index('ix_clusters_created_at', 'clusters', ['created_at'])


def downgrade() -> None:
    op.drop_table('clusters')
