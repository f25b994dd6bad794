"""tenant usage: the slots Pods hold now, each team's GPU time, and per-team rollups

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08 03:00:00
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'tenant_slots',
        sa.Column('gpu_id', sa.Integer(), nullable=False),
        sa.Column('slot_index', sa.Integer(), nullable=False),
        sa.Column('pool_id', sa.Integer(), nullable=False),
        sa.Column('team', sa.String(length=63), nullable=False),
        sa.Column('pod', sa.String(length=253), nullable=False),
        sa.Column('container', sa.String(length=63), nullable=False),
        sa.Column('pod_uid', sa.String(length=36), nullable=True),
        sa.Column('running', sa.Boolean(), nullable=False),
        sa.Column('vram_used_mb', sa.Float(), nullable=False),
        sa.Column('gpu_seconds', sa.Float(), nullable=False),
        sa.Column('sampled_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['gpu_id'], ['gpus.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['pool_id'], ['pools.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('gpu_id', 'slot_index')
    )
    with op.batch_alter_table('tenant_slots', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tenant_slots_pool_id'), ['pool_id'], unique=False)
    op.create_table(
        'tenant_totals',
        sa.Column('pool_id', sa.Integer(), nullable=False),
        sa.Column('team', sa.String(length=63), nullable=False),
        sa.Column('gpu_seconds', sa.Float(), nullable=False),
        sa.Column('first_seen', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_seen', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['pool_id'], ['pools.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('pool_id', 'team')
    )
    op.create_table(
        'tenant_rollups',
        sa.Column('pool_id', sa.Integer(), nullable=False),
        sa.Column('team', sa.String(length=63), nullable=False),
        sa.Column('width_seconds', sa.Integer(), nullable=False),
        sa.Column('bucket_start', sa.BigInteger(), nullable=False),
        sa.Column('samples', sa.Integer(), nullable=False),
        sa.Column('slots_sum', sa.Float(), nullable=False),
        sa.Column('slots_max', sa.Float(), nullable=False),
        sa.Column('vram_used_mb_sum', sa.Float(), nullable=False),
        sa.Column('vram_used_mb_max', sa.Float(), nullable=False),
        sa.Column('gpu_seconds', sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(['pool_id'], ['pools.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('pool_id', 'team', 'width_seconds', 'bucket_start')
    )
    with op.batch_alter_table('tenant_rollups', schema=None) as batch_op:
        batch_op.create_index('ix_tenant_rollups_width_time', ['width_seconds', 'bucket_start'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('tenant_rollups', schema=None) as batch_op:
        batch_op.drop_index('ix_tenant_rollups_width_time')
    op.drop_table('tenant_rollups')
    op.drop_table('tenant_totals')
    with op.batch_alter_table('tenant_slots', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tenant_slots_pool_id'))
    op.drop_table('tenant_slots')
