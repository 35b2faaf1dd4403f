"""Idempotency keys; blob uploads by age (quota and retention)

Revision ID: 0011i
Revises: 0010
Create Date: 2026-11-30 10:20:00.000000

``idempotency_keys``: per account, an ``Idempotency-Key`` and what its request
created (``coordinator.idempotency``); the primary key makes twins race-safe.
``ix_blob_refs_created_at``: the retention loop finds uploads past their TTL.
"""
import sqlalchemy as sa
from alembic import op

revision = '0011i'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('idempotency_keys',
    sa.Column('account', sa.String(length=64), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.Column('scope', sa.String(length=40), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('resource', sa.String(length=80), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('expires_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('account', 'key')
    )
    op.create_index('ix_idempotency_keys_expires_at', 'idempotency_keys', ['expires_at'],
                    unique=False)
    op.create_index('ix_blob_refs_created_at', 'blob_refs', ['created_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_blob_refs_created_at', table_name='blob_refs')
    op.drop_index('ix_idempotency_keys_expires_at', table_name='idempotency_keys')
    op.drop_table('idempotency_keys')
