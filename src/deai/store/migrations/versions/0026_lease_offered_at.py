"""Leases: when the provider's lease agent was handed each one, who caused a notice, and
when a host's lease agent was last heard from

Revision ID: 0026l
Revises: 0025a
Create Date: 2026-12-02 04:00:00.000000

``offered_at``: the moment a pending lease was first handed to its provider's lease
agent (its long-poll). The start timeout counts from it, not from the lease's
creation (the coordinator may hold a lease back while its volume is being saved),
and a lease never handed over ends refunded with no penalty: the provider cannot be
blamed for a lease it never received.

``preempt_by``: the lease whose placement gave this spot lease its preemption notice.
When that lease ends before ``preempt_at``, the notice is taken back; before, a
lease created and ended at once (refunded in full) still evicted the spot leases.

``lease_hosts.agent_seen_at``: the last poll or lease heartbeat of the host's lease
agent. Placement passes over a host whose lease agent has been silent for a while: a
provider online through its job agent alone would otherwise take every lease and start
none.
"""
import sqlalchemy as sa
from alembic import op

revision = '0026l'
down_revision = '0025a'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column('leases', sa.Column('offered_at', sa.Float(), nullable=True))
    op.add_column('leases', sa.Column('preempt_by', sa.String(length=40), nullable=True))
    op.create_index('ix_leases_preempt_by', 'leases', ['preempt_by'], unique=False)
    op.add_column('lease_hosts', sa.Column('agent_seen_at', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('lease_hosts') as batch:
        batch.drop_column('agent_seen_at')
    op.drop_index('ix_leases_preempt_by', table_name='leases')
    with op.batch_alter_table('leases') as batch:
        batch.drop_column('preempt_by')
        batch.drop_column('offered_at')
