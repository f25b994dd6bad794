"""metrics: pool of each sample, rollups, latest readings, storage samples, schedules

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 04:55:49.335213
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('schedules',
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('next_run_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )
    op.create_table('metric_rollups',
    sa.Column('pool_id', sa.Integer(), nullable=False),
    sa.Column('width_seconds', sa.Integer(), nullable=False),
    sa.Column('bucket_start', sa.BigInteger(), nullable=False),
    sa.Column('samples', sa.Integer(), nullable=False),
    sa.Column('utilization_gpu_percent_sum', sa.Float(), nullable=False),
    sa.Column('utilization_gpu_percent_max', sa.Float(), nullable=False),
    sa.Column('memory_used_mb_sum', sa.Float(), nullable=False),
    sa.Column('memory_used_mb_max', sa.Float(), nullable=False),
    sa.Column('temperature_c_sum', sa.Float(), nullable=False),
    sa.Column('temperature_c_max', sa.Float(), nullable=False),
    sa.Column('power_w_sum', sa.Float(), nullable=False),
    sa.Column('power_w_max', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['pool_id'], ['pools.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('pool_id', 'width_seconds', 'bucket_start')
    )
    with op.batch_alter_table('metric_rollups', schema=None) as batch_op:
        batch_op.create_index('ix_metric_rollups_width_time', ['width_seconds', 'bucket_start'], unique=False)
    op.create_table('gpu_readings',
    sa.Column('gpu_id', sa.Integer(), nullable=False),
    sa.Column('sampled_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('utilization_gpu_percent', sa.Float(), nullable=False),
    sa.Column('memory_used_mb', sa.Float(), nullable=False),
    sa.Column('temperature_c', sa.Float(), nullable=False),
    sa.Column('power_w', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['gpu_id'], ['gpus.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('gpu_id')
    )
    op.create_table('storage_samples',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('node_id', sa.Integer(), nullable=False),
    sa.Column('sampled_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['node_id'], ['nodes.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('storage_samples', schema=None) as batch_op:
        batch_op.create_index('ix_storage_samples_node_time', ['node_id', 'sampled_at'], unique=False)

    with op.batch_alter_table('metric_samples', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pool_id', sa.Integer(), nullable=True))
        batch_op.create_index('ix_metric_samples_pool_time', ['pool_id', 'sampled_at'], unique=False)
        batch_op.create_foreign_key('fk_metric_samples_pool_id_pools', 'pools', ['pool_id'], ['id'], ondelete='CASCADE')



def downgrade() -> None:
    with op.batch_alter_table('metric_samples', schema=None) as batch_op:
        batch_op.drop_constraint('fk_metric_samples_pool_id_pools', type_='foreignkey')
        batch_op.drop_index('ix_metric_samples_pool_time')
        batch_op.drop_column('pool_id')

    with op.batch_alter_table('storage_samples', schema=None) as batch_op:
        batch_op.drop_index('ix_storage_samples_node_time')

    op.drop_table('storage_samples')
    op.drop_table('gpu_readings')
    with op.batch_alter_table('metric_rollups', schema=None) as batch_op:
        batch_op.drop_index('ix_metric_rollups_width_time')
    op.drop_table('metric_rollups')
    op.drop_table('schedules')
