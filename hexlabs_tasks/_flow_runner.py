"""What the flow in ``flows/`` runs: one task, every attempt, in this process.

Kept here (not in the flow file) so the flow stays a few lines and this logic is typed and tested with the
package.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from hexlabs_tasks._executor import attempt_line, execute_attempt
from hexlabs_tasks._models import FINAL_STATUSES, TaskStatus
from hexlabs_tasks._performer import new_http_client
from hexlabs_tasks._settings import get_settings
from hexlabs_tasks._store import Store, now_ms

__all__ = ["FlowOutcome", "run_task_to_end"]


@dataclass(frozen=True, slots=True)
class FlowOutcome:
    """How the task ended, for the flow run's final state."""

    status: str
    message: str


async def run_task_to_end(
    task_id: str, *, log: Callable[[str], object] = print, store: Store | None = None
) -> FlowOutcome:
    """Claim the task whenever it is due, perform it, and repeat until it is final or someone else holds it."""
    settings = get_settings()
    own_store = store is None
    store = store or Store(settings.resolved_database_url())
    owner = f"prefect-flow:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    try:
        async with new_http_client(max_connections=4) as http:
            while True:
                row = await store.get(task_id)
                if row is None:
                    return FlowOutcome("cancelled", f"task {task_id} does not exist (deleted)")
                if row.status in FINAL_STATUSES:
                    return FlowOutcome(row.status, row.last_error or f"task {task_id} is {row.status}")
                if row.lease_owner is not None or row.due_at is None:
                    # Held by another worker, or waiting for dependencies: look again shortly.
                    await asyncio.sleep(1.0)
                    continue
                wait = (row.due_at - now_ms()) / 1000
                if wait > 0:
                    await asyncio.sleep(min(wait, 60.0))
                    continue
                now = now_ms()
                lease_ms = round((row.timeout + settings.lease_seconds) * 1000)
                claimed = await store.claim_due(
                    owner=owner, now=now, lease_until=now + lease_ms, limit=1, task_id=task_id
                )
                if not claimed:
                    continue
                outcome = await execute_attempt(store, claimed[0], http=http, owner=owner)
                if outcome.row is None:
                    return FlowOutcome("cancelled", f"task {task_id} was deleted during its attempt")
                log(attempt_line(outcome.row, outcome.number, outcome.result, outcome.decision))
                # This run reports its own states, so nothing is owed to Prefect by the row.
                await store.settle_prefect({task_id: outcome.row.prefect_owed or ""})
                if outcome.row.status != TaskStatus.RUNNING.value:
                    return FlowOutcome(outcome.row.status, outcome.row.last_error or "completed")
    finally:
        if own_store:
            await store.dispose()
