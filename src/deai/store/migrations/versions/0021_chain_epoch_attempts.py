"""A chain epoch's failed commits are counted and backed off

Revision ID: 0021e
Revises: 0020u
Create Date: 2026-12-02 01:00:00.000000

A pending epoch whose commit the contract refused (say, a root that promises more
than was deposited) was sent again every tick, forever, with nothing recorded. Now
each failure is counted (``attempts``), its reason kept (``error``) for the
operator and the chain page, and the next try waits (``retry_at``, doubling).
``addresses`` counts an epoch's leaves, so that the chain page need not load them.
"""
import sqlalchemy as sa
from alembic import op

revision = '0021e'
down_revision = '0020u'
branch_labels = None
depends_on = None

COLUMNS = ("attempts", "error", "retry_at", "addresses")


def upgrade() -> None:
    op.add_column('chain_epochs', sa.Column('attempts', sa.Integer(), nullable=False,
                                            server_default='0'))
    op.add_column('chain_epochs', sa.Column('error', sa.String(length=500), nullable=True))
    op.add_column('chain_epochs', sa.Column('retry_at', sa.Float(), nullable=True))
    op.add_column('chain_epochs', sa.Column('addresses', sa.Integer(), nullable=True))


def downgrade() -> None:
    for col in reversed(COLUMNS):
        # In place (SQLite 3.35+), not Alembic's batch: that rebuilds the table from its
        # reflection.
        op.execute(f"ALTER TABLE chain_epochs DROP COLUMN {col}")
