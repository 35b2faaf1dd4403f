"""The columns a blob discard checks again, under its hold, indexed

Revision ID: 0022b
Revises: 0021e
Create Date: 2026-12-02 01:20:00.000000

A discard of bytes nothing used on its snapshot checks again, holding them, for a
row written since that names them (``coordinator.blob_quota.HELD_BY``). On SQLite
that check runs under the write lock, so each of its columns needs an index:
``api_files.digest``, ``jobs.output_digest`` and ``datasets.blob_digest`` had none
(the last two are new to the check: a job's assembled output and a dataset's
ciphertext are now held while their rows are written).
"""
from alembic import op

revision = '0022b'
down_revision = '0021e'
branch_labels = None
depends_on = None

INDEXES = (("ix_api_files_digest", "api_files", "digest"),
           ("ix_jobs_output_digest", "jobs", "output_digest"),
           ("ix_datasets_blob_digest", "datasets", "blob_digest"))


def upgrade() -> None:
    for name, table, col in INDEXES:
        op.create_index(name, table, [col], unique=False)


def downgrade() -> None:
    for name, table, _ in reversed(INDEXES):
        op.drop_index(name, table_name=table)
