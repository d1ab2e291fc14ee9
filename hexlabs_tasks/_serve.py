"""Running the parts: the API, a worker, and (for ``serve``) a local Prefect server as a child process.

``serve`` = Prefect server (unless ``PREFECT_API_URL`` points at one) + schema upgrade + deployment + API +
worker, in one process and one event loop, stopped cleanly by Ctrl-C (SIGINT) or SIGTERM: the API stops
accepting, the worker finishes or gives back its attempts, then the Prefect server is stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import uvicorn
from fastapi import FastAPI
from rich.console import Console

from hexlabs_tasks._gc import freeze_startup_objects
from hexlabs_tasks._prefect import PrefectBridge, resolve_prefect_api_url
from hexlabs_tasks._service import TaskService
from hexlabs_tasks._settings import Settings
from hexlabs_tasks._store import Store
from hexlabs_tasks._worker import Worker

__all__ = ["LocalPrefectServer", "check_bind_address", "run_api", "run_serve", "run_worker"]

console = Console(stderr=True)


class StartupError(RuntimeError):
    """Something ``serve`` needs could not be started; the message says what and how to fix it."""


def check_bind_address(host: str, token_set: bool) -> None:
    """Refuse a non-loopback address without a token: the API would be open to the network."""
    if token_set:
        return
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise StartupError(
            f"refusing to listen on {host} without a token: anyone who can reach it could create requests. "
            "Set HEXLABS_TASKS_TOKEN, or listen on 127.0.0.1."
        )


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


class LocalPrefectServer:
    """``prefect server start`` as a child process, its data under ``home``.

    Started through :mod:`hexlabs_tasks.prefect_server`, which freezes the server's startup objects so that its
    garbage collector's full passes stay short (every API call waits for them).

    Args:
        home: directory for Prefect's database (SQLite, unless ``database_url``) and the server's log.
        port: port on 127.0.0.1.
        database_url: a ``postgresql+asyncpg://`` URL for Prefect's own database instead of SQLite.
    """

    def __init__(self, home: Path, port: int, *, database_url: str | None = None) -> None:
        self.home = home
        self.port = port
        self.database_url = database_url
        self.api_url = f"http://127.0.0.1:{port}/api"
        self.ui_url = f"http://127.0.0.1:{port}"
        self.log_path = home / "prefect-server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, *, timeout: float = 120.0) -> None:
        """Start the server and wait (showing progress) until ``/api/health`` answers."""
        if not _port_free("127.0.0.1", self.port):
            raise StartupError(
                f"port {self.port} on 127.0.0.1 is taken; pass --prefect-port, or point PREFECT_API_URL at the "
                "Prefect server that is running there"
            )
        self.home.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "PREFECT_HOME": str(self.home / "prefect"),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_API_HOST": "127.0.0.1",
            "PREFECT_SERVER_API_PORT": str(self.port),
            "PREFECT_UI_API_URL": self.api_url,
        }
        env.pop("PREFECT_API_URL", None)
        if self.database_url:
            env["PREFECT_API_DATABASE_CONNECTION_URL"] = self.database_url
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "hexlabs_tasks.prefect_server",  # `prefect server start`, its startup objects frozen
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        started = time.monotonic()
        with console.status("Starting the Prefect server...") as status:
            while True:
                if self.process.poll() is not None:
                    raise StartupError(
                        f"the Prefect server exited with code {self.process.returncode}; see {self.log_path}:\n"
                        + self._log_tail()
                    )
                if self._healthy():
                    break
                elapsed = time.monotonic() - started
                if elapsed > timeout:
                    self.stop()
                    raise StartupError(f"the Prefect server did not answer within {timeout:.0f} s; see {self.log_path}")
                status.update(
                    f"Starting the Prefect server on {self.ui_url} ... {elapsed:.0f} s "
                    "(the first start creates its database)"
                )
                time.sleep(0.25)
        console.print(f"[green]Prefect server ready[/] in {time.monotonic() - started:.1f} s")

    def _healthy(self) -> bool:
        try:
            return httpx.get(f"{self.api_url}/health", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def _log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server and everything it started (its process group): SIGTERM, then SIGKILL."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the caller owns SIGINT/SIGTERM and stops everything in order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


async def _serve_http(server: _Server, stop: asyncio.Event) -> None:
    serving = asyncio.create_task(server.serve())
    stopping = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    await serving
    stopping.cancel()
    if serving in done and not stop.is_set():
        stop.set()  # the server ended on its own (failed to bind): stop the rest too


async def _listening(server: _Server, jobs: list[asyncio.Task[None]]) -> None:
    """Return once uvicorn accepts connections, or once a job ended (a port taken: gather then says why)."""
    while not server.started and not any(job.done() for job in jobs):  # noqa: ASYNC110 (uvicorn has only a flag)
        await asyncio.sleep(0.02)


def _uvicorn(app: FastAPI, settings: Settings) -> _Server:
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level="warning",
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    return _Server(config)


def _worker(settings: Settings, store: Store, bridge: PrefectBridge) -> Worker:
    return Worker(
        store=store,
        bridge=bridge,
        concurrency=settings.worker_concurrency,
        poll_interval=settings.poll_interval,
        lease_seconds=settings.lease_seconds,
        shutdown_grace=settings.shutdown_grace,
    )


async def _run_all(
    settings: Settings, prefect_api_url: str, *, api: bool, worker: bool, banner: dict[str, str]
) -> None:
    from hexlabs_tasks.api import create_app

    stop = asyncio.Event()
    _stop_on_signals(stop)
    store = Store(settings.resolved_database_url())
    try:
        await store.migrate()
        async with PrefectBridge(prefect_api_url, concurrency=settings.prefect_concurrency) as bridge:
            await bridge.ensure_deployment()
            the_worker = _worker(settings, store, bridge) if worker else None
            http = None
            if api:
                service = TaskService(store, bridge, on_change=the_worker.wake if the_worker else None)
                http = _uvicorn(create_app(settings, service=service, stopping=stop), settings)
            freeze_startup_objects()  # everything is imported and built: keep it out of later full collections
            jobs = [asyncio.create_task(the_worker.run(stop))] if the_worker is not None else []
            if http is not None:
                jobs.append(asyncio.create_task(_serve_http(http, stop)))
                await _listening(http, jobs)
            if http is None or http.started:
                for name, value in banner.items():
                    console.print(f"  [bold]{name:<12}[/] {value}")
                console.print("Press Ctrl-C to stop.")  # only once the API answers: scripts wait for this line
            await asyncio.gather(*jobs)
    finally:
        await store.dispose()


SQLITE_PREFECT_CONCURRENCY = 1


def with_sqlite_prefect(settings: Settings) -> Settings:
    """The settings for a Prefect server on SQLite (the one ``serve`` starts): one Prefect call at a time.

    On SQLite concurrent writers meet "database is locked" (answered 503 and retried after 2, 4, 8 s); one call at
    a time, with the bridge batching whatever queues behind it, is faster there (docs/prefect.md). A concurrency
    the user set is kept.
    """
    if "prefect_concurrency" in settings.model_fields_set:
        return settings
    return settings.model_copy(update={"prefect_concurrency": SQLITE_PREFECT_CONCURRENCY})


def run_serve(settings: Settings) -> None:
    """Everything on one machine: a Prefect server (unless one is configured), the API and a worker."""
    check_bind_address(settings.host, settings.token is not None)
    if not _port_free(settings.host, settings.port):
        raise StartupError(f"port {settings.port} on {settings.host} is taken; pass --port")
    configured = settings.prefect_api_url or os.environ.get("PREFECT_API_URL")
    prefect: LocalPrefectServer | None = None
    if configured:
        api_url, ui_url = configured, configured.removesuffix("/api")
    else:
        prefect = LocalPrefectServer(settings.resolved_home, settings.prefect_port)
        prefect.start()
        api_url, ui_url = prefect.api_url, prefect.ui_url
        settings = with_sqlite_prefect(settings)
    base = f"http://{settings.host}:{settings.port}"
    banner = {
        "API": base,
        "API docs": f"{base}/docs",
        "Prefect UI": ui_url,
        "Database": settings.resolved_database_url().split("@")[-1],
    }
    try:
        asyncio.run(_run_all(settings, api_url, api=True, worker=True, banner=banner))
    finally:
        if prefect is not None:
            console.print("Stopping the Prefect server...")
            prefect.stop()
        console.print("Stopped.")


def run_api(settings: Settings) -> None:
    """The API alone (for running API and workers on separate machines)."""
    check_bind_address(settings.host, settings.token is not None)
    api_url = resolve_prefect_api_url(settings.prefect_api_url, settings.prefect_port)
    base = f"http://{settings.host}:{settings.port}"
    asyncio.run(
        _run_all(
            settings,
            api_url,
            api=True,
            worker=False,
            banner={"API": base, "API docs": f"{base}/docs", "Prefect API": api_url},
        )
    )


def run_worker(settings: Settings) -> None:
    """A worker alone."""
    api_url = resolve_prefect_api_url(settings.prefect_api_url, settings.prefect_port)
    asyncio.run(
        _run_all(
            settings,
            api_url,
            api=False,
            worker=True,
            banner={"Worker": f"pid {os.getpid()}", "Prefect API": api_url},
        )
    )
