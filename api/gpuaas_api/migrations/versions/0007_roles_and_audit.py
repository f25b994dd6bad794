"""Roles, tokens narrowed to a role, who asked for each job, the audit trail and the login throttle

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07 06:00:00

Every user that exists already was an admin (every user was created one): they stay admins, and
no existing token changes (a token's role is NULL: its user's).
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE users SET role = 'admin', is_super_admin = TRUE")
    with op.batch_alter_table('api_tokens') as batch_op:
        batch_op.add_column(sa.Column('role', sa.String(length=32), nullable=True))
    with op.batch_alter_table('jobs') as batch_op:
        batch_op.add_column(sa.Column('actor_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('actor', sa.String(length=64), nullable=True))
        batch_op.create_index('ix_jobs_actor', ['actor'])
    op.create_table(
        'audit_events',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('actor_id', sa.Integer(), nullable=True),
        sa.Column('actor', sa.String(length=64), nullable=False),
        sa.Column('token_id', sa.Integer(), nullable=True),
        sa.Column('address', sa.String(length=64), nullable=False),
        sa.Column('method', sa.String(length=8), nullable=False),
        sa.Column('path', sa.String(length=512), nullable=False),
        sa.Column('action', sa.String(length=128), nullable=False),
        sa.Column('object_type', sa.String(length=32), nullable=True),
        sa.Column('object_id', sa.String(length=64), nullable=True),
        sa.Column('status', sa.Integer(), nullable=False),
        sa.Column('job_id', sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_audit_events_at', 'audit_events', ['at'])
    op.create_index('ix_audit_events_actor', 'audit_events', ['actor'])
    op.create_index('ix_audit_events_object', 'audit_events', ['object_type', 'object_id'])
    op.create_table(
        'login_failures',
        sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
        sa.Column('at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('address', sa.String(length=64), nullable=False),
        sa.Column('username_hash', sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_login_failures_at', 'login_failures', ['at'])
    op.create_index('ix_login_failures_address_at', 'login_failures', ['address', 'at'])


def downgrade() -> None:
    op.drop_table('login_failures')
    op.drop_table('audit_events')
    with op.batch_alter_table('jobs') as batch_op:
        batch_op.drop_index('ix_jobs_actor')
        batch_op.drop_column('actor')
        batch_op.drop_column('actor_id')
    with op.batch_alter_table('api_tokens') as batch_op:
        batch_op.drop_column('role')
