"""The first schema: tasks, attempts, dependencies, idempotency keys.

Revision ID: 0001
Revises:
Create Date: 2026-12-03
"""
from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hexlabs_tasks",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("body", sa.JSON(), nullable=True),
        sa.Column("timeout", sa.Float(), nullable=False),
        sa.Column("perform_at", sa.BigInteger(), nullable=False),
        sa.Column("retries", sa.Integer(), nullable=False),
        sa.Column("retry_policy", sa.JSON(), nullable=False),
        sa.Column("depends_on", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("last_response", sa.JSON(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("due_at", sa.BigInteger(), nullable=True),
        sa.Column("lease_owner", sa.String(64), nullable=True),
        sa.Column("lease_expires_at", sa.BigInteger(), nullable=True),
        sa.Column("attempt_started_at", sa.BigInteger(), nullable=True),
        sa.Column("flow_run_id", sa.String(64), nullable=True),
        sa.Column("prefect_owed", sa.String(32), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sa.BigInteger(), nullable=False),
        sa.Column("completed_at", sa.BigInteger(), nullable=True),
    )
    op.create_index("ix_hexlabs_tasks_due_at", "hexlabs_tasks", ["due_at"])
    op.create_index("ix_hexlabs_tasks_lease_expires_at", "hexlabs_tasks", ["lease_expires_at"])
    op.create_index("ix_hexlabs_tasks_perform_at_id", "hexlabs_tasks", ["perform_at", "id"])
    op.create_index("ix_hexlabs_tasks_status_perform_at_id", "hexlabs_tasks", ["status", "perform_at", "id"])
    op.create_index("ix_hexlabs_tasks_prefect_owed", "hexlabs_tasks", ["prefect_owed"])

    op.create_table(
        "hexlabs_task_attempts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("task_id", sa.String(64), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.BigInteger(), nullable=False),
        sa.Column("finished_at", sa.BigInteger(), nullable=True),
        sa.Column("status", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=True),
        sa.Column("response_excerpt", sa.Text(), nullable=True),
    )
    op.create_index("ix_hexlabs_task_attempts_task_id", "hexlabs_task_attempts", ["task_id", "id"])

    op.create_table(
        "hexlabs_task_dependencies",
        sa.Column("task_id", sa.String(64), primary_key=True),
        sa.Column("depends_on_id", sa.String(64), primary_key=True),
    )
    op.create_index(
        "ix_hexlabs_task_dependencies_depends_on_id", "hexlabs_task_dependencies", ["depends_on_id"]
    )

    op.create_table(
        "hexlabs_idempotency_keys",
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("task_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("hexlabs_idempotency_keys")
    op.drop_table("hexlabs_task_dependencies")
    op.drop_table("hexlabs_task_attempts")
    op.drop_table("hexlabs_tasks")
