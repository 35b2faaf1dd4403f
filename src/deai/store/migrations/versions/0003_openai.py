"""OpenAI-compatible API: API keys, files and batches

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 15:00:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('api_keys',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('account', sa.String(length=64), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=24), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('spend_cap', sa.BigInteger(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('revoked_at', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key_hash')
    )
    op.create_index('ix_api_keys_account', 'api_keys', ['account'], unique=False)
    op.create_table('api_key_jobs',
    sa.Column('job_id', sa.String(length=40), nullable=False),
    sa.Column('api_key_id', sa.String(length=40), nullable=False),
    sa.Column('source', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('job_id')
    )
    op.create_index('ix_api_key_jobs_api_key_id', 'api_key_jobs', ['api_key_id'],
                    unique=False)
    op.create_table('api_files',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('account', sa.String(length=64), nullable=False),
    sa.Column('purpose', sa.String(length=32), nullable=False),
    sa.Column('filename', sa.String(length=255), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_api_files_account', 'api_files', ['account'], unique=False)
    op.create_index('ix_api_files_created_at', 'api_files', ['created_at'], unique=False)
    op.create_table('api_batches',
    sa.Column('id', sa.String(length=40), nullable=False),
    sa.Column('account', sa.String(length=64), nullable=False),
    sa.Column('api_key_id', sa.String(length=40), nullable=False),
    sa.Column('endpoint', sa.String(length=64), nullable=False),
    sa.Column('input_file_id', sa.String(length=40), nullable=False),
    sa.Column('job_id', sa.String(length=40), nullable=False),
    sa.Column('completion_window', sa.String(length=16), nullable=False),
    sa.Column('meta', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('cancelling_at', sa.Float(), nullable=True),
    sa.Column('output_file_id', sa.String(length=40), nullable=True),
    sa.Column('error_file_id', sa.String(length=40), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_api_batches_account', 'api_batches', ['account'], unique=False)
    op.create_index('ix_api_batches_created_at', 'api_batches', ['created_at'], unique=False)
    op.create_index('ix_api_batches_job_id', 'api_batches', ['job_id'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_api_batches_job_id', table_name='api_batches')
    op.drop_index('ix_api_batches_created_at', table_name='api_batches')
    op.drop_index('ix_api_batches_account', table_name='api_batches')
    op.drop_table('api_batches')
    op.drop_index('ix_api_files_created_at', table_name='api_files')
    op.drop_index('ix_api_files_account', table_name='api_files')
    op.drop_table('api_files')
    op.drop_index('ix_api_key_jobs_api_key_id', table_name='api_key_jobs')
    op.drop_table('api_key_jobs')
    op.drop_index('ix_api_keys_account', table_name='api_keys')
    op.drop_table('api_keys')
