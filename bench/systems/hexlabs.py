"""hexlabs-tasks as a user runs it: ``python -m hexlabs_tasks api`` and ``worker`` processes on the product's
defaults, a local Prefect server, the task store on SQLite (the embedded default) or PostgreSQL (store and
Prefect server both). Tasks are created through the API with the async SDK."""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TYPE_CHECKING

import httpx

from bench.procs import (
    PrefectServer,
    Proc,
    cpu_s,
    create_pg_database,
    drop_pg_database,
    free_port,
    postgres_cpu_s,
    rss_mb,
    wait_http,
    wait_log,
)
from bench.systems import System, TaskSpec

if TYPE_CHECKING:
    from hexlabs_tasks import AsyncTasks

__all__ = ["HexlabsPg", "HexlabsSqlite"]


class _Hexlabs(System):
    db = "sqlite"

    def __init__(self, ctx, name: str | None = None) -> None:  # type: ignore[no-untyped-def]
        super().__init__(ctx, name)
        self.server_key: str | None = None  # which of the run's Prefect servers (None: the shared one for db)
        self.api: Proc | None = None
        self.worker: Proc | None = None
        self.sdk: AsyncTasks | None = None
        self.store_url: str | None = None
        self.generation = 0
        self.last_id: str | None = None

    async def start(self) -> None:
        from hexlabs_tasks import AsyncTasks

        await asyncio.to_thread(self._launch)  # blocking waits: in a thread, so that two stacks start at once
        self.sdk = AsyncTasks(base_url=self.url, timeout=120)

    def _launch(self) -> None:
        server = self.ctx.prefect(self.db, self.server_key)
        self.generation += 1
        home = self.workdir / f"gen{self.generation}"
        home.mkdir(parents=True, exist_ok=True)
        if self.db == "pg":
            self.store_url = create_pg_database("store")
        else:
            self.store_url = f"sqlite:///{home / 'tasks.db'}"
        self.port = free_port()
        env = {
            **server.client_env(home / "prefect-client"),
            "HEXLABS_TASKS_DATABASE_URL": self.store_url,
            "HEXLABS_TASKS_HOME": str(home),
            "HEXLABS_TASKS_PORT": str(self.port),
        }
        env.pop("HEXLABS_TASKS_TOKEN", None)
        argv = [sys.executable, "-m", "hexlabs_tasks"]
        self.url = f"http://127.0.0.1:{self.port}"
        # cwd outside the checkout: `python -m` puts cwd first on sys.path
        if self.db == "sqlite":
            # The embedded default: `serve`, API and worker in one process sharing one Prefect client, on the
            # run's SQLite Prefect server (PREFECT_API_URL) with the one-call-at-a-time that serve picks for the
            # SQLite server it starts itself.
            env["HEXLABS_TASKS_PREFECT_CONCURRENCY"] = "1"
            self.api = Proc(f"{self.name}-serve", [*argv, "serve"], env=env, cwd=home, log=home / "serve.log")
            wait_http(f"{self.url}/healthz", timeout=90, proc=self.api, what="hexlabs-tasks serve")
            wait_log(self.api, "Press Ctrl-C to stop.", timeout=90)
            self.worker = self.api
        else:
            self.api = Proc(f"{self.name}-api", [*argv, "api"], env=env, cwd=home, log=home / "api.log")
            wait_http(f"{self.url}/healthz", timeout=90, proc=self.api, what="the hexlabs API")
            self.worker = Proc(f"{self.name}-worker", [*argv, "worker"], env=env, cwd=home, log=home / "worker.log")
            wait_log(self.worker, "Press Ctrl-C to stop.", timeout=90)

    async def stop(self) -> None:
        if self.sdk is not None:
            await self.sdk.aclose()
            self.sdk = None
        for proc in dict.fromkeys(p for p in (self.worker, self.api) if p is not None):
            await asyncio.to_thread(proc.stop, 20)  # in a thread: two stacks stop at once
        self.worker = self.api = None
        if self.db == "pg" and self.store_url:
            drop_pg_database(self.store_url)
            self.store_url = None

    async def submit(self, task: TaskSpec) -> None:
        assert self.sdk is not None
        body = {
            "request": {"url": self.ctx.target_url + task.path, "method": "post", "body": {"p": task.path}},
            "performAt": int(task.due_ms),
            "retries": task.retries,
            "retryPolicy": {"backoff": "fixed", "initialDelay": task.retry_delay, "jitter": 0},
        }
        created = await self.sdk.create(body)
        self.last_id = created.id

    async def read_probe(self) -> float | None:
        if self.sdk is None or self.last_id is None:
            return None
        started = time.perf_counter()
        await self.sdk.read(self.last_id)
        return (time.perf_counter() - started) * 1000

    def _server(self) -> PrefectServer | None:
        """This stack's Prefect server, while it runs."""
        return self.ctx.servers.get(self.server_key or self.db)

    def rss(self) -> dict[str, float | None]:
        server = self._server()
        return {
            "worker": rss_mb(self.worker.pid) if self.worker else None,
            "api": rss_mb(self.api.pid) if self.api else None,
            "prefect-server": server.rss() if server else None,
        }

    def cpu(self) -> dict[str, float | None]:
        server = self._server()
        parts = {
            "worker": cpu_s(self.worker.pid) if self.worker else None,
            "api": cpu_s(self.api.pid) if self.api and self.api is not self.worker else None,
            "prefect-server": cpu_s(server.proc.pid) if server and server.proc else None,
        }
        if self.db == "pg":
            parts["postgres"] = postgres_cpu_s()
        return parts

    def profile_targets(self) -> dict[str, int]:
        server = self._server()
        out = {"worker": self.worker.pid if self.worker else 0, "api": self.api.pid if self.api else 0}
        if self.worker is self.api:
            out = {"serve": out["worker"]}
        if server is not None and server.proc is not None:
            out["prefect-server"] = server.proc.pid
        return {k: v for k, v in out.items() if v}

    def prefect_completed(self) -> int | None:
        """Flow runs Completed in Prefect (to see how far the Prefect mirror lags the requests)."""
        server = self._server()
        if server is None:
            return None
        try:
            response = httpx.post(
                f"{server.api_url}/flow_runs/count",
                json={"flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}, "tags": {"all_": ["hexlabs-tasks"]}}},
                timeout=30,
            )
            return int(response.json())
        except (httpx.HTTPError, ValueError):
            return None

    async def duet(self) -> _Hexlabs:
        """For the scale workload: this stack restarted on a fresh Prefect server of its own, and an identical twin
        started the same way on another, so that the two differ only in what the workload gives each."""
        twin = type(self)(self.ctx, f"{self.name}-twin")
        twin.server_key = f"{self.db}-scale-twin"
        keys = [f"{self.db}-scale", twin.server_key]
        servers = asyncio.gather(*(asyncio.to_thread(self.ctx.prefect, self.db, key) for key in keys))
        await self.stop()
        await servers
        self.server_key = keys[0]
        await asyncio.gather(self.start(), twin.start())
        return twin

    async def end_duet(self, twin: System) -> None:
        """Stop both stacks and their Prefect servers (the scale workload is the last one)."""
        await asyncio.gather(twin.stop(), self.stop())
        keys = [key for key in (self.server_key, getattr(twin, "server_key", None)) if key]
        await asyncio.gather(*(asyncio.to_thread(self.ctx.drop_prefect, key) for key in keys))
        self.server_key = None

    def versions(self) -> dict[str, str]:
        import hexlabs_tasks

        return {"hexlabs-tasks": hexlabs_tasks.__version__}


class HexlabsSqlite(_Hexlabs):
    name = "hexlabs-sqlite"
    label = "hexlabs-tasks (SQLite)"
    db = "sqlite"
    notes = (
        "`hexlabs-tasks serve` (API + worker in one process; defaults, 1 Prefect call at a time as serve sets for "
        "SQLite); store and Prefect server on SQLite, the Prefect server as serve starts it "
        "(`python -m hexlabs_tasks.prefect_server`); worker and api RSS are the same process"
    )


class HexlabsPg(_Hexlabs):
    name = "hexlabs-pg"
    label = "hexlabs-tasks (PostgreSQL)"
    db = "pg"
    notes = (
        "`hexlabs-tasks api` + 1 `worker` process (defaults); store and Prefect server "
        "(`python -m hexlabs_tasks.prefect_server`, as docs/postgresql.md runs it) on PostgreSQL 127.0.0.1:5432"
    )
