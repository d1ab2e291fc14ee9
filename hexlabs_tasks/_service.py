"""The service layer: every operation on tasks, whoever calls it (REST, the seed endpoint, tests).

Each call either completes or changes nothing: Prefect is asked first where a flow run must be created or moved,
so a Prefect failure leaves the store untouched, and a store failure undoes what Prefect was asked.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import json
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sqlalchemy.exc import IntegrityError

from hexlabs_tasks._exceptions import ServiceUnavailable, TaskConflict, TaskNotFound, TaskValidationError
from hexlabs_tasks._models import (
    FINAL_STATUSES,
    Attempt,
    Task,
    TaskCreate,
    TaskPage,
    TaskStatus,
    TaskUpdate,
)
from hexlabs_tasks._prefect import CANCELLED, SCHEDULED, PrefectBridge, chain_tags
from hexlabs_tasks._store import Store, decode_cursor, encode_cursor, now_ms, task_event, to_attempt, to_task
from hexlabs_tasks._tables import IdempotencyRow, TaskRow
from hexlabs_tasks._validation import validate

__all__ = ["TaskService"]

logger = logging.getLogger("hexlabs_tasks.service")
IDEMPOTENCY_WINDOW_MS = 24 * 3600 * 1000


def _body_hash(create: TaskCreate) -> str:
    canonical = json.dumps(create.to_wire(), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _request_columns(create: TaskCreate | TaskUpdate) -> dict[str, Any]:
    assert create.request is not None
    request = create.request
    return {
        "url": request.url,
        "method": request.method.value,
        "headers": request.headers,
        "params": request.params,
        "body": request.body,
        "timeout": request.timeout,
    }


class TaskService:
    """Create, read, update, delete and list tasks.

    Args:
        store: the task store.
        bridge: the Prefect bridge.
        clock: Unix ms now.
        on_change: called after a change that may make a task due sooner (wakes an in-process worker).
    """

    def __init__(
        self,
        store: Store,
        bridge: PrefectBridge,
        *,
        clock: Callable[[], int] = now_ms,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.bridge = bridge
        self.clock = clock
        self.on_change = on_change or (lambda: None)

    async def create(
        self, data: TaskCreate | Mapping[str, Any], *, idempotency_key: str | None = None
    ) -> tuple[Task, bool]:
        """Store a task and schedule its flow run.

        Returns:
            The task, and whether it was created now (False: the idempotency key's earlier task).

        Raises:
            TaskValidationError: the body breaks a rule, or ``dependsOn`` names unknown tasks.
            TaskConflict: the idempotency key came before with another body.
            ServiceUnavailable: Prefect or the database cannot be reached; nothing was stored.
        """
        create = validate(TaskCreate, data)
        request_hash = _body_hash(create)
        now = self.clock()
        if idempotency_key is not None:
            replay = await self._replay(idempotency_key, request_hash, now)
            if replay is not None:
                return replay, False

        deps = await self._dependencies(create.depends_on, "dependsOn")
        task_id = uuid.uuid4().hex
        chain_id, step = await self._chain_position(deps)
        row = self._new_row(task_id, create, now, chain_id=chain_id, step=step)
        row.flow_run_id = await self.bridge.create_run(
            task_id, generation=0, at_ms=create.perform_at, tags=chain_tags(chain_id, step)
        )
        idempotency = (
            IdempotencyRow(key=idempotency_key, request_hash=request_hash, task_id=task_id, created_at=now)
            if idempotency_key is not None
            else None
        )
        try:
            await self.store.insert(
                row,
                idempotency=idempotency,
                dependencies=create.depends_on,
                events=[task_event(task_id, "created", row.status, now)],
            )
        except BaseException as exc:
            await self._undo_run(row.flow_run_id)
            if isinstance(exc, IntegrityError) and idempotency_key is not None:
                # Another call with the same key won the race: answer as its replay.
                replay = await self._replay(idempotency_key, request_hash, now)
                if replay is not None:
                    return replay, False
            raise
        if create.depends_on:
            await self._settle_waiting([task_id])
            row = await self._row(task_id)
        self.on_change()
        return to_task(row), True

    async def chain(self, data: Sequence[TaskCreate | Mapping[str, Any]] | Any) -> builtins.list[Task]:
        """Create tasks that run one after another: each depends on the one before (and its own ``dependsOn``).

        All are stored, or none.

        Raises:
            TaskValidationError: a task breaks a rule (``details`` name ``tasks.<n>.<field>``), the list is empty,
                or a ``dependsOn`` names unknown tasks.
            ServiceUnavailable: Prefect or the database cannot be reached; nothing was stored.
        """
        if not isinstance(data, Sequence) or isinstance(data, str | bytes) or not data:
            raise TaskValidationError(
                "tasks must be a non-empty list", details=[{"field": "tasks", "message": "a non-empty list"}]
            )
        if len(data) > 1000:
            raise TaskValidationError(
                "a chain has at most 1000 tasks", details=[{"field": "tasks", "message": "too long"}]
            )
        creates = [validate(TaskCreate, item, prefix=f"tasks.{n}") for n, item in enumerate(data)]
        ids = [uuid.uuid4().hex for _ in creates]
        external = await self._dependencies(
            list(dict.fromkeys(dep for c in creates for dep in c.depends_on)), "tasks.dependsOn"
        )
        first_chain, first_step = await self._chain_position({d: external[d] for d in creates[0].depends_on})
        chain_id = first_chain or ids[0]
        now = self.clock()
        rows: builtins.list[TaskRow] = []
        edges: dict[str, builtins.list[str]] = {}
        for n, (task_id, create) in enumerate(zip(ids, creates, strict=True)):
            deps = list(dict.fromkeys([*create.depends_on, *([ids[n - 1]] if n else [])]))
            create.depends_on = deps
            edges[task_id] = deps
            rows.append(self._new_row(task_id, create, now, chain_id=chain_id, step=first_step + n))
        created_runs: builtins.list[str] = []
        try:
            # all the chain's runs go to Prefect together (one bulk create)
            runs = await asyncio.gather(
                *(
                    self.bridge.create_run(
                        row.id, generation=0, at_ms=row.perform_at, tags=chain_tags(chain_id, row.chain_step)
                    )
                    for row in rows
                ),
                return_exceptions=True,
            )
            created_runs = [run for run in runs if isinstance(run, str)]
            failed = next((run for run in runs if isinstance(run, BaseException)), None)
            if failed is not None:
                raise failed
            for row, run in zip(rows, created_runs, strict=True):
                row.flow_run_id = run
            await self.store.insert_chain(
                rows, edges, events=[task_event(r.id, "created", r.status, now) for r in rows]
            )
        except BaseException:
            for flow_run_id in created_runs:
                await self._undo_run(flow_run_id)
            raise
        await self._settle_waiting([r.id for r in rows if r.depends_on])
        self.on_change()
        stored = await self.store.get_many(ids)
        return [to_task(stored[task_id]) for task_id in ids]

    def _new_row(self, task_id: str, create: TaskCreate, now: int, *, chain_id: str | None, step: int) -> TaskRow:
        # A task with dependencies waits (no due time) until they complete; see Store.recheck_waiting.
        return TaskRow(
            id=task_id,
            **_request_columns(create),
            perform_at=create.perform_at,
            retries=create.retries,
            retry_policy=create.retry_policy.to_wire(),
            depends_on=create.depends_on,
            status=TaskStatus.PENDING.value,
            due_at=None if create.depends_on else create.perform_at,
            chain_id=chain_id,
            chain_step=step,
            created_at=now,
            updated_at=now,
        )

    async def _dependencies(self, depends_on: Sequence[str], field: str) -> dict[str, TaskRow]:
        """The rows of ``depends_on``; a 422 naming the unknown ids if any is missing."""
        found = await self.store.get_many(depends_on)
        missing = [dep for dep in depends_on if dep not in found]
        if missing:
            raise TaskValidationError(
                f"{field} names unknown tasks: {', '.join(missing)}",
                details=[{"field": field, "message": f"unknown task ids: {', '.join(missing)}", "ids": missing}],
            )
        return found

    async def _chain_position(self, deps: Mapping[str, TaskRow]) -> tuple[str | None, int]:
        """The chain a task with these dependencies joins, and its step; the first dependency starts a chain."""
        if not deps:
            return None, 1
        first = next(iter(deps.values()))
        if first.chain_id is None:
            # The dependency becomes the first task of a chain: tag its run so the chain shows whole in Prefect.
            updated = await self.store.compare_and_set(first.id, first.version, {"chain_id": first.id, "chain_step": 1})
            if updated is not None and updated.flow_run_id:
                try:
                    await self.bridge.add_tags(updated.flow_run_id, chain_tags(first.id, 1))
                except ServiceUnavailable as exc:
                    logger.warning("could not tag flow run %s as a chain's first: %s", updated.flow_run_id, exc)
            chain_id = first.id
        else:
            chain_id = first.chain_id
        return chain_id, 1 + max((d.chain_step if d.chain_id else 1) for d in deps.values())

    async def _settle_waiting(self, task_ids: Sequence[str]) -> None:
        """Release or cancel freshly stored dependents from their dependencies' state (they may have finished)."""
        if await self.store.recheck_waiting(task_ids, self.clock()):
            await self._cancel_runs_of_cancelled_dependents()

    async def _check_cycle(self, task_id: str, depends_on: Sequence[str]) -> None:
        """A 422 naming the ids if ``task_id`` depending on ``depends_on`` would close a cycle."""
        came_from: dict[str, str] = {}  # a dependency -> the task that depends on it, on the way from task_id
        frontier: builtins.list[str] = []
        for dep in depends_on:
            if dep == task_id:
                self._cycle([task_id, task_id])
            if dep not in came_from:
                came_from[dep] = task_id
                frontier.append(dep)
        while frontier:
            edges = await self.store.dependencies_of(frontier)
            following: builtins.list[str] = []
            for node in frontier:
                for dep in edges.get(node, []):
                    if dep == task_id:
                        path = [node]
                        while path[-1] != task_id:
                            path.append(came_from[path[-1]])
                        self._cycle([*reversed(path), task_id])
                    if dep not in came_from:
                        came_from[dep] = node
                        following.append(dep)
            frontier = following

    @staticmethod
    def _cycle(cycle: builtins.list[str]) -> None:
        arrows = " -> ".join(cycle)
        raise TaskValidationError(
            f"dependsOn would make a cycle: {arrows}",
            details=[{"field": "dependsOn", "message": f"cycle: {arrows}", "ids": list(dict.fromkeys(cycle))}],
        )

    async def _replay(self, key: str, request_hash: str, now: int) -> Task | None:
        found = await self.store.idempotency(key, since=now - IDEMPOTENCY_WINDOW_MS)
        if found is None:
            return None
        if found.request_hash != request_hash:
            raise TaskConflict(
                "this Idempotency-Key was used with another body in the last 24 hours",
                details=[{"field": "Idempotency-Key", "message": "reused with a different body"}],
            )
        row = await self.store.get(found.task_id)
        return to_task(row) if row is not None else None

    async def _undo_run(self, flow_run_id: str) -> None:
        try:
            await self.bridge.delete_run(flow_run_id)
        except ServiceUnavailable as exc:
            logger.warning("could not remove flow run %s after a failed create: %s", flow_run_id, exc)

    async def read(self, task_id: str) -> Task:
        """The task with that id.

        Raises:
            TaskNotFound: there is none.
        """
        return to_task(await self._row(task_id))

    async def _row(self, task_id: str) -> TaskRow:
        row = await self.store.get(task_id)
        if row is None:
            raise TaskNotFound(f"no task with id {task_id!r}", details=[{"field": "id", "message": "not found"}])
        return row

    async def update(self, task_id: str, data: TaskUpdate | Mapping[str, Any]) -> Task:
        """Replace the given top-level fields of a pending task, or queue a finished one again.

        Raises:
            TaskNotFound: no task with that id.
            TaskValidationError: the body breaks a rule (a status other than pending, unknown ids or a cycle in
                ``dependsOn``).
            TaskConflict: the task is running, or finished and the body does not queue it again.
            ServiceUnavailable: Prefect or the database cannot be reached; nothing was changed.
        """
        if isinstance(data, Mapping) and "status" in data and data["status"] != TaskStatus.PENDING.value:
            raise TaskValidationError(
                'status is the system\'s to set; only {"status": "pending"} (to queue a task again) is accepted',
                details=[{"field": "status", "message": "only 'pending' may be sent", "type": "literal_error"}],
            )
        patch = validate(TaskUpdate, data)
        row = await self._row(task_id)
        requeue = patch.status == "pending" and row.status in FINAL_STATUSES
        if row.status == TaskStatus.RUNNING.value:
            raise TaskConflict(f"task {task_id} is running; it can be changed only while pending")
        if row.status in FINAL_STATUSES and not requeue:
            raise TaskConflict(f'task {task_id} is {row.status}; send {{"status": "pending"}} to queue it again')
        if patch.depends_on is not None:
            await self._dependencies(patch.depends_on, "dependsOn")
            await self._check_cycle(task_id, patch.depends_on)
        depends_on = patch.depends_on if patch.depends_on is not None else row.depends_on

        now = self.clock()
        values: dict[str, Any] = {"updated_at": now}
        if patch.request is not None:
            values.update(_request_columns(patch))
        if patch.retries is not None:
            values["retries"] = patch.retries
        if patch.retry_policy is not None:
            values["retry_policy"] = patch.retry_policy.to_wire()
        perform_at = patch.perform_at if patch.perform_at is not None else row.perform_at
        if patch.perform_at is not None:
            values["perform_at"] = perform_at
        if patch.depends_on is not None:
            values["depends_on"] = patch.depends_on
        # A task with dependencies waits (no due time) until they complete; see Store.recheck_waiting.
        due_at = None if depends_on else perform_at

        if requeue:
            generation = row.generation + 1
            flow_run_id = await self.bridge.create_run(
                task_id, generation=generation, at_ms=perform_at, tags=chain_tags(row.chain_id, row.chain_step)
            )
            values.update(
                status=TaskStatus.PENDING.value,
                generation=generation,
                attempts=0,
                last_response=None,
                last_error=None,
                completed_at=None,
                due_at=due_at,
                flow_run_id=flow_run_id,
                prefect_owed=None,
            )
            updated = await self.store.compare_and_set(
                task_id,
                row.version,
                values,
                dependencies=patch.depends_on,
                events=[task_event(task_id, "updated", TaskStatus.PENDING.value, now)],
            )
            if updated is None:
                await self._undo_run(flow_run_id)
        else:
            moved = patch.perform_at is not None and perform_at != row.perform_at
            if patch.perform_at is not None or patch.depends_on is not None:
                values["due_at"] = due_at
            # The store decides (a worker may have claimed the task meanwhile: then this is a conflict); Prefect
            # is told afterwards, and if it cannot be reached the move is owed and the worker delivers it later.
            updated = await self.store.compare_and_set(
                task_id,
                row.version,
                values,
                dependencies=patch.depends_on,
                events=[task_event(task_id, "updated", row.status, now)],
            )
            if updated is not None and moved and updated.flow_run_id:
                try:
                    await self.bridge.set_state(updated.flow_run_id, SCHEDULED, at_ms=perform_at)
                except ServiceUnavailable as exc:
                    logger.warning("flow run %s not moved yet (%s); the worker will retry", updated.flow_run_id, exc)
                    owed = await self.store.compare_and_set(task_id, updated.version, {"prefect_owed": SCHEDULED})
                    updated = owed or updated
        if updated is None:
            raise TaskConflict(
                f"task {task_id} changed while it was being updated (it may have started); read it again"
            )
        if depends_on:
            await self._settle_waiting([task_id])
            updated = await self._row(task_id)
        self.on_change()
        return to_task(updated)

    async def delete(self, task_id: str) -> None:
        """Remove a task; its flow run is cancelled in Prefect if it had not finished, and so are its dependents.

        Raises:
            TaskNotFound: no task with that id.
            ServiceUnavailable: Prefect or the database cannot be reached; nothing was removed.
        """
        row = await self._row(task_id)
        if row.flow_run_id and row.status not in FINAL_STATUSES:
            await self.bridge.set_state(row.flow_run_id, CANCELLED, message="the task was deleted")
        deleted = task_event(task_id, "deleted", None, self.clock())
        if await self.store.delete(task_id, events=[deleted]) is None:
            raise TaskNotFound(f"no task with id {task_id!r}", details=[{"field": "id", "message": "not found"}])
        await self._cancel_runs_of_cancelled_dependents()
        self.on_change()

    async def _cancel_runs_of_cancelled_dependents(self) -> None:
        """Tell Prefect about dependents the store just cancelled (else the worker's reconciler does, later)."""
        for row in await self.store.owed_to_prefect():
            if row.prefect_owed == CANCELLED and row.flow_run_id:
                try:
                    await self.bridge.set_state(row.flow_run_id, CANCELLED, message=row.last_error)
                except ServiceUnavailable as exc:
                    logger.warning("flow run %s not cancelled yet (%s); the worker will retry", row.flow_run_id, exc)
                    return
                await self.store.settle_prefect({row.id: CANCELLED})

    async def list(self, *, status: str | None = None, limit: int = 100, cursor: str | None = None) -> TaskPage:
        """A page of tasks, oldest ``performAt`` first.

        Raises:
            TaskValidationError: a bad status, limit or cursor.
        """
        details = []
        if status is not None and status not in {s.value for s in TaskStatus}:
            details.append({"field": "status", "message": f"must be one of {', '.join(s.value for s in TaskStatus)}"})
        if not 1 <= limit <= 1000:
            details.append({"field": "limit", "message": "must be between 1 and 1000"})
        if details:
            raise TaskValidationError("invalid list query", details=details)
        after = decode_cursor(cursor) if cursor else None
        rows, position = await self.store.list(status=status, limit=limit, after=after)
        return TaskPage(data=[to_task(r) for r in rows], next_cursor=encode_cursor(*position) if position else None)

    async def attempts(self, task_id: str) -> builtins.list[Attempt]:
        """Every attempt of a task, oldest first.

        Raises:
            TaskNotFound: no task with that id.
        """
        await self._row(task_id)
        return [to_attempt(r) for r in await self.store.attempts(task_id)]
