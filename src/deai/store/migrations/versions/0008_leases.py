"""Leases by the hour, volumes

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 06:45:00.000000

Lease hosts (per-hour prices per resource class and capacity), leases with their
states and end reasons (CHECK constraints mirror ``core.leases``), and the
provider's share of each lease charge held for the challenge window.
"""
import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('lease_hosts',
    sa.Column('provider_id', sa.String(length=64), nullable=False),
    sa.Column('cpus', sa.Integer(), nullable=False),
    sa.Column('memory_mb', sa.Integer(), nullable=False),
    sa.Column('gpus', sa.Integer(), nullable=False),
    sa.Column('gpu_model', sa.String(length=100), nullable=True),
    sa.Column('network', sa.Boolean(), nullable=False),
    sa.Column('prices', sa.JSON(), nullable=False),
    sa.Column('updated_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('provider_id')
    )
    op.create_table('leases',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('owner', sa.String(length=64), nullable=False),
    sa.Column('provider_id', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('end_reason', sa.String(length=32), nullable=True),
    sa.Column('cpus', sa.Integer(), nullable=False),
    sa.Column('memory_mb', sa.Integer(), nullable=False),
    sa.Column('gpus', sa.Integer(), nullable=False),
    sa.Column('gpu_model', sa.String(length=100), nullable=True),
    sa.Column('network', sa.Boolean(), nullable=False),
    sa.Column('spot', sa.Boolean(), nullable=False),
    sa.Column('price_hour', sa.BigInteger(), nullable=False),
    sa.Column('max_price_hour', sa.BigInteger(), nullable=False),
    sa.Column('escrow', sa.BigInteger(), nullable=False),
    sa.Column('charged', sa.BigInteger(), nullable=False),
    sa.Column('refunded', sa.BigInteger(), nullable=False),
    sa.Column('penalty', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('started_at', sa.Float(), nullable=True),
    sa.Column('last_heartbeat', sa.Float(), nullable=True),
    sa.Column('term_seconds', sa.BigInteger(), nullable=True),
    sa.Column('term_end', sa.Float(), nullable=True),
    sa.Column('settled_at', sa.Float(), nullable=True),
    sa.Column('preempt_at', sa.Float(), nullable=True),
    sa.Column('warned_at', sa.Float(), nullable=True),
    sa.Column('ended_at', sa.Float(), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.CheckConstraint("status IN ('pending', 'active', 'ended')", name='ck_leases_status'),
    sa.CheckConstraint("end_reason IS NULL OR end_reason IN ('owner ended', 'time up', "
                       "'escrow exhausted', 'provider lost', 'preempted', 'policy')",
                       name='ck_leases_end_reason'),
    sa.CheckConstraint("(status = 'ended') = (end_reason IS NOT NULL)",
                       name='ck_leases_ended_reason'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_leases_owner', 'leases', ['owner'], unique=False)
    op.create_index('ix_leases_provider_id', 'leases', ['provider_id'], unique=False)
    op.create_index('ix_leases_status', 'leases', ['status'], unique=False)
    op.create_index('ix_leases_created_at', 'leases', ['created_at'], unique=False)
    op.create_table('lease_earnings',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('lease_id', sa.String(length=40), nullable=False),
    sa.Column('provider_id', sa.String(length=64), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('release_at', sa.Float(), nullable=False),
    sa.Column('released', sa.Boolean(), nullable=False),
    sa.Column('journal_seq', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_lease_earnings_lease_id', 'lease_earnings', ['lease_id'], unique=False)
    op.create_index('ix_lease_earnings_provider_id', 'lease_earnings', ['provider_id'],
                    unique=False)
    op.create_index('ix_lease_earnings_release_at', 'lease_earnings', ['release_at'],
                    unique=False)
    op.create_index('ix_lease_earnings_released', 'lease_earnings', ['released'], unique=False)


def downgrade() -> None:
    op.drop_table('lease_earnings')
    op.drop_table('leases')
    op.drop_table('lease_hosts')
