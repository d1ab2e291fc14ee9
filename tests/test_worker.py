"""The worker in this process, on a real SQLite store and a real HTTP target, without Prefect.

The end-to-end tests run workers as processes beside a Prefect server; these look at one behaviour of the worker's
own loop that those cannot provoke on demand.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from sqlalchemy.exc import DBAPIError
from support import HttpTarget

from hexlabs_tasks._store import Store, now_ms
from hexlabs_tasks._tables import TaskRow
from hexlabs_tasks._worker import Worker


class _Deadlock(Exception):
    pgcode = "40P01"


class StoreFailingClaims(Store):
    """A store whose first ``failures`` claims fail as a database aborting the statement would."""

    def __init__(self, url: str, failures: int) -> None:
        super().__init__(url)
        self.failures = failures
        self.claims = 0

    async def claim_due(self, **kwargs: Any) -> list[TaskRow]:
        self.claims += 1
        if self.claims <= self.failures:
            raise DBAPIError("UPDATE hexlabs_tasks ...", None, _Deadlock("deadlock detected"))
        return await super().claim_due(**kwargs)


def due_task(task_id: str, url: str) -> TaskRow:
    now = now_ms()
    return TaskRow(
        id=task_id,
        url=url,
        method="post",
        headers={},
        params={},
        body={"n": 1},
        timeout=5,
        perform_at=now,
        retries=0,
        retry_policy={},
        depends_on=[],
        status="pending",
        due_at=now,
        created_at=now,
        updated_at=now,
    )


async def test_a_claim_the_database_aborts_ends_that_turn_not_the_worker(tmp_path: Path) -> None:
    store = StoreFailingClaims(f"sqlite:///{tmp_path / 'tasks.db'}", failures=2)
    await store.migrate()
    stop = asyncio.Event()
    with HttpTarget() as target:
        async with store.write() as session:
            session.add(due_task("t1", target.url_for("/hook")))
        worker = Worker(store=store, bridge=None, poll_interval=0.1)
        running = asyncio.create_task(worker.run(stop))
        try:
            [request] = await target.await_for(1, "/hook", timeout=15)
            stored = await _final(store, "t1")
        finally:
            stop.set()
            await asyncio.wait_for(running, timeout=15)
            await store.dispose()

    assert store.claims > 2  # it went on claiming after both failures
    assert request.json() == {"n": 1}
    assert (stored.status, stored.attempts) == ("completed", 1)


async def _final(store: Store, task_id: str, timeout: float = 10.0) -> TaskRow:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        row = await store.get(task_id)
        if row is not None and row.status in ("completed", "failed", "cancelled"):
            return row
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"task {task_id} did not end within {timeout} s: {row}")
        await asyncio.sleep(0.05)
