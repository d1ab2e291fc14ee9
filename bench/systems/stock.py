"""Stock Prefect: the equivalent flow (bench/systems/stock_flow.py) served with ``flow.serve()``, or run by a
process work pool with ``prefect worker start --limit 5``. Runs are created with
``run_deployment(..., scheduled_time=..., timeout=0)``, as a user would; retries are Prefect task retries
(``retries=20, retry_delay_seconds=0.5``), a fixed delay like the other systems'.

Both start a Python subprocess per flow run, so they get smaller workloads (``slow``; see run.py)."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from bench.procs import REPO, Proc, rss_mb, wait_log
from bench.systems import System, TaskSpec

__all__ = ["FlowServe", "ProcessWorker"]


class _Stock(System):
    db = "sqlite"
    slow = True
    create_concurrency = 8
    deployment = ""

    def __init__(self, ctx) -> None:  # type: ignore[no-untyped-def]
        super().__init__(ctx)
        self.proc: Proc | None = None
        self.client: Any = None
        self.last_run: UUID | None = None

    def _env(self) -> dict[str, str]:
        server = self.ctx.prefect(self.db, stock=True)
        env = server.client_env(self.workdir / "prefect-client")
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        env["PREFECT_LOGGING_LEVEL"] = "WARNING"
        return env

    async def _client(self) -> None:
        from prefect.client.orchestration import PrefectClient

        self.client = PrefectClient(self.ctx.prefect(self.db, stock=True).api_url)
        await self.client.__aenter__()

    async def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop(timeout=20)
            self.proc = None
        if self.client is not None:
            await self.client.__aexit__(None, None, None)
            self.client = None

    async def submit(self, task: TaskSpec) -> None:
        from prefect.deployments import arun_deployment

        run = await arun_deployment(
            self.deployment,
            client=self.client,
            parameters={"url": self.ctx.target_url + task.path},
            scheduled_time=datetime.fromtimestamp(task.due_ms / 1000, tz=UTC),
            timeout=0,
            as_subflow=False,
        )
        self.last_run = run.id

    async def read_probe(self) -> float | None:
        return await self._prefect_read_probe(self.client, self.last_run)

    def rss(self) -> dict[str, float | None]:
        server = self.ctx.servers.get(f"{self.db}-stock")
        return {
            "worker": rss_mb(self.proc.pid) if self.proc else None,
            "prefect-server": server.rss() if server else None,
        }


class FlowServe(_Stock):
    name = "flow-serve"
    label = "Prefect flow.serve()"
    deployment = "bench-request/serve"
    notes = (
        "flow.serve() with Prefect's defaults (subprocess per run, limit 5, poll 10 s); Prefect server SQLite "
        "(stock `prefect server start`)"
    )

    async def start(self) -> None:
        env = self._env()
        self.proc = Proc(
            self.name,
            [sys.executable, "-m", "bench.systems.stock_flow", "serve", "serve"],
            env=env,
            cwd=REPO,
            log=self.workdir / "serve.log",
        )
        await asyncio.to_thread(wait_log, self.proc, "bench-request/serve", timeout=90)
        await self._client()


class ProcessWorker(_Stock):
    name = "process-worker"
    label = "Prefect process worker"
    deployment = "bench-request/pool"
    notes = (
        "process work pool, `prefect worker start --limit 5` (subprocess per run); Prefect server SQLite "
        "(stock `prefect server start`)"
    )

    async def start(self) -> None:
        env = self._env()
        await self._client()
        from prefect.client.schemas.actions import WorkPoolCreate

        from bench.systems.stock_flow import bench_request

        try:
            await self.client.create_work_pool(WorkPoolCreate(name="bench-process", type="process"))
        except Exception as exc:  # exists from an earlier start
            if "already exists" not in str(exc).lower() and "409" not in str(exc):
                raise
        flow_id = await self.client.create_flow_from_name(bench_request.name)
        await self.client.create_deployment(
            flow_id=flow_id,
            name="pool",
            entrypoint="bench.systems.stock_flow:bench_request",
            work_pool_name="bench-process",
            parameter_openapi_schema={"type": "object", "properties": {"url": {"type": "string"}}},
            job_variables={"working_dir": str(REPO)},
        )
        self.proc = Proc(
            self.name,
            [
                sys.executable,
                "-m",
                "prefect",
                "worker",
                "start",
                "--pool",
                "bench-process",
                "--limit",
                "5",
                "--type",
                "process",
            ],
            env=env,
            cwd=REPO,
            log=self.workdir / "worker.log",
        )
        await asyncio.to_thread(wait_log, self.proc, "started", timeout=90)
