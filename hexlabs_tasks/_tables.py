"""The SQLModel tables: the source of truth for tasks, their attempts, dependencies and idempotency keys.

Times are Unix milliseconds in BIGINT columns, the same unit as the wire, so nothing converts time zones.
The schema is created and upgraded by the Alembic migrations in ``hexlabs_tasks/_migrations``; a change here
needs a new migration there.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Index, Text
from sqlmodel import Field, SQLModel

__all__ = ["AttemptRow", "DependencyRow", "EventRow", "IdempotencyRow", "TaskRow"]


def _json(nullable: bool = False) -> Any:
    return Field(sa_column=Column(JSON(none_as_null=True), nullable=nullable))


class TaskRow(SQLModel, table=True):
    """One task: its request, schedule, policy, status and the worker's hold on it."""

    __tablename__ = "hexlabs_tasks"
    __table_args__ = (
        Index("ix_hexlabs_tasks_due_at", "due_at"),
        Index("ix_hexlabs_tasks_lease_expires_at", "lease_expires_at"),
        Index("ix_hexlabs_tasks_perform_at_id", "perform_at", "id"),
        Index("ix_hexlabs_tasks_status_perform_at_id", "status", "perform_at", "id"),
        Index("ix_hexlabs_tasks_prefect_owed", "prefect_owed"),
    )

    id: str = Field(primary_key=True, max_length=64)
    url: str = Field(sa_column=Column(Text, nullable=False))
    method: str = Field(max_length=16)
    headers: dict[str, str] = _json()
    params: dict[str, Any] = _json()
    body: Any = _json(nullable=True)
    timeout: float
    perform_at: int = Field(sa_type=BigInteger)
    retries: int
    retry_policy: dict[str, Any] = _json()
    depends_on: list[str] = _json()
    status: str = Field(max_length=16)
    attempts: int = 0
    # Bumped each time the task is queued again; each generation has its own Prefect flow run.
    generation: int = 0
    last_response: dict[str, Any] | None = _json(nullable=True)
    last_error: str | None = Field(default=None, sa_type=Text)
    # When a worker should next act on the task; NULL while an attempt runs, while it waits for dependencies,
    # and once it is final.
    due_at: int | None = Field(default=None, sa_type=BigInteger)
    lease_owner: str | None = Field(default=None, max_length=64)
    lease_expires_at: int | None = Field(default=None, sa_type=BigInteger)
    attempt_started_at: int | None = Field(default=None, sa_type=BigInteger)
    flow_run_id: str | None = Field(default=None, max_length=64)
    # The Prefect state the flow run still has to be moved to (a final state whose mirroring failed or has not
    # happened yet); NULL when Prefect agrees with this row.
    prefect_owed: str | None = Field(default=None, max_length=32)
    version: int = 0
    # The chain a task belongs to (the id of its first task) and its place in it, 1-based: shown in Prefect as
    # tags so the runs of one chain can be found together and in order.
    chain_id: str | None = Field(default=None, max_length=64)
    chain_step: int = 1
    created_at: int = Field(sa_type=BigInteger)
    updated_at: int = Field(sa_type=BigInteger)
    completed_at: int | None = Field(default=None, sa_type=BigInteger)


class AttemptRow(SQLModel, table=True):
    """One attempt of one task; kept when the task is queued again."""

    __tablename__ = "hexlabs_task_attempts"
    __table_args__ = (Index("ix_hexlabs_task_attempts_task_id", "task_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    task_id: str = Field(max_length=64)
    generation: int = 0
    number: int
    started_at: int = Field(sa_type=BigInteger)
    finished_at: int | None = Field(default=None, sa_type=BigInteger)
    status: int | None = None
    error: str | None = Field(default=None, sa_type=Text)
    duration_ms: int | None = None
    response_excerpt: str | None = Field(default=None, sa_type=Text)


class DependencyRow(SQLModel, table=True):
    """``task_id`` runs only after ``depends_on_id`` completed."""

    __tablename__ = "hexlabs_task_dependencies"
    __table_args__ = (Index("ix_hexlabs_task_dependencies_depends_on_id", "depends_on_id"),)

    task_id: str = Field(primary_key=True, max_length=64)
    depends_on_id: str = Field(primary_key=True, max_length=64)


class IdempotencyRow(SQLModel, table=True):
    """A create's ``Idempotency-Key``: the body it came with and the task it made."""

    __tablename__ = "hexlabs_idempotency_keys"

    key: str = Field(primary_key=True, max_length=255)
    request_hash: str = Field(max_length=64)
    task_id: str = Field(max_length=64)
    created_at: int = Field(sa_type=BigInteger)


class EventRow(SQLModel, table=True):
    """One change in a task's life, for the live event stream (a bounded window of the most recent ones)."""

    __tablename__ = "hexlabs_task_events"
    __table_args__ = (Index("ix_hexlabs_task_events_task_id", "task_id", "id"),)

    id: int | None = Field(default=None, primary_key=True)
    task_id: str = Field(max_length=64)
    type: str = Field(max_length=32)
    status: str | None = Field(default=None, max_length=16)
    at: int = Field(sa_type=BigInteger)
    data: dict[str, Any] | None = _json(nullable=True)
