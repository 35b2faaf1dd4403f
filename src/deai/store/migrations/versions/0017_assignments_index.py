"""Drop the assignments' provider_id index: ix_assignments_provider_status leads with it

Revision ID: 0017a
Revises: 0016c
Create Date: 2026-12-01 09:50:00.000000

``ix_assignments_provider_status`` (provider_id, status) answers every lookup by
provider alone as well (its leading column), so ``ix_assignments_provider_id`` only
cost one more B-tree to write per lease: 3-4 % of a matching round's placements at
10,000 providers (``bench/bench_matcher.py``).
"""
from alembic import op

revision = '0017a'
down_revision = '0016c'
branch_labels = None
depends_on = None


def upgrade() -> None:  # not in a batch: on SQLite that may copy the table, and its
    # lifecycle triggers (0016c) with it
    op.drop_index('ix_assignments_provider_id', table_name='assignments')


def downgrade() -> None:
    op.create_index('ix_assignments_provider_id', 'assignments', ['provider_id'])
