"""training checkpoints

Revision ID: 0002
Revises: 0002v
Create Date: 2026-11-21 13:50:00.000000

Follows the verification migration so the history stays one line (Alembic's
``upgrade head`` refuses two heads).
"""
import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0002v'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('checkpoints',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('task_id', sa.String(length=60), nullable=False),
    sa.Column('step', sa.BigInteger(), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('chain_hash', sa.String(length=64), nullable=False),
    sa.Column('meta', sa.JSON(), nullable=False),
    sa.Column('assignment_id', sa.String(length=40), nullable=False),
    sa.Column('provider_id', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('assignment_id', 'step', name='uq_checkpoints_step')
    )
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_checkpoints_assignment_id'), ['assignment_id'],
                              unique=False)
        batch_op.create_index(batch_op.f('ix_checkpoints_task_id'), ['task_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('checkpoints', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_checkpoints_task_id'))
        batch_op.drop_index(batch_op.f('ix_checkpoints_assignment_id'))

    op.drop_table('checkpoints')
