"""Jobs: what their escrow holds for the checks their owner pays

Revision ID: 0034h
Revises: 0033g
Create Date: 2026-12-03 18:20:00.000000

``check_budget``: set at submission on a job whose owner pays its replicas (sealed for
its parties, on a dataset with a provider list, or ``replicate: true``:
``policy.owner_pays_check``), and drawn down as they are paid; NULL for any other job,
whose checks the treasury pays. Decided once, at submission: a dataset's provider list
changed later, or a job in flight when this was deployed, no longer decides who pays
a check that its escrow never held. Rows from before stay NULL: the treasury pays.
"""
import sqlalchemy as sa
from alembic import op

revision = '0034h'
down_revision = '0033g'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('jobs', sa.Column('check_budget', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch:
        batch.drop_column('check_budget')
