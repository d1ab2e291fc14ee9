"""Fixtures for tests that use real components: a Prefect server, the API and workers as processes, an HTTP target.

Everything listens on free ports on 127.0.0.1 and is stopped, by its PID, when the tests end, so a ``serve``
running beside the tests does not disturb them.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import HttpTarget

from hexlabs_tasks import AsyncTasks, Tasks
from hexlabs_tasks._serve import LocalPrefectServer

# Lateness (request arrival minus performAt, ms) of every on-time check, summarised at the end of the run.
LATENESS_MS: list[int] = []

POSTGRES_ADMIN_URLS = ("postgresql://postgres@127.0.0.1:5432/test", "postgresql://root@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(condition: Callable[[], Any], *, timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy; fail the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalPrefectServer]:
    """A real Prefect server, started the way ``serve`` starts it, for the whole session.

    Its own database is PostgreSQL when that is reachable (Prefect writes are several times faster there and never
    stall on locks, which keeps the suite short) and SQLite otherwise; test_serve.py covers serve's SQLite default.
    """
    admin = _postgres_admin_url()
    database = f"hexlabs_prefect_{uuid.uuid4().hex[:12]}" if admin else None
    if admin and database:
        _admin_execute(admin, f'CREATE DATABASE "{database}"')
    url = admin.replace("postgresql://", "postgresql+asyncpg://").rsplit("/", 1)[0] + f"/{database}" if admin else None
    server = LocalPrefectServer(tmp_path_factory.mktemp("prefect-home"), free_port(), database_url=url)
    server.start(timeout=180)
    try:
        yield server
    finally:
        server.stop()
        if admin and database:
            _admin_execute(admin, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


def _admin_execute(admin_url: str, statement: str) -> None:
    import asyncpg

    async def run() -> None:
        connection = await asyncpg.connect(admin_url)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    asyncio.run(run())


@pytest.fixture(scope="session")
def target() -> Iterator[HttpTarget]:
    """A real HTTP target on 127.0.0.1 that records what arrives (tests use their own paths)."""
    with HttpTarget() as http_target:
        yield http_target


@pytest.fixture
def path() -> str:
    """A path on the target that belongs to this test alone."""
    return f"/t/{uuid.uuid4().hex}"


class Stack:
    """The API and workers of hexlabs-tasks as separate processes, on one database and one Prefect server."""

    def __init__(
        self,
        workdir: Path,
        database_url: str,
        prefect_api_url: str,
        *,
        token: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.prefect_api_url = prefect_api_url
        self.database_url = database_url
        self.token = token
        self.env = {
            **os.environ,
            "HEXLABS_TASKS_DATABASE_URL": database_url,
            "HEXLABS_TASKS_HOME": str(workdir / "home"),
            "HEXLABS_TASKS_PORT": str(self.port),
            "HEXLABS_TASKS_POLL_INTERVAL": "0.1",
            "HEXLABS_TASKS_LEASE_SECONDS": "10",
            "HEXLABS_TASKS_SHUTDOWN_GRACE": "3",
            "PREFECT_API_URL": prefect_api_url,
            "PREFECT_HOME": str(workdir / "prefect-client"),
            **(env or {}),
        }
        self.env.pop("HEXLABS_TASKS_TOKEN", None)
        if token:
            self.env["HEXLABS_TASKS_TOKEN"] = token
        self.api: subprocess.Popen[bytes] | None = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self._logs = 0

    def _spawn(self, command: str) -> subprocess.Popen[bytes]:
        self._logs += 1
        self.last_log = self.workdir / f"{command}-{self._logs}.log"
        log = self.last_log.open("wb")
        # cwd outside the checkout: `python -m` puts cwd first on sys.path, and the source tree's package lacks the
        # flows/ and deployments/ subpackages that only the installed package has.
        process = subprocess.Popen(
            [sys.executable, "-m", "hexlabs_tasks", command],
            cwd=self.workdir,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        return process

    def start_api(self) -> None:
        self.api = self._spawn("api")
        wait_until(self._api_healthy, timeout=60, what=f"the API on {self.url} (logs in {self.workdir})")

    def _api_healthy(self) -> bool:
        assert self.api is not None
        if self.api.poll() is not None:
            raise AssertionError(f"the API exited with {self.api.returncode}:\n{self.logs()}")
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def start_worker(self) -> subprocess.Popen[bytes]:
        """Start a worker and wait until it works (it prints its banner after its start-up checks)."""
        worker = self._spawn("worker")
        self.workers.append(worker)
        log = self.last_log

        def ready() -> bool:
            if worker.poll() is not None:
                raise AssertionError(f"the worker exited with {worker.returncode}:\n{self.logs()}")
            return "Press Ctrl-C to stop." in log.read_text(errors="replace")

        wait_until(ready, timeout=60, what=f"the worker to start (log {log})")
        return worker

    def stop(self, process: subprocess.Popen[bytes], sig: int = signal.SIGINT, timeout: float = 20) -> int:
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
                raise AssertionError(f"process {process.pid} ignored signal {sig} for {timeout} s") from None
        if process in self.workers:
            self.workers.remove(process)
        return process.returncode

    def close(self) -> None:
        for process in [*self.workers, *([self.api] if self.api else [])]:
            with contextlib.suppress(AssertionError):
                self.stop(process)

    def logs(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.workdir.glob("*.log"))
        )

    def client(self, **kwargs: Any) -> Tasks:
        return Tasks(base_url=self.url, token=self.token, **kwargs)

    def async_client(self, **kwargs: Any) -> AsyncTasks:
        return AsyncTasks(base_url=self.url, token=self.token, **kwargs)


StackFactory = Callable[..., Stack]


@pytest.fixture(scope="session")
def make_stack(prefect_server: LocalPrefectServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackFactory]:
    """Start API/worker stacks (their own database by default); all are stopped at the end of the session."""
    stacks: list[Stack] = []

    def make(
        *,
        database_url: str | None = None,
        workers: int = 1,
        token: str | None = None,
        env: dict[str, str] | None = None,
    ) -> Stack:
        workdir = tmp_path_factory.mktemp("stack")
        stack = Stack(
            workdir, database_url or f"sqlite:///{workdir / 'tasks.db'}", prefect_server.api_url, token=token, env=env
        )
        stacks.append(stack)
        stack.start_api()  # the API upgrades the schema first; workers start on a ready database
        for _ in range(workers):
            stack.start_worker()
        return stack

    try:
        yield make
    finally:
        for stack in stacks:
            stack.close()


@pytest.fixture(scope="session")
def stack(make_stack: StackFactory) -> Stack:
    """The shared stack: one API and one worker on SQLite."""
    return make_stack()


@pytest.fixture
def client(stack: Stack) -> Iterator[Tasks]:
    with stack.client() as sdk:
        yield sdk


@pytest.fixture
async def async_client(stack: Stack) -> AsyncIterator[AsyncTasks]:
    async with stack.async_client() as sdk:
        yield sdk


def _postgres_admin_url() -> str | None:
    import asyncpg

    async def probe(url: str) -> bool:
        try:
            connection = await asyncpg.connect(url, timeout=2)
        except (OSError, asyncpg.PostgresError):
            return False
        await connection.close()
        return True

    for url in POSTGRES_ADMIN_URLS:
        if asyncio.run(probe(url)):
            return url
    return None


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[Callable[[], str]]:
    """Make fresh PostgreSQL databases (dropped at the end); skips when PostgreSQL is not reachable."""
    admin = _postgres_admin_url()
    if admin is None:
        pytest.skip("PostgreSQL is not reachable on 127.0.0.1:5432")
    made: list[str] = []

    def make() -> str:
        name = f"hexlabs_e2e_{uuid.uuid4().hex[:12]}"
        _admin_execute(admin, f'CREATE DATABASE "{name}"')
        made.append(name)
        return admin.rsplit("/", 1)[0] + f"/{name}"

    yield make
    for name in made:
        _admin_execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Report how late the on-time requests arrived: the figure the issue asks for, measured, not assumed."""
    if LATENESS_MS:
        ordered = sorted(LATENESS_MS)
        median = ordered[len(ordered) // 2]
        terminalreporter.write_line(
            f"request lateness after performAt over {len(ordered)} on-time checks: "
            f"min {ordered[0]} ms, median {median} ms, max {ordered[-1]} ms"
        )
