"""job_events.node_id references nodes.id (ON DELETE SET NULL)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 15:00:00

Without it, a node added after a deleted one could be given its id (SQLite reuses the highest id)
and show the deleted node's log lines. The events already filed under a node that no longer
exists, or under one added after them (the id was reused), are filed under none first: they stay
with their job. On SQLite the table is copied (batch mode), once.
"""
from __future__ import annotations

from alembic import op


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE job_events SET node_id = NULL WHERE node_id IS NOT NULL AND NOT EXISTS "
               "(SELECT 1 FROM nodes WHERE nodes.id = job_events.node_id AND nodes.created_at <= job_events.created_at)")
    with op.batch_alter_table('job_events') as batch_op:
        batch_op.create_foreign_key('fk_job_events_node_id_nodes', 'nodes', ['node_id'], ['id'], ondelete='SET NULL')


def downgrade() -> None:
    with op.batch_alter_table('job_events') as batch_op:
        batch_op.drop_constraint('fk_job_events_node_id_nodes', type_='foreignkey')
