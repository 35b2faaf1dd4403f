"""This deployment's network id, signed by every signed request

Revision ID: 0028n
Revises: 0027h
Create Date: 2026-12-02 07:10:00.000000

A signed request signed method, path, body, timestamp and nonce, nothing naming the
coordinator: one sent to a coordinator (and seen by its operator, or a proxy) could
be replayed within two minutes to any other deployment where the same key has an
account (a new API key, a withdrawal, a bond). Every request now signs the network
id, 128 random bits made here, once per database: every replica reads the same one.

``check_secret`` (256 random bits, never published) keys what a sampling check draws
(``Coordinator.check_nonce``): every check of one result draws the same, and the
claimant cannot compute it.
"""
import secrets

import sqlalchemy as sa
from alembic import op

revision = '0028n'
down_revision = '0027h'
branch_labels = None
depends_on = None


def upgrade() -> None:
    meta = op.create_table(
        'network_meta',
        sa.Column('key', sa.String(32), primary_key=True),
        sa.Column('value', sa.String(200), nullable=False))
    op.bulk_insert(meta, [{'key': 'network_id', 'value': secrets.token_hex(16)},
                          {'key': 'check_secret', 'value': secrets.token_hex(32)}])


def downgrade() -> None:
    op.drop_table('network_meta')
