"""Chains (chain id and step on each task) and the task event log for the live stream.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hexlabs_tasks") as batch:
        batch.add_column(sa.Column("chain_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("chain_step", sa.Integer(), nullable=False, server_default="1"))

    op.create_table(
        "hexlabs_task_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(64), nullable=False),
        sa.Column("type", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=True),
        sa.Column("at", sa.BigInteger(), nullable=False),
        sa.Column("data", sa.JSON(), nullable=True),
    )
    op.create_index("ix_hexlabs_task_events_task_id", "hexlabs_task_events", ["task_id", "id"])


def downgrade() -> None:
    op.drop_table("hexlabs_task_events")
    with op.batch_alter_table("hexlabs_tasks") as batch:
        batch.drop_column("chain_step")
        batch.drop_column("chain_id")
