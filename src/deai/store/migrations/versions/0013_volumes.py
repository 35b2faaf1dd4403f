"""Volumes and snapshots for leases (issue 13)

Revision ID: 0013v
Revises: 0012c
Create Date: 2026-11-30 14:00:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0013v'
down_revision = '0012c'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'volumes',
        sa.Column('id', sa.String(length=40), nullable=False),
        sa.Column('owner', sa.String(length=64), nullable=False),
        sa.Column('name', sa.String(length=63), nullable=False),
        sa.Column('size_bytes', sa.BigInteger(), nullable=False),
        sa.Column('head', sa.String(length=64), nullable=True),
        sa.Column('head_size', sa.BigInteger(), nullable=True),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('updated_at', sa.Float(), nullable=False),
        sa.Column('error', sa.Text(), nullable=True),
        sa.Column('error_at', sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('owner', 'name', name='uq_volumes_owner_name'),
    )
    op.create_index('ix_volumes_owner', 'volumes', ['owner'])
    op.create_table(
        'volume_snapshots',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('volume_id', sa.String(length=40), nullable=False),
        sa.Column('digest', sa.String(length=64), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('lease_id', sa.String(length=40), nullable=False),
        sa.Column('provider_id', sa.String(length=64), nullable=False),
        sa.Column('kind', sa.String(length=8), nullable=False),
        sa.CheckConstraint("kind IN ('asked', 'end')", name='ck_volume_snap_kind'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_volume_snapshots_volume_id', 'volume_snapshots', ['volume_id'])
    op.create_index('ix_volume_snapshots_digest', 'volume_snapshots', ['digest'])
    op.create_table(
        'volume_mounts',
        sa.Column('lease_id', sa.String(length=40), nullable=False),
        sa.Column('volume_id', sa.String(length=40), nullable=False),
        sa.Column('provider_id', sa.String(length=64), nullable=False),
        sa.Column('state', sa.String(length=8), nullable=False),
        sa.Column('asked_at', sa.Float(), nullable=True),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('ended_at', sa.Float(), nullable=True),
        sa.CheckConstraint("state IN ('live', 'saving', 'done')", name='ck_volume_mounts_state'),
        sa.PrimaryKeyConstraint('lease_id'),
    )
    op.create_index('ix_volume_mounts_volume_id', 'volume_mounts', ['volume_id'])
    op.create_index('ix_volume_mounts_provider_id', 'volume_mounts', ['provider_id'])
    op.create_index('ix_volume_mounts_state', 'volume_mounts', ['state'])


def downgrade() -> None:
    op.drop_table('volume_mounts')
    op.drop_table('volume_snapshots')
    op.drop_table('volumes')
