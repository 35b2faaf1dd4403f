"""Chain settlement: deposits, epochs, withdrawals

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 06:45:00.000000

Tables of the chain rail (deai.chain): credited deposits (one per tx hash and log
index), epoch commitments with their leaves, the outbox of bonds, unbonds and
slashes to mirror, and the loops' cursors. A coordinator without a chain never
writes to them.
"""
import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('chain_deposits',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('tx_hash', sa.String(length=66), nullable=False),
    sa.Column('log_index', sa.Integer(), nullable=False),
    sa.Column('block', sa.BigInteger(), nullable=False),
    sa.Column('account', sa.String(length=64), nullable=False),
    sa.Column('sender', sa.String(length=42), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('journal_seq', sa.BigInteger(), nullable=False),
    sa.Column('credited_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tx_hash', 'log_index', name='uq_chain_deposits_log')
    )
    op.create_index('ix_chain_deposits_account', 'chain_deposits', ['account'], unique=False)
    op.create_table('chain_epochs',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('epoch', sa.BigInteger(), nullable=True),
    sa.Column('head_seq', sa.BigInteger(), nullable=False),
    sa.Column('head_hash', sa.String(length=64), nullable=False),
    sa.Column('root', sa.String(length=66), nullable=False),
    sa.Column('total', sa.BigInteger(), nullable=False),
    sa.Column('leaves', sa.JSON(), nullable=False),
    sa.Column('tx_hash', sa.String(length=66), nullable=True),
    sa.Column('block', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('posted_at', sa.Float(), nullable=True),
    sa.CheckConstraint("status IN ('pending', 'posted')", name='ck_chain_epochs_status'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('epoch')
    )
    op.create_index('ix_chain_epochs_status', 'chain_epochs', ['status'], unique=False)
    op.create_table('chain_outbox',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('journal_seq', sa.BigInteger(), nullable=False),
    sa.Column('op', sa.String(length=16), nullable=False),
    sa.Column('provider', sa.String(length=64), nullable=False),
    sa.Column('args', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('tx_hash', sa.String(length=66), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('done_at', sa.Float(), nullable=True),
    sa.CheckConstraint("op IN ('bond', 'unbond', 'slash')", name='ck_chain_outbox_op'),
    sa.CheckConstraint("status IN ('pending', 'done', 'failed')",
                       name='ck_chain_outbox_status'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('journal_seq', 'op', 'provider', name='uq_chain_outbox_entry')
    )
    op.create_index('ix_chain_outbox_status', 'chain_outbox', ['status'], unique=False)
    op.create_table('chain_cursors',
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('value', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )


def downgrade() -> None:
    op.drop_table('chain_cursors')
    op.drop_index('ix_chain_outbox_status', table_name='chain_outbox')
    op.drop_table('chain_outbox')
    op.drop_index('ix_chain_epochs_status', table_name='chain_epochs')
    op.drop_table('chain_epochs')
    op.drop_index('ix_chain_deposits_account', table_name='chain_deposits')
    op.drop_table('chain_deposits')
