"""jobs.lease_expires_at: a running job's lease

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 09:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('jobs') as batch_op:
        batch_op.add_column(sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index('ix_jobs_lease_expires_at', ['lease_expires_at'])


def downgrade() -> None:
    with op.batch_alter_table('jobs') as batch_op:
        batch_op.drop_index('ix_jobs_lease_expires_at')
        batch_op.drop_column('lease_expires_at')
