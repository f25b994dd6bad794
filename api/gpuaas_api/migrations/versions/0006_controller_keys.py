"""controller_keys: the deployment's SSH identity, shared by every service host

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 15:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'controller_keys',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('public_key', sa.Text(), nullable=False),
        sa.Column('private_key_encrypted', sa.Text(), nullable=False),
        sa.Column('fingerprint', sa.String(length=64), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('(CURRENT_TIMESTAMP)'), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ux_controller_keys_state', 'controller_keys', ['state'], unique=True,
                    sqlite_where=sa.text("state IN ('active', 'staged')"),
                    postgresql_where=sa.text("state IN ('active', 'staged')"))


def downgrade() -> None:
    op.drop_index('ux_controller_keys_state', table_name='controller_keys')
    op.drop_table('controller_keys')
