"""Assignments' digests indexed, for a blob discard's check under its hold

Revision ID: 0025a
Revises: 0024s
Create Date: 2026-12-02 03:50:00.000000

A result sent inline and a check's payload are stored by the coordinator in the
transaction that writes the assignment naming them, under the bytes' hold
(``blob_quota.hold``), and a discard of the same bytes (another account's upload
that ran out) checks ``assignments.output_digest`` and ``assignments.input_digest``
again under that hold. Before, they were stored without it: a discard that read
before the row existed could delete an accepted result's only copy. Partial
indexes: a primary's lease, the matcher's hottest insert, sets neither digest.
"""
import sqlalchemy as sa
from alembic import op

revision = '0025a'
down_revision = '0024s'
branch_labels = None
depends_on = None

COLUMNS = ("output_digest", "input_digest")


def upgrade() -> None:
    for col in COLUMNS:
        where = sa.text(f"{col} IS NOT NULL")
        op.create_index(f'ix_assignments_{col}', 'assignments', [col], unique=False,
                        sqlite_where=where, postgresql_where=where)


def downgrade() -> None:
    for col in reversed(COLUMNS):
        op.drop_index(f'ix_assignments_{col}', table_name='assignments')
