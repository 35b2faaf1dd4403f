"""Lease sessions waiting for their provider, seen by every replica

Revision ID: 0029s
Revises: 0028n
Create Date: 2026-12-02 14:45:00.000000

A session (shell, exec, cp, forward) was filed in the memory of the replica the owner
attached to, so with several replicas the agent's poll and its session socket, landing
on another, found nothing. ``lease_sessions`` holds each waiting session, its owner
replica's internal relay address and a per-session secret (``coordinator.relay_leases``).
"""
import sqlalchemy as sa
from alembic import op

revision = '0029s'
down_revision = '0028n'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'lease_sessions',
        sa.Column('id', sa.String(40), primary_key=True),
        sa.Column('provider_id', sa.String(64), nullable=False),
        sa.Column('lease_id', sa.String(40), nullable=False),
        sa.Column('params', sa.JSON(), nullable=False),
        sa.Column('endpoint', sa.String(300), nullable=False),
        sa.Column('secret', sa.String(64), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('taken', sa.Boolean(), nullable=False, server_default=sa.false()))
    op.create_index('ix_lease_sessions_created_at', 'lease_sessions', ['created_at'])
    op.create_index('ix_lease_sessions_provider', 'lease_sessions', ['provider_id', 'taken'])


def downgrade() -> None:
    op.drop_index('ix_lease_sessions_provider', 'lease_sessions')
    op.drop_index('ix_lease_sessions_created_at', 'lease_sessions')
    op.drop_table('lease_sessions')
