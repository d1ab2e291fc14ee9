"""The Prefect floor: per task, the fewest Prefect API writes that record it as a flow run, and nothing else.

Create a scheduled flow run of a deployment (at submit time, as hexlabs' API does), then at the due time set it
Running and then Completed (forced, as hexlabs' worker does). No worker process, no polling, no HTTP request: the
driver knows every due time and makes the calls itself, through one ``PrefectClient`` with at most 8 calls in
flight on PostgreSQL (hexlabs' default ``HEXLABS_TASKS_PREFECT_CONCURRENCY``) and 1 on SQLite (where concurrent
writers lock, and what ``serve`` uses there). "Start" is when Running was acknowledged, "done" when Completed was.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from bench.systems import System, TaskSpec, now_ms

__all__ = ["FloorPg", "FloorSqlite"]


class _Floor(System):
    workloads = ("burst", "steady", "scale")
    concurrency = 8

    def __init__(self, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(ctx)
        self.client: Any = None
        self.started_at: dict[str, list[float]] = {}
        self.done_at: dict[str, list[float]] = {}
        self.jobs: set[asyncio.Task[None]] = set()
        self.last_run = None

    async def start(self) -> None:
        import os

        server = self.ctx.prefect(self.db)  # type: ignore[arg-type]
        os.environ.setdefault("PREFECT_HOME", str(self.workdir / "prefect-client"))
        from prefect.client.orchestration import PrefectClient

        self.client = PrefectClient(server.api_url)
        await self.client.__aenter__()
        self.limit = asyncio.Semaphore(self.concurrency)
        flow_id = await self.client.create_flow_from_name("bench-floor")
        self.deployment_id = await self.client.create_deployment(flow_id=flow_id, name="floor", entrypoint="x.py:f")

    async def stop(self) -> None:
        for job in list(self.jobs):
            job.cancel()
        if self.client is not None:
            await self.client.__aexit__(None, None, None)
            self.client = None

    async def submit(self, task: TaskSpec) -> None:
        from prefect.states import Scheduled

        when = datetime.fromtimestamp(task.due_ms / 1000, tz=UTC)
        async with self.limit:
            run = await self.client.create_flow_run_from_deployment(
                self.deployment_id,
                parameters={},
                state=Scheduled(scheduled_time=when),
                name=task.path.rsplit("/", 1)[-1],
            )
        self.last_run = run.id
        job = asyncio.create_task(self._perform(run.id, task))
        self.jobs.add(job)
        job.add_done_callback(self.jobs.discard)

    async def _perform(self, run_id: Any, task: TaskSpec) -> None:
        from prefect.states import Completed, Running

        delay = (task.due_ms - now_ms()) / 1000
        if delay > 0:
            await asyncio.sleep(delay)
        async with self.limit:
            await self.client.set_flow_run_state(run_id, Running(), force=True)
        self.started_at.setdefault(task.path, []).append(now_ms())
        async with self.limit:
            await self.client.set_flow_run_state(run_id, Completed(), force=True)
        self.done_at.setdefault(task.path, []).append(now_ms())

    def own_arrivals(self, prefix: str) -> dict[str, list[float]] | None:
        return {p: t for p, t in self.started_at.items() if p.startswith(prefix)}

    def own_done(self, prefix: str) -> dict[str, list[float]]:
        return {p: t for p, t in self.done_at.items() if p.startswith(prefix)}

    async def read_probe(self) -> float | None:
        return await self._prefect_read_probe(self.client, self.last_run)

    def rss(self) -> dict[str, float | None]:
        server = self.ctx.servers.get(self.db)  # type: ignore[arg-type]
        return {"prefect-server": server.rss() if server else None}


class FloorSqlite(_Floor):
    name = "floor-sqlite"
    label = "Prefect floor (SQLite)"
    db = "sqlite"
    concurrency = 1
    notes = "create + Running + Completed per task, 1 call in flight (SQLite locks with more), no worker, no request"


class FloorPg(_Floor):
    name = "floor-pg"
    label = "Prefect floor (PostgreSQL)"
    db = "pg"
    notes = "create + Running + Completed per task, 8 calls in flight, no worker, no request"
