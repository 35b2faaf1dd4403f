"""Events found by their subject, through a partial index

Revision ID: 0024s
Revises: 0023j
Create Date: 2026-12-02 03:45:00.000000

A lease's and a cluster's views list the events they are the subject of, and a
job's view counts its corrected results; ``events.subject`` had no index, so each
read walked the table, which grows by one row per placement (millions on a live
network): an owner polling a lease made the coordinator scan it every time. The
index leaves out ``task_assigned``, the matcher's event per placement, which no view
reads by subject, so the matcher's hottest insert does not pay for it. Queries match
it through ``Event.of_subject``.
"""
import sqlalchemy as sa
from alembic import op

revision = '0024s'
down_revision = '0023j'
branch_labels = None
depends_on = None

WHERE = sa.text("kind <> 'task_assigned'")


def upgrade() -> None:
    op.create_index('ix_events_subject', 'events', ['subject'], unique=False,
                    sqlite_where=WHERE, postgresql_where=WHERE)


def downgrade() -> None:
    op.drop_index('ix_events_subject', table_name='events')
