"""Hardware challenges and verified compute units

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 06:45:00.000000

Two tables: ``hw_claims`` (per provider: the claim as the challenges judged it)
and ``hw_challenges`` (each challenge issued, its commitment and its outcome).
"""
import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'hw_claims',
        sa.Column('provider_id', sa.String(length=64), nullable=False),
        sa.Column('fingerprint', sa.String(length=64), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('failures', sa.Integer(), nullable=False),
        sa.Column('passes', sa.Integer(), nullable=False),
        sa.Column('fails', sa.Integer(), nullable=False),
        sa.Column('flags', sa.Integer(), nullable=False),
        sa.Column('wrong', sa.Boolean(), nullable=False),
        sa.Column('ratios', sa.JSON(), nullable=False),
        sa.Column('verified', sa.JSON(), nullable=False),
        sa.Column('verified_units', sa.Float(), nullable=False),
        sa.Column('slashed', sa.BigInteger(), nullable=False),
        sa.Column('next_at', sa.Float(), nullable=False),
        sa.Column('last_at', sa.Float(), nullable=True),
        sa.Column('last_outcome', sa.String(length=16), nullable=True),
        sa.Column('updated_at', sa.Float(), nullable=False),
        sa.CheckConstraint("status IN ('unverified', 'verified', 'flagged')",
                           name='ck_hw_claims_status'),
        sa.PrimaryKeyConstraint('provider_id'),
    )
    op.create_index('ix_hw_claims_next_at', 'hw_claims', ['next_at'], unique=False)
    op.create_table(
        'hw_challenges',
        sa.Column('id', sa.String(length=40), nullable=False),
        sa.Column('provider_id', sa.String(length=64), nullable=False),
        sa.Column('fingerprint', sa.String(length=64), nullable=False),
        sa.Column('reason', sa.String(length=32), nullable=False),
        sa.Column('spec', sa.JSON(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('issued_at', sa.Float(), nullable=False),
        sa.Column('committed_at', sa.Float(), nullable=True),
        sa.Column('root', sa.String(length=64), nullable=True),
        sa.Column('open_seed', sa.String(length=40), nullable=True),
        sa.Column('elapsed_s', sa.Float(), nullable=True),
        sa.Column('ratio', sa.Float(), nullable=True),
        sa.Column('detail', sa.Text(), nullable=True),
        sa.CheckConstraint("status IN ('issued', 'committed', 'passed', 'slow', 'wrong', "
                           "'error', 'expired')", name='ck_hw_challenges_status'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_hw_challenges_provider_id', 'hw_challenges', ['provider_id'],
                    unique=False)
    op.create_index('ix_hw_challenges_status', 'hw_challenges', ['status'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_hw_challenges_status', table_name='hw_challenges')
    op.drop_index('ix_hw_challenges_provider_id', table_name='hw_challenges')
    op.drop_table('hw_challenges')
    op.drop_index('ix_hw_claims_next_at', table_name='hw_claims')
    op.drop_table('hw_claims')
