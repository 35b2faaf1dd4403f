"""Datasets, terms, uses and royalties (issue 18)

Revision ID: 0014d
Revises: 0013v
Create Date: 2026-11-30 14:00:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0014d'
down_revision = '0013v'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False, index=True),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("blob_digest", sa.String(64), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("info", sa.JSON, nullable=False),
        sa.Column("owner_key", sa.Text, nullable=False),
        sa.Column("price_per_use", sa.BigInteger, nullable=False),
        sa.Column("allow", sa.JSON, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=True),
        sa.Column("max_uses", sa.Integer, nullable=True),
        sa.Column("uses", sa.Integer, nullable=False),
        sa.Column("royalties", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False, index=True),
        sa.Column("revoked_at", sa.Float, nullable=True),
    )
    op.create_table(
        "dataset_uses",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("dataset_id", sa.String(40), sa.ForeignKey("datasets.id"), nullable=False,
                  index=True),
        sa.Column("job_id", sa.String(40), nullable=False, unique=True),
        sa.Column("job_owner", sa.String(64), nullable=False, index=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("price", sa.BigInteger, nullable=False),
        sa.Column("royalty_seq", sa.BigInteger, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "dataset_keys",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("dataset_id", sa.String(40), sa.ForeignKey("datasets.id"), nullable=False,
                  index=True),
        sa.Column("job_id", sa.String(40), nullable=False, index=True),
        sa.Column("provider_id", sa.String(64), nullable=False),
        sa.Column("wrapped", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("job_id", "provider_id", name="uq_dataset_keys_job"),
    )


def downgrade() -> None:
    op.drop_table("dataset_keys")
    op.drop_table("dataset_uses")
    op.drop_table("datasets")
