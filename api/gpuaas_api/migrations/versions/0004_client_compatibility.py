"""Client compatibility: display names, pool labels, deletable former controllers

- nodes.name is a display name of up to 128 characters;
- pools.pool_label;
- clusters.controller_node_id is set to NULL when the node is deleted;
- regions.gpuaas_status goes: status.gpuaas is derived from the region's clusters;
- jobs.pool_id: a pool's changes queue behind each other;
- scans.status holds ScanStatus values (as long as the other enums' columns).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 08:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

CONTROLLER_FK = 'fk_clusters_controller_node_id_nodes'


def upgrade() -> None:
    with op.batch_alter_table('nodes') as batch_op:
        batch_op.alter_column('name', existing_type=sa.String(length=63), type_=sa.String(length=128),
                              existing_nullable=False)
    with op.batch_alter_table('pools') as batch_op:
        batch_op.add_column(sa.Column('pool_label', sa.String(length=63), nullable=True))
    with op.batch_alter_table('clusters') as batch_op:
        batch_op.drop_constraint(CONTROLLER_FK, type_='foreignkey')
        batch_op.create_foreign_key(CONTROLLER_FK, 'nodes', ['controller_node_id'], ['id'], ondelete='SET NULL')
    with op.batch_alter_table('regions') as batch_op:
        batch_op.drop_column('gpuaas_status')
    with op.batch_alter_table('jobs') as batch_op:
        batch_op.add_column(sa.Column('pool_id', sa.Integer(), nullable=True))
        batch_op.create_index('ix_jobs_pool_id', ['pool_id'])
    with op.batch_alter_table('scans') as batch_op:
        batch_op.alter_column('status', existing_type=sa.String(length=16), type_=sa.String(length=32),
                              existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table('scans') as batch_op:
        batch_op.alter_column('status', existing_type=sa.String(length=32), type_=sa.String(length=16),
                              existing_nullable=False)
    with op.batch_alter_table('jobs') as batch_op:
        batch_op.drop_index('ix_jobs_pool_id')
        batch_op.drop_column('pool_id')
    with op.batch_alter_table('regions') as batch_op:
        batch_op.add_column(sa.Column('gpuaas_status', sa.String(length=8), nullable=False, server_default='none'))
    with op.batch_alter_table('clusters') as batch_op:
        batch_op.drop_constraint(CONTROLLER_FK, type_='foreignkey')
        batch_op.create_foreign_key(CONTROLLER_FK, 'nodes', ['controller_node_id'], ['id'])
    with op.batch_alter_table('pools') as batch_op:
        batch_op.drop_column('pool_label')
    with op.batch_alter_table('nodes') as batch_op:
        batch_op.alter_column('name', existing_type=sa.String(length=128), type_=sa.String(length=63),
                              existing_nullable=False)
