"""Operators, network origins, hardware fingerprints and verifiers

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 07:20:00.000000

Three nullable columns on ``providers`` (``core.diversity``): the operator that
signed the key's registration, the network block it registered from, and the
digest of its registered hardware. Rows from before stay NULL until the provider
registers again. Which keys are verifiers lives in the coordinator's settings,
not here.
"""
import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('providers') as batch:
        batch.add_column(sa.Column('operator', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('origin', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('fingerprint', sa.String(length=64), nullable=True))
    op.create_index('ix_providers_operator', 'providers', ['operator'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_providers_operator', table_name='providers')
    with op.batch_alter_table('providers') as batch:
        batch.drop_column('fingerprint')
        batch.drop_column('origin')
        batch.drop_column('operator')
