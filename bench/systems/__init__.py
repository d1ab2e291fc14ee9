"""One module per system under test, all with the interface of :class:`System`.

A system is started once per run (``start``), receives tasks one by one (``submit``: a path on the target and a
due time), and is stopped by PID (``stop``). The driver never asks a system whether a task is done: it counts
the requests that reached the target (the floor, which sends no request, reports its own completions).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.procs import PrefectServer, stop_all

if TYPE_CHECKING:
    from bench.speed import SpeedProbe

__all__ = ["SYSTEMS", "Ctx", "System", "TaskSpec", "make_system", "now_ms"]


def now_ms() -> float:
    return time.time() * 1000


@dataclass(frozen=True)
class TaskSpec:
    """One task: POST ``target + path`` at ``due_ms`` (Unix ms), with ``retries`` retries ``retry_delay`` s apart."""

    path: str
    due_ms: float
    retries: int = 3
    retry_delay: float = 0.5


@dataclass
class Ctx:
    """What systems share in one run: the work directory, the target, and the Prefect servers."""

    workdir: Path
    target_url: str
    quick: bool
    servers: dict[str, PrefectServer] = field(default_factory=dict)
    server_start_s: dict[str, float] = field(default_factory=dict)
    speed: SpeedProbe | None = None  # the machine's speed over time (bench/speed.py)

    def prefect(self, db: str, key: str | None = None, *, stock: bool = False) -> PrefectServer:
        """The run's Prefect server on ``db``, started on first use; another one under another ``key``.

        hexlabs-tasks and the floor share the server as hexlabs-tasks starts it (key ``db``); the stock Prefect
        baselines get a stock ``prefect server start`` (key ``db-stock``).
        """
        key = key or (f"{db}-stock" if stock else db)
        if key not in self.servers:
            server = PrefectServer(self.workdir / f"prefect-{key}", db, stock=stock)
            server.workdir.mkdir(parents=True, exist_ok=True)
            self.servers[key] = server
            self.server_start_s[key] = server.start()
        return self.servers[key]

    def drop_prefect(self, key: str) -> None:
        server = self.servers.pop(key, None)
        if server is not None:
            server.stop()

    def close(self) -> None:
        for server in self.servers.values():
            server.stop()
        self.servers.clear()
        stop_all()


class System:
    """The common interface. Subclasses set ``name``, ``label`` and implement the coroutines."""

    name = ""
    label = ""
    db: str | None = None
    # stock Prefect runners start a subprocess per run (~1 run/s): they get smaller workloads (see run.py)
    slow = False
    # workloads it takes part in
    workloads: tuple[str, ...] = ("burst", "steady", "scale", "retries")
    create_concurrency = 16
    notes = ""

    def __init__(self, ctx: Ctx, name: str | None = None) -> None:
        self.ctx = ctx
        if name:
            self.name = name  # a second instance of the same system (the scale workload's twin)
        if self.db == "sqlite":
            # Prefect on SQLite: concurrent writers meet "database is locked", answered by 503s that the client
            # retries after 2, 4, 8 s; 8 at a time (hexlabs' own Prefect call limit)
            self.create_concurrency = 8
        self.workdir = ctx.workdir / self.name
        self.workdir.mkdir(parents=True, exist_ok=True)

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    async def restart(self) -> None:
        await self.stop()
        await self.start()

    async def submit(self, task: TaskSpec) -> None:
        raise NotImplementedError

    async def duet(self) -> System | None:
        """An identical second stack for the scale workload to run side by side with this one (None: not
        supported; scale then compares this stack after with before)."""
        return None

    async def end_duet(self, twin: System) -> None:
        """Stop what :meth:`duet` started."""

    async def read_probe(self) -> float | None:
        """Milliseconds to read one task back through the system's API; None where there is no such API."""
        return None

    @staticmethod
    async def _prefect_read_probe(client: Any, flow_run_id: Any) -> float | None:
        """Milliseconds to read a flow run back from Prefect (None before there is one)."""
        if client is None or flow_run_id is None:
            return None
        started = time.perf_counter()
        await client.read_flow_run(flow_run_id)
        return (time.perf_counter() - started) * 1000

    def rss(self) -> dict[str, float | None]:
        """Resident memory in MiB of the parts: worker, api, prefect-server..."""
        return {}

    def cpu(self) -> dict[str, float | None]:
        """CPU seconds used so far by the parts (as :meth:`rss`), for per-phase differences."""
        return {}

    def own_arrivals(self, prefix: str) -> dict[str, list[float]] | None:
        """Completion times per path for systems that send no request (the floor); None: count at the target."""
        return None

    def versions(self) -> dict[str, str]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "db": self.db, "notes": self.notes}

    async def quiet(self) -> None:
        """Let background work settle between workloads."""
        await asyncio.sleep(0.5 if self.ctx.quick else 1.0)


def _registry() -> dict[str, type[System]]:
    from bench.systems.celery_system import CelerySystem
    from bench.systems.floor import FloorPg, FloorSqlite
    from bench.systems.hexlabs import HexlabsPg, HexlabsSqlite
    from bench.systems.stock import FlowServe, ProcessWorker

    classes: list[type[System]] = [
        HexlabsSqlite,
        HexlabsPg,
        FloorSqlite,
        FloorPg,
        FlowServe,
        ProcessWorker,
        CelerySystem,
    ]
    return {c.name: c for c in classes}


SYSTEMS = ("hexlabs-sqlite", "hexlabs-pg", "floor-sqlite", "floor-pg", "flow-serve", "process-worker", "celery")


def make_system(name: str, ctx: Ctx) -> System:
    return _registry()[name](ctx)
