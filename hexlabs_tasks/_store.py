"""The task store: the database engine and every query the service and the worker make.

It holds no business rules; it stores, finds and changes rows, and does the two things that must be atomic in
the database: a worker's claim of due tasks (a single ``UPDATE ... RETURNING`` whose condition a second worker
can never also meet) and compare-and-set updates on the row's ``version``.

SQLite (the default) runs in WAL mode, and write transactions start with ``BEGIN IMMEDIATE`` so two processes
never deadlock upgrading a read lock; PostgreSQL runs through asyncpg. PostgreSQL locks rows, not the database, so
two transactions can wait on each other's rows; it then aborts one of them ("deadlock detected"). The writes that
touch many rows at once keep that rare (a claim skips rows another transaction holds, held rows are locked in id
order), and every write transaction is run again when PostgreSQL aborts it for such a conflict: it was rolled
back whole, so nothing of it happened.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import functools
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import Table, and_, case, delete, event, func, or_, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.sql.elements import ColumnElement

from hexlabs_tasks._exceptions import ServiceUnavailable, TaskValidationError
from hexlabs_tasks._models import Attempt, Task, TaskStatus
from hexlabs_tasks._tables import AttemptRow, DependencyRow, EventRow, IdempotencyRow, TaskRow

__all__ = [
    "CONFLICT_ATTEMPTS",
    "Finish",
    "Store",
    "decode_cursor",
    "encode_cursor",
    "is_conflict",
    "normalize_database_url",
    "now_ms",
    "to_attempt",
    "to_task",
]

_ACTIVE = (TaskStatus.PENDING.value, TaskStatus.RUNNING.value)
_ACTIVE_OR_DONE = (*_ACTIVE, TaskStatus.COMPLETED.value)
# Typed column collections: SQLModel's class attributes look like plain values to a type checker.
_TASKS = cast(Table, TaskRow.__table__)  # type: ignore[attr-defined]
_DEPENDENCIES = cast(Table, DependencyRow.__table__)  # type: ignore[attr-defined]
_T = _TASKS.c
_A = cast(Table, AttemptRow.__table__).c  # type: ignore[attr-defined]
_D = _DEPENDENCIES.c
_I = cast(Table, IdempotencyRow.__table__).c  # type: ignore[attr-defined]
_E = cast(Table, EventRow.__table__).c  # type: ignore[attr-defined]


# Every statement is planned for its own parameters and the table as it is now. asyncpg prepares statements and
# PostgreSQL then caches a generic plan after five runs, planned for the table as it was: a worker that starts on an
# empty table keeps seq-scan plans for ever as tasks pile up (a cached plan is only redone after ANALYZE, which
# never comes with autovacuum off and comes late after a bulk insert), so each claim walks every pending task.
# Planning these small statements costs a fraction of a millisecond. (PostgreSQL 12 and newer.)
_PG_CONNECT: dict[str, Any] = {"server_settings": {"plan_cache_mode": "force_custom_plan"}}

# SQLSTATEs of a transaction PostgreSQL aborted for a conflict with another one, to be run again: deadlock_detected
# (two transactions waiting on each other's row locks) and serialization_failure.
_CONFLICT_SQLSTATES = frozenset({"40P01", "40001"})
#: How many times a write transaction is run at the most when PostgreSQL keeps aborting it for a conflict.
CONFLICT_ATTEMPTS = 6

_R = TypeVar("_R")


def is_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` is PostgreSQL aborting a transaction for a conflict with another (safe to run again)."""
    return isinstance(exc, DBAPIError) and getattr(exc.orig, "pgcode", None) in _CONFLICT_SQLSTATES


def task_event(task_id: str, type_: str, status: str | None, at: int, data: dict[str, Any] | None = None) -> EventRow:
    """An event row for the live stream (written in the same transaction as the change it describes)."""
    return EventRow(task_id=task_id, type=type_, status=status, at=at, data=data)


def now_ms() -> int:
    """The current Unix time in milliseconds."""
    return time.time_ns() // 1_000_000


def normalize_database_url(url: str) -> str:
    """Map a plain ``sqlite://`` or ``postgresql://`` URL to its async driver (aiosqlite, asyncpg)."""
    parsed = make_url(url)
    driver = parsed.drivername
    if driver in ("sqlite", "sqlite+pysqlite"):
        parsed = parsed.set(drivername="sqlite+aiosqlite")
    elif driver in ("postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg2"):
        parsed = parsed.set(drivername="postgresql+asyncpg")
    elif driver not in ("sqlite+aiosqlite", "postgresql+asyncpg"):
        raise ValueError(f"unsupported database URL scheme {driver!r}: use sqlite or postgresql")
    return parsed.render_as_string(hide_password=False)


def encode_cursor(perform_at: int, task_id: str) -> str:
    """An opaque cursor for the position after (perform_at, id)."""
    return base64.urlsafe_b64encode(f"{perform_at}:{task_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    """Undo :func:`encode_cursor`.

    Raises:
        TaskValidationError: the cursor was not made by this service.
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        perform_at, task_id = raw.split(":", 1)
        return int(perform_at), task_id
    except (ValueError, UnicodeDecodeError) as exc:
        raise TaskValidationError(
            "cursor is not valid", details=[{"field": "cursor", "message": "not a cursor from this service"}]
        ) from exc


def to_task(row: TaskRow) -> Task:
    """The public view of a row, defaults filled in."""
    leased = row.lease_owner is not None
    return Task.model_validate(
        {
            "id": row.id,
            "request": {
                "url": row.url,
                "method": row.method,
                "headers": row.headers,
                "params": row.params,
                "body": row.body,
                "timeout": row.timeout,
            },
            "perform_at": row.perform_at,
            "retries": row.retries,
            "retry_policy": row.retry_policy,
            "depends_on": row.depends_on,
            "status": row.status,
            "attempts": row.attempts,
            "last_response": row.last_response,
            "last_error": row.last_error,
            "next_attempt_at": None if leased or row.status not in _ACTIVE else row.due_at,
            "flow_run_id": row.flow_run_id,
            "created_at": row.created_at,
            "updated_at": row.updated_at,
            "completed_at": row.completed_at,
        }
    )


def to_attempt(row: AttemptRow) -> Attempt:
    """The public view of an attempt row."""
    return Attempt(
        number=row.number,
        started_at=row.started_at,
        finished_at=row.finished_at,
        status=row.status,
        error=row.error,
        duration_ms=row.duration_ms,
    )


@dataclass(frozen=True, slots=True)
class Finish:
    """One attempt to record: see :meth:`Store.finish_attempt`."""

    task_id: str
    owner: str
    attempt: AttemptRow
    values: dict[str, Any]
    expired_before: int | None = None
    events: tuple[EventRow, ...] = ()


def _add_new(session: AsyncSession, rows: Iterable[AttemptRow | EventRow]) -> None:
    """Add rows whose ids the database assigns. An id left from an earlier run of the same transaction (aborted
    for a conflict, see :meth:`Store.transact`) is dropped, so that the row takes a new one now, in order with the
    rows committed meanwhile (event ids are the live stream's resume positions)."""
    for row in rows:
        row.id = None
        session.add(row)


async def _finish(session: AsyncSession, finish: Finish) -> TaskRow | None:
    conditions: builtins.list[ColumnElement[bool]] = [
        TaskRow.id == finish.task_id,
        TaskRow.lease_owner == finish.owner,
        TaskRow.attempts == finish.attempt.number,
    ]
    if finish.expired_before is not None:
        conditions.append(_T.lease_expires_at < finish.expired_before)
    result = await session.execute(
        update(TaskRow)
        .where(*conditions)
        .values(**finish.values, lease_owner=None, lease_expires_at=None, version=_T.version + 1)
        .returning(TaskRow)
        .execution_options(synchronize_session=False)
    )
    row = result.scalars().one_or_none()
    if row is not None:
        _add_new(session, [finish.attempt, *finish.events])
        now = int(finish.values.get("updated_at", now_ms()))
        if row.status == TaskStatus.COMPLETED.value:
            await _release_dependents(session, row.id, now)
        elif row.status == TaskStatus.FAILED.value:
            await _cancel_dependents(session, {row.id: "failed"}, now)
    return row


class Store:
    """Async access to the task tables.

    Args:
        url: a SQLAlchemy URL; ``sqlite://`` and ``postgresql://`` are mapped to their async drivers.
        echo: log every statement (debugging).
    """

    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = normalize_database_url(url)
        self.is_sqlite = self.url.startswith("sqlite")
        if self.is_sqlite:
            database = make_url(self.url).database
            if database and database != ":memory:":
                Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            self.engine: AsyncEngine = create_async_engine(self.url, echo=echo, connect_args={"timeout": 60})
            _configure_sqlite(self.engine)
        else:
            self.engine = create_async_engine(
                self.url, echo=echo, pool_size=10, max_overflow=20, pool_pre_ping=True, connect_args=_PG_CONNECT
            )
        # Lease renewals get a connection of their own, so they never queue behind a burst of attempt writes: a
        # late renewal would let another worker take over an attempt that is still running.
        self._lease_engine = create_async_engine(
            self.url,
            echo=echo,
            pool_size=1,
            max_overflow=0,
            connect_args={"timeout": 60} if self.is_sqlite else _PG_CONNECT,
        )
        if self.is_sqlite:
            _configure_sqlite(self._lease_engine)
        self._lease_write = async_sessionmaker(
            self._lease_engine.execution_options(hexlabs_write=True), class_=AsyncSession, expire_on_commit=False
        )
        self._read = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)
        self._write = async_sessionmaker(
            self.engine.execution_options(hexlabs_write=True), class_=AsyncSession, expire_on_commit=False
        )

    # -- lifecycle -------------------------------------------------------------------------------------------

    async def migrate(self) -> None:
        """Create or upgrade the schema to the newest migration (Alembic ``upgrade head``)."""
        from hexlabs_tasks._migrate import upgrade

        # Alembic's command API is synchronous and runs its own event loop; keep it off this one.
        await asyncio.to_thread(upgrade, self.url)

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()
        await self._lease_engine.dispose()

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A session for reads."""
        async with _translated(), self._read() as session:
            yield session

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        """A session whose transaction takes the write lock at once and commits when the block ends."""
        async with _translated(), self._write() as session, session.begin():
            yield session

    async def transact(
        self,
        work: Callable[[AsyncSession], Awaitable[_R]],
        *,
        sessions: Callable[[], AbstractAsyncContextManager[AsyncSession]] | None = None,
    ) -> _R:
        """Run ``work`` in a write transaction (as :meth:`write`), again if PostgreSQL aborts it for a conflict.

        A transaction aborted for a deadlock or a serialization failure was rolled back whole, so ``work`` starts
        over in a new session after a short random pause (which keeps the two from meeting again), up to
        ``CONFLICT_ATTEMPTS`` times in all. Any other error passes through at once.
        """
        make = sessions or self._write
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                async with _translated(), make() as session, session.begin():
                    return await work(session)
            except DBAPIError as exc:
                if attempt == CONFLICT_ATTEMPTS or not is_conflict(exc):
                    raise
            await asyncio.sleep(random.uniform(0.005, 0.02) * attempt)
        raise AssertionError("unreachable")  # the last attempt returned or raised

    # -- tasks -----------------------------------------------------------------------------------------------

    async def get(self, task_id: str) -> TaskRow | None:
        """The row of one task, or None."""
        async with self.read() as session:
            return await session.get(TaskRow, task_id)

    async def get_many(self, task_ids: Iterable[str]) -> dict[str, TaskRow]:
        """The rows of the given ids that exist, by id."""
        ids = list(task_ids)
        if not ids:
            return {}
        async with self.read() as session:
            query = select(TaskRow).where(_T.id.in_(ids))
            return {row.id: row for row in (await session.execute(query)).scalars()}

    async def insert(
        self,
        row: TaskRow,
        *,
        idempotency: IdempotencyRow | None = None,
        dependencies: Sequence[str] = (),
        events: Sequence[EventRow] = (),
    ) -> None:
        """Store a new task (with its idempotency key, dependency edges and events) in one transaction."""

        async def work(session: AsyncSession) -> None:
            if idempotency is not None:
                await session.execute(
                    delete(IdempotencyRow).where(
                        _I.key == idempotency.key,
                        _I.created_at < idempotency.created_at - 86_400_000,
                    )
                )
                session.add(idempotency)
            session.add(row)
            for dep in dependencies:
                session.add(DependencyRow(task_id=row.id, depends_on_id=dep))
            _add_new(session, events)  # last: an event id is taken as late as possible before the commit

        await self.transact(work)

    async def insert_chain(
        self, rows: Sequence[TaskRow], dependencies: Mapping[str, Sequence[str]], events: Sequence[EventRow] = ()
    ) -> None:
        """Store several new tasks and their dependency edges in one transaction (all or nothing)."""

        async def work(session: AsyncSession) -> None:
            session.add_all(list(rows))
            for task_id, deps in dependencies.items():
                session.add_all([DependencyRow(task_id=task_id, depends_on_id=dep) for dep in deps])
            _add_new(session, events)

        await self.transact(work)

    async def dependencies_of(self, task_ids: Iterable[str]) -> dict[str, builtins.list[str]]:
        """The direct dependencies of each given task (tasks without any are left out)."""
        ids = list(task_ids)
        if not ids:
            return {}
        async with self.read() as session:
            rows = (await session.execute(select(_D.task_id, _D.depends_on_id).where(_D.task_id.in_(ids)))).all()
        found: dict[str, builtins.list[str]] = {}
        for task_id, dep in rows:
            found.setdefault(task_id, []).append(dep)
        return found

    async def recheck_waiting(self, task_ids: Iterable[str] | None, now: int) -> builtins.list[TaskRow]:
        """Release or cancel waiting tasks from their dependencies' committed state; returns the cancelled rows.

        A pending task with dependencies and no due time is released (due at the later of its performAt and its
        last dependency's completion) once every dependency completed, and cancelled (with its own dependents)
        once one failed, was cancelled or is gone. Called after a dependent is stored (a dependency may have
        finished meanwhile) and periodically by workers (``task_ids`` None: every waiting task).
        """
        query = select(TaskRow).where(_T.status == TaskStatus.PENDING.value, _T.due_at.is_(None))
        if task_ids is not None:
            query = query.where(_T.id.in_(list(task_ids)))
        async with self.read() as session:  # most calls find nothing waiting: no write lock for them
            if (await session.execute(query.with_only_columns(_T.id).limit(1))).first() is None:
                return []

        async def work(session: AsyncSession) -> builtins.list[str]:
            cancelled: builtins.list[str] = []
            for waiting in (await session.execute(query.limit(1000))).scalars().all():
                deps = (
                    await session.execute(
                        select(_D.depends_on_id, _T.status, _T.completed_at)
                        .select_from(_DEPENDENCIES.outerjoin(_TASKS, _T.id == _D.depends_on_id))
                        .where(_D.task_id == waiting.id)
                    )
                ).all()
                ended = next(((dep, status) for dep, status, _ in deps if status not in _ACTIVE_OR_DONE), None)
                if ended is not None:
                    dep, status = ended
                    how = "was deleted" if status is None else ("failed" if status == "failed" else "was cancelled")
                    await session.execute(
                        update(TaskRow)
                        .where(_T.id == waiting.id, _T.status == TaskStatus.PENDING.value, _T.due_at.is_(None))
                        .values(
                            status=TaskStatus.CANCELLED.value,
                            completed_at=now,
                            updated_at=now,
                            last_error=f"dependency {dep} {how}",
                            prefect_owed="CANCELLED",
                            version=_T.version + 1,
                        )
                        .execution_options(synchronize_session=False)
                    )
                    session.add(
                        task_event(
                            waiting.id,
                            "cancelled",
                            TaskStatus.CANCELLED.value,
                            now,
                            {"error": f"dependency {dep} {how}"},
                        )
                    )
                    cancelled.append(waiting.id)
                    cancelled += await _cancel_dependents(session, {waiting.id: "was cancelled"}, now)
                elif all(status == TaskStatus.COMPLETED.value for _, status, _ in deps):
                    last = max((done or 0 for _, _, done in deps), default=0)
                    await session.execute(
                        update(TaskRow)
                        .where(_T.id == waiting.id, _T.status == TaskStatus.PENDING.value, _T.due_at.is_(None))
                        .values(due_at=max(waiting.perform_at, last), updated_at=now, version=_T.version + 1)
                        .execution_options(synchronize_session=False)
                    )
                    session.add(task_event(waiting.id, "released", TaskStatus.PENDING.value, now))
            return cancelled

        cancelled = await self.transact(work)
        return list((await self.get_many(cancelled)).values())

    async def idempotency(self, key: str, *, since: int) -> IdempotencyRow | None:
        """The idempotency record of ``key`` created at or after ``since``."""
        async with self.read() as session:
            found = await session.get(IdempotencyRow, key)
            return found if found is not None and found.created_at >= since else None

    async def compare_and_set(
        self,
        task_id: str,
        version: int,
        values: dict[str, Any],
        *,
        dependencies: Sequence[str] | None = None,
        events: Sequence[EventRow] = (),
    ) -> TaskRow | None:
        """Change a task if its ``version`` is still the one read; the new row, or None if it moved on."""

        async def work(session: AsyncSession) -> TaskRow | None:
            result = await session.execute(
                update(TaskRow)
                .where(TaskRow.id == task_id, TaskRow.version == version)
                .values(**values, version=_T.version + 1)
                .returning(TaskRow)
                .execution_options(synchronize_session=False)
            )
            row = result.scalars().one_or_none()
            if row is not None:
                _add_new(session, events)
            if row is not None and dependencies is not None:
                await session.execute(delete(DependencyRow).where(_D.task_id == task_id))
                for dep in dependencies:
                    session.add(DependencyRow(task_id=task_id, depends_on_id=dep))
            return row

        return await self.transact(work)

    async def delete(self, task_id: str, *, events: Sequence[EventRow] = ()) -> TaskRow | None:
        """Remove a task with its attempts, dependency edges and idempotency keys; the removed row or None."""

        async def work(session: AsyncSession) -> TaskRow | None:
            result = await session.execute(
                delete(TaskRow)
                .where(TaskRow.id == task_id)
                .returning(TaskRow)
                .execution_options(synchronize_session=False)
            )
            row: TaskRow | None = result.scalars().one_or_none()
            if row is None:
                return None
            await session.execute(delete(AttemptRow).where(_A.task_id == task_id))
            await session.execute(delete(DependencyRow).where(_D.task_id == task_id))
            await session.execute(delete(IdempotencyRow).where(_I.task_id == task_id))
            _add_new(session, events)
            await _cancel_dependents(session, {task_id: "was deleted"}, now_ms())
            return row

        return await self.transact(work)

    async def list(
        self, *, status: str | None, limit: int, after: tuple[int, str] | None
    ) -> tuple[builtins.list[TaskRow], tuple[int, str] | None]:
        """One page of tasks, oldest ``perform_at`` first, and the position after its last row (or None)."""
        query = select(TaskRow)
        if status is not None:
            query = query.where(TaskRow.status == status)
        if after is not None:
            perform_at, task_id = after
            query = query.where(
                or_(
                    _T.perform_at > perform_at,
                    and_(TaskRow.perform_at == perform_at, _T.id > task_id),
                )
            )
        query = query.order_by(_T.perform_at, _T.id).limit(limit + 1)
        async with self.read() as session:
            rows = list((await session.execute(query)).scalars())
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, ((rows[-1].perform_at, rows[-1].id) if more and rows else None)

    async def attempts(self, task_id: str) -> builtins.list[AttemptRow]:
        """Every attempt of a task, oldest first, earlier generations included."""
        async with self.read() as session:
            query = select(AttemptRow).where(_A.task_id == task_id).order_by(_A.id)
            return list((await session.execute(query)).scalars())

    async def count(self, status: str | None = None) -> int:
        """How many tasks there are (with a status, if given)."""
        query = select(func.count()).select_from(TaskRow)
        if status is not None:
            query = query.where(TaskRow.status == status)
        async with self.read() as session:
            return int((await session.execute(query)).scalar_one())

    # -- the worker's side -----------------------------------------------------------------------------------

    async def next_due_at(self) -> int | None:
        """The earliest ``due_at`` of a task no worker holds, or None."""
        # A held task has no due time (a claim clears it), so the due_at index alone answers: min() over it is its
        # first entry, whatever the planner knows of the table.
        query = select(func.min(_T.due_at)).where(_T.due_at.is_not(None))
        async with self.read() as session:
            value = (await session.execute(query)).scalar_one_or_none()
            return int(value) if value is not None else None

    async def claim_due(
        self, *, owner: str, now: int, lease_until: int, limit: int, task_id: str | None = None
    ) -> builtins.list[TaskRow]:
        """Atomically take up to ``limit`` due tasks (or just ``task_id``) for ``owner``; each turns running.

        The condition is re-checked on every row the ``UPDATE`` touches, so a task another worker took in the
        meantime is skipped: no two workers ever hold the same attempt.
        """
        # A due time is only ever set on an unheld active task: a claim, a final state and a cancellation each clear
        # it. So the candidates are simply the earliest due times, `due_at <= now ORDER BY due_at LIMIT n`, which
        # every planner serves from the due_at index by reading the due entries and stopping, however many tasks
        # wait in the future and whether or not the table has statistics (PostgreSQL without ANALYZE, or before
        # autovacuum catches up with a bulk insert, otherwise walks the whole table; SQLite, given a status test,
        # walks the status index over every pending task). The UPDATE re-checks due time and holder on each row it
        # takes, so a task another worker took in the meantime is skipped.
        #
        # On PostgreSQL the candidates are locked as they are found and rows another transaction holds are passed
        # over (FOR NO KEY UPDATE SKIP LOCKED, the queue idiom): a claim never waits on a row, so it can be in no
        # deadlock, and two workers' claims do not queue behind each other. A row passed over is either being
        # claimed by another worker or being changed (recorded, moved, settled) and is taken by a later claim.
        # SQLite has one writer at a time and no row locks; it ignores the clause.
        due = and_(_T.due_at <= now, _T.lease_owner.is_(None))
        candidates = select(_T.id).where(_T.due_at <= now)
        if task_id is not None:
            due = and_(due, TaskRow.id == task_id)
            candidates = candidates.where(TaskRow.id == task_id)
        candidates = candidates.order_by(_T.due_at).limit(limit)
        if self.is_sqlite:
            chosen = _T.id.in_(candidates.scalar_subquery())
        else:
            # A CTE runs once; a subquery with SKIP LOCKED can be run again by the plan and take more than `limit`.
            locked = candidates.with_for_update(skip_locked=True, key_share=True).cte("due").prefix_with("MATERIALIZED")
            chosen = _T.id.in_(select(locked.c.id))
        statement = (
            update(TaskRow)
            .where(chosen, due)
            .values(
                status=TaskStatus.RUNNING.value,
                lease_owner=owner,
                lease_expires_at=lease_until,
                attempt_started_at=now,
                attempts=_T.attempts + 1,
                due_at=None,
                version=_T.version + 1,
                updated_at=now,
            )
            .returning(TaskRow)
            .execution_options(synchronize_session=False)
        )

        async def work(session: AsyncSession) -> builtins.list[TaskRow]:
            rows = list((await session.execute(statement)).scalars().all())
            session.add_all(
                [task_event(r.id, "running", TaskStatus.RUNNING.value, now, {"attempt": r.attempts}) for r in rows]
            )
            return rows

        rows = await self.transact(work)
        rows.sort(key=lambda r: (r.perform_at, r.id))
        return rows

    async def renew_leases(self, *, owner: str, task_ids: Sequence[str], lease_until: int) -> set[str]:
        """Extend ``owner``'s hold on its running tasks; returns the ids it still holds (others were deleted)."""
        if not task_ids:
            return set()
        held = _T.id.in_(list(task_ids)), TaskRow.lease_owner == owner

        async def work(session: AsyncSession) -> set[str]:
            if not self.is_sqlite:  # lock the rows in id order, as recording and settling do: no lock cycle
                await session.execute(select(_T.id).where(*held).order_by(_T.id).with_for_update(key_share=True))
            result = await session.execute(
                update(TaskRow)
                .where(*held)
                .values(lease_expires_at=lease_until)
                .returning(_T.id)
                .execution_options(synchronize_session=False)
            )
            return {r[0] for r in result.all()}

        return await self.transact(work, sessions=self._lease_write)

    async def finish_attempt(
        self,
        *,
        task_id: str,
        owner: str,
        attempt: AttemptRow,
        values: dict[str, Any],
        expired_before: int | None = None,
        events: Sequence[EventRow] = (),
    ) -> TaskRow | None:
        """Record an attempt and release the task, if ``owner`` still holds that attempt; else None.

        With ``expired_before``, only if the hold expired before then (taking over a dead worker's attempt).
        """
        finish = Finish(task_id, owner, attempt, values, expired_before, tuple(events))
        (result,) = await self.finish_attempts([finish])
        if isinstance(result, Exception):
            raise result
        return result

    async def finish_attempts(self, finishes: Sequence[Finish]) -> builtins.list[TaskRow | Exception | None]:
        """:meth:`finish_attempt` for many attempts in one transaction (one commit instead of one per attempt).

        Per attempt: its row, None (not held), or the error that kept it from being recorded. If the shared
        transaction fails, each attempt is tried again in a transaction of its own, so one bad attempt cannot keep
        the others from being recorded. A database that cannot be reached raises ServiceUnavailable.
        """
        # Rows are changed in id order, as renewals and settling lock them, so these writes form no lock cycle.
        order = sorted(range(len(finishes)), key=lambda n: finishes[n].task_id)

        async def work(session: AsyncSession) -> builtins.list[TaskRow | None]:
            done: dict[int, TaskRow | None] = {n: await _finish(session, finishes[n]) for n in order}
            return [done[n] for n in range(len(finishes))]

        try:
            return [*await self.transact(work)]
        except SQLAlchemyError:
            if len(finishes) == 1:
                raise
        results: builtins.list[TaskRow | Exception | None] = []
        for finish in finishes:
            try:
                results.append(await self.transact(functools.partial(_finish, finish=finish)))
            except SQLAlchemyError as exc:
                results.append(exc)
        return results

    async def release(self, *, task_id: str, owner: str, attempts: int, due_at: int) -> bool:
        """Give a claimed attempt back unperformed (a worker shutting down): due again, attempt not counted."""

        async def work(session: AsyncSession) -> bool:
            result = await session.execute(
                update(TaskRow)
                .where(TaskRow.id == task_id, TaskRow.lease_owner == owner, TaskRow.attempts == attempts)
                .values(
                    lease_owner=None,
                    lease_expires_at=None,
                    attempt_started_at=None,
                    attempts=_T.attempts - 1,
                    # A first attempt given back leaves a task that never ran: pending again, not running.
                    status=case((_T.attempts == 1, TaskStatus.PENDING.value), else_=_T.status),
                    due_at=due_at,
                    version=_T.version + 1,
                )
                .execution_options(synchronize_session=False)
            )
            return bool(getattr(result, "rowcount", 0))

        return await self.transact(work)

    async def expired_leases(self, *, now: int, limit: int = 200) -> builtins.list[TaskRow]:
        """Running attempts whose worker stopped renewing its hold (it died)."""
        query = select(TaskRow).where(_T.lease_owner.is_not(None), _T.lease_expires_at < now).limit(limit)
        async with self.read() as session:
            return list((await session.execute(query)).scalars())

    async def owed_to_prefect(self, *, limit: int = 200) -> builtins.list[TaskRow]:
        """Tasks whose flow run has not yet been moved to the state the row says."""
        query = select(TaskRow).where(_T.prefect_owed.is_not(None)).limit(limit)
        async with self.read() as session:
            return list((await session.execute(query)).scalars())

    async def settle_prefect(self, owed: dict[str, str]) -> None:
        """Clear ``prefect_owed`` on rows that still owe the state that was just delivered."""
        if not owed:
            return

        async def work(session: AsyncSession) -> None:
            for task_id in sorted(owed):  # id order, as recording and renewals lock rows: no lock cycle
                await session.execute(
                    update(TaskRow)
                    .where(TaskRow.id == task_id, TaskRow.prefect_owed == owed[task_id])
                    .values(prefect_owed=None)
                    .execution_options(synchronize_session=False)
                )

        await self.transact(work)

    # -- the event log ---------------------------------------------------------------------------------------

    async def events_after(
        self,
        after_id: int,
        *,
        task_id: str | None = None,
        statuses: Sequence[str] | None = None,
        limit: int = 500,
    ) -> builtins.list[EventRow]:
        """Events with an id above ``after_id``, oldest first, optionally of one task and some statuses."""
        query = select(EventRow).where(_E.id > after_id)
        if task_id is not None:
            query = query.where(_E.task_id == task_id)
        if statuses:
            query = query.where(_E.status.in_(list(statuses)))
        query = query.order_by(_E.id).limit(limit)
        async with self.read() as session:
            return list((await session.execute(query)).scalars())

    async def event_bounds(self) -> tuple[int, int]:
        """(oldest kept event id, newest event id); (0, 0) when there are none."""
        async with self.read() as session:
            low, high = (await session.execute(select(func.min(_E.id), func.max(_E.id)))).one()
            return int(low or 0), int(high or 0)

    async def prune_events(self, *, keep: int) -> int:
        """Keep only the newest ``keep`` events; returns how many were removed."""
        _, newest = await self.event_bounds()
        if newest <= keep:
            return 0

        async def work(session: AsyncSession) -> int:
            result = await session.execute(delete(EventRow).where(_E.id <= newest - keep))
            return int(getattr(result, "rowcount", 0) or 0)

        return await self.transact(work)


async def _release_dependents(session: AsyncSession, task_id: str, now: int) -> None:
    """Make due the pending dependents of a task that just completed whose every dependency is now completed.

    It runs in the transaction that records the completion, so a worker that dies right after cannot leave a
    dependent waiting for ever. A released task runs at the later of its performAt and now.
    """
    waiting = (
        (
            await session.execute(
                select(TaskRow).where(
                    _T.id.in_(select(_D.task_id).where(_D.depends_on_id == task_id)),
                    _T.status == TaskStatus.PENDING.value,
                    _T.due_at.is_(None),
                )
            )
        )
        .scalars()
        .all()
    )
    for dependent in waiting:
        statuses = (
            (
                await session.execute(
                    select(_T.status)
                    .select_from(_DEPENDENCIES.outerjoin(_TASKS, _T.id == _D.depends_on_id))
                    .where(_D.task_id == dependent.id)
                )
            )
            .scalars()
            .all()
        )
        if all(status == TaskStatus.COMPLETED.value for status in statuses):
            await session.execute(
                update(TaskRow)
                .where(_T.id == dependent.id, _T.status == TaskStatus.PENDING.value, _T.due_at.is_(None))
                .values(due_at=max(dependent.perform_at, now), updated_at=now, version=_T.version + 1)
                .execution_options(synchronize_session=False)
            )
            session.add(task_event(dependent.id, "released", TaskStatus.PENDING.value, now, {"after": task_id}))


async def _cancel_dependents(session: AsyncSession, ended: dict[str, str], now: int) -> builtins.list[str]:
    """Cancel, transitively, the pending tasks that depend on tasks that failed, were cancelled or deleted.

    ``ended`` maps a task id to how it ended, in words ("failed", "was deleted"); each cancelled dependent's
    lastError names the dependency that held it back. Returns the ids cancelled.
    """
    cancelled: builtins.list[str] = []
    frontier = dict(ended)
    while frontier:
        edges = (
            await session.execute(select(_D.task_id, _D.depends_on_id).where(_D.depends_on_id.in_(list(frontier))))
        ).all()
        following: dict[str, str] = {}
        for dependent, dependency in edges:
            if dependent in following or dependent in cancelled:
                continue
            result = await session.execute(
                update(TaskRow)
                .where(_T.id == dependent, _T.status == TaskStatus.PENDING.value)
                .values(
                    status=TaskStatus.CANCELLED.value,
                    due_at=None,
                    completed_at=now,
                    updated_at=now,
                    last_error=f"dependency {dependency} {frontier[dependency]}",
                    prefect_owed="CANCELLED",
                    version=_T.version + 1,
                )
                .returning(_T.id)
                .execution_options(synchronize_session=False)
            )
            if result.first() is not None:
                cancelled.append(dependent)
                following[dependent] = "was cancelled"
                session.add(
                    task_event(
                        dependent,
                        "cancelled",
                        TaskStatus.CANCELLED.value,
                        now,
                        {"error": f"dependency {dependency} {frontier[dependency]}"},
                    )
                )
        frontier = following
    return cancelled


def _configure_sqlite(engine: AsyncEngine) -> None:
    """WAL, a busy timeout, and ``BEGIN IMMEDIATE`` for write sessions (the SQLAlchemy aiosqlite recipe)."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None  # let the "begin" hook below emit BEGIN itself
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=60000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        immediate = connection.get_execution_options().get("hexlabs_write", False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


@asynccontextmanager
async def _translated() -> AsyncIterator[None]:
    """Map a database that cannot be reached to ServiceUnavailable; other errors pass through."""
    try:
        yield
    except (OSError, ConnectionError) as exc:
        raise ServiceUnavailable(f"the task database cannot be reached: {exc}") from exc
    except SQLAlchemyError as exc:
        if getattr(exc, "connection_invalidated", False) or "unable to open" in str(exc):
            raise ServiceUnavailable(f"the task database cannot be reached: {exc}") from exc
        raise
