"""nodes: kubernetes_name, derived once from the host's hostname

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 17:15:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('nodes') as batch_op:
        batch_op.add_column(sa.Column('kubernetes_name', sa.String(length=63), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('nodes') as batch_op:
        batch_op.drop_column('kubernetes_name')
