"""Chain epochs: when the coordinator saw the guardian revoke one

Revision ID: 0033g
Revises: 0032f
Create Date: 2026-12-03 17:10:00.000000

``revoked_at``: the moment the rail found the epoch revoked on chain. A revoked epoch
pays nothing: its proofs are no longer served, and the journal's head is committed
again in a new epoch even if it has not moved since. Rows from before stay NULL: not
seen revoked.
"""
import sqlalchemy as sa
from alembic import op

revision = '0033g'
down_revision = '0032f'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('chain_epochs', sa.Column('revoked_at', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('chain_epochs') as batch:
        batch.drop_column('revoked_at')
