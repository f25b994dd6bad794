"""job_events.node_id references nodes.id (ON DELETE SET NULL); scans.job_id is indexed

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07 15:00:00

Without it, a node added after a deleted one could be given its id (SQLite reuses the highest id)
and show the deleted node's log lines. The events already filed under a node that no longer
exists, or under one added after them (the id was reused), are filed under none first: they stay
with their job. On SQLite the table is copied (batch mode), once.

scans.job_id gets an index: a pruned job sets its scans' job_id to NULL, and a finished job finds
its scan by it; without one, each is a scan of the whole table.
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
    op.create_index('ix_scans_job_id', 'scans', ['job_id'])


def downgrade() -> None:
    op.drop_index('ix_scans_job_id', table_name='scans')
    with op.batch_alter_table('job_events') as batch_op:
        batch_op.drop_constraint('fk_job_events_node_id_nodes', type_='foreignkey')
