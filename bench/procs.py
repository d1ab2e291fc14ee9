"""Processes the benchmark starts: every one on a free 127.0.0.1 port, in its own session, stopped by its PID.

Every process started here is remembered in :data:`STARTED` so that ``run.py`` stops what is left even on an error
or Ctrl-C (:func:`stop_all`). Also: fresh PostgreSQL databases (asyncpg) and the resident memory of a process tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

__all__ = [
    "PG_ADMIN",
    "STARTED",
    "PrefectServer",
    "Proc",
    "create_pg_database",
    "drop_pg_database",
    "free_port",
    "pg_available",
    "rss_mb",
    "stop_all",
    "wait_http",
]

REPO = Path(__file__).resolve().parent.parent
_HAS_PSUTIL = importlib.util.find_spec("psutil") is not None
PG_ADMIN = os.environ.get("BENCH_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
STARTED: list[Proc] = []


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Proc:
    """A child process in its own session (so its children are stopped with it), output to a log file."""

    def __init__(self, name: str, argv: list[str], *, env: dict[str, str], cwd: Path, log: Path) -> None:
        self.name = name
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            self.popen = subprocess.Popen(
                argv,
                env=env,
                cwd=cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid = self.popen.pid
        STARTED.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self, timeout: float = 15.0) -> None:
        """SIGINT (Prefect workers ignore SIGTERM for long), then SIGTERM, then SIGKILL, to the process group."""
        if self in STARTED:
            STARTED.remove(self)
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if self.popen.poll() is not None:
                break
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(wait)
        # the group may outlive its leader (a runner's flow-run subprocesses)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)


def stop_all() -> None:
    for proc in list(reversed(STARTED)):
        proc.stop(timeout=5.0)


def wait_http(url: str, *, timeout: float, proc: Proc | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{what or url} did not answer within {timeout} s" + (f":\n{proc.tail()}" if proc else "")
            )
        time.sleep(0.2)


def wait_log(proc: Proc, text: str, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in proc.log.read_text(errors="replace"):
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{proc.name} did not print {text!r} within {timeout} s:\n{proc.tail()}")
        time.sleep(0.2)


def rss_mb(pid: int, *, tree: bool = True) -> float | None:
    """Resident memory of a process (and its descendants), MiB; None if it is gone."""
    if not _HAS_PSUTIL:  # /proc fallback: the process alone
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None
    total = _sum_over_tree(pid, tree, lambda p: p.memory_info().rss)
    return None if total is None else total / 2**20


def cpu_s(pid: int, *, tree: bool = True) -> float | None:
    """CPU seconds (user + system) used so far by a process and its live descendants; None without psutil."""
    if not _HAS_PSUTIL:
        return None
    return _sum_over_tree(pid, tree, lambda p: p.cpu_times().user + p.cpu_times().system)


def _sum_over_tree(pid: int, tree: bool, measure: Any) -> float | None:
    """``measure(process)`` summed over a process and (with ``tree``) its descendants; None if it is gone."""
    import psutil

    try:
        process = psutil.Process(pid)
        procs = [process, *(process.children(recursive=True) if tree else [])]
    except psutil.Error:
        return None
    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            total += measure(p)
    return total


def postgres_cpu_s() -> float | None:
    """CPU seconds used so far by the live processes of the local PostgreSQL server (backends, checkpointer, ...).

    Backends that exited are not counted, so a difference over a phase is only meaningful while the clients keep
    their pooled connections, as they do during a workload."""
    try:
        import psutil
    except ImportError:
        return None
    total = 0.0
    for p in psutil.process_iter(["name"]):
        if p.info.get("name") == "postgres":
            with contextlib.suppress(psutil.Error):
                times = p.cpu_times()
                total += times.user + times.system
    return total


# -- PostgreSQL ----------------------------------------------------------------------------------------------


async def _admin(statement: str) -> None:
    import asyncpg

    connection = await asyncpg.connect(PG_ADMIN, timeout=5)
    try:
        await connection.execute(statement)
    finally:
        await connection.close()


def _sync(coro: Any) -> Any:
    """Run a coroutine to completion on a loop of its own in a thread (callers may be inside the driver's loop)."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result(timeout=60)


def pg_available() -> bool:
    try:
        _sync(_admin("SELECT 1"))
    except Exception:
        return False
    return True


def create_pg_database(prefix: str) -> str:
    """A fresh database; returns its plain ``postgresql://`` URL."""
    name = f"bench_{prefix}_{uuid.uuid4().hex[:8]}"
    _sync(_admin(f'CREATE DATABASE "{name}"'))
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"


def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    if not name.startswith("bench_"):
        raise ValueError(f"refusing to drop {name}")
    with contextlib.suppress(Exception):
        _sync(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# -- a Prefect server ----------------------------------------------------------------------------------------


class PrefectServer:
    """A Prefect server with its own PREFECT_HOME; SQLite (default) or a fresh PostgreSQL database.

    Started the way hexlabs-tasks starts it (``python -m hexlabs_tasks.prefect_server``: ``prefect server start``
    with its startup objects frozen), or with ``stock`` the way Prefect's own docs start it
    (``prefect server start``).
    """

    def __init__(self, workdir: Path, db: str, *, stock: bool = False) -> None:
        self.workdir = workdir
        self.db = db
        self.stock = stock
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.pg_url: str | None = None
        self.proc: Proc | None = None

    def start(self) -> float:
        env = {
            **os.environ,
            "PREFECT_HOME": str(self.workdir / "prefect-server-home"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_ENABLED": "false",
            "PREFECT_LOGGING_LEVEL": "WARNING",
        }
        env.pop("PREFECT_API_URL", None)
        if self.db == "pg":
            self.pg_url = create_pg_database("prefect")
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.pg_url.replace("postgresql://", "postgresql+asyncpg://")
        started = time.monotonic()
        self.proc = Proc(
            f"prefect-server-{self.db}",
            [sys.executable, "-m", *self.program, "--host", "127.0.0.1", "--port", str(self.port)],
            env=env,
            cwd=self.workdir,
            log=self.workdir / f"prefect-server-{self.db}.log",
        )
        wait_http(f"{self.api_url}/health", timeout=180, proc=self.proc, what="the Prefect server")
        return time.monotonic() - started

    @property
    def program(self) -> list[str]:
        return ["prefect", "server", "start"] if self.stock else ["hexlabs_tasks.prefect_server"]

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None
        if self.pg_url:
            drop_pg_database(self.pg_url)
            self.pg_url = None

    def rss(self) -> float | None:
        return rss_mb(self.proc.pid) if self.proc else None

    def client_env(self, home: Path) -> dict[str, str]:
        """Environment for a Prefect client process of this server."""
        return {
            **os.environ,
            "PREFECT_API_URL": self.api_url,
            "PREFECT_HOME": str(home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        }
