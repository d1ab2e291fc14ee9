"""The FastAPI app factory."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from hexlabs_tasks import __version__
from hexlabs_tasks._gc import freeze_startup_objects
from hexlabs_tasks._prefect import PrefectBridge, resolve_prefect_api_url
from hexlabs_tasks._service import TaskService
from hexlabs_tasks._settings import Settings, get_settings
from hexlabs_tasks._store import Store
from hexlabs_tasks.api._errors import install_error_handlers
from hexlabs_tasks.api._events import events_router
from hexlabs_tasks.api._limits import BodyLimitMiddleware
from hexlabs_tasks.api._routes import health_router, seed_router, tasks_router

__all__ = ["create_app"]

logger = logging.getLogger("hexlabs_tasks.api")
PRUNE_EVERY_SECONDS = 60.0


async def _prune_events(store: Store, keep: int) -> None:
    """Keep the event log to its window: the newest ``keep`` events (plus what a minute adds)."""
    while True:
        try:
            await store.prune_events(keep=keep)
        except Exception as exc:  # a busy or unreachable database: try again next time
            logger.warning("could not prune the event log: %s", exc)
        await asyncio.sleep(PRUNE_EVERY_SECONDS)


@asynccontextmanager
async def _event_window(store: Store, keep: int) -> AsyncIterator[None]:
    pruning = asyncio.create_task(_prune_events(store, keep), name="hexlabs-tasks-prune-events")
    try:
        yield
    finally:
        pruning.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pruning


def create_app(
    settings: Settings | None = None,
    *,
    service: TaskService | None = None,
    on_change: Callable[[], None] | None = None,
    stopping: asyncio.Event | None = None,
) -> FastAPI:
    """Build the API.

    Args:
        settings: configuration; read from the environment when None.
        service: an existing service to serve (``serve`` shares one with its worker); when None the app opens
            its own store and Prefect bridge for its lifetime, upgrading the schema and registering the
            deployment at start.
        on_change: passed to a service the app builds itself.
        stopping: once set, open event streams end (within a poll interval), so a graceful shutdown does not
            wait for listeners that never hang up (``serve``, ``api`` pass the event their signal handlers set).
    """
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if service is not None:
            app.state.service = service
            async with _event_window(service.store, settings.events_window):
                yield
            return
        store = Store(settings.resolved_database_url())
        await store.migrate()
        async with PrefectBridge(
            resolve_prefect_api_url(settings.prefect_api_url, settings.prefect_port),
            concurrency=settings.prefect_concurrency,
        ) as bridge:
            await bridge.ensure_deployment()
            app.state.service = TaskService(store, bridge, on_change=on_change)
            freeze_startup_objects()
            try:
                async with _event_window(store, settings.events_window):
                    yield
            finally:
                await store.dispose()

    app = FastAPI(
        title="hexlabs-tasks",
        version=__version__,
        description="Scheduled HTTP requests with retries; each task is one scheduled Prefect flow run.",
        lifespan=lifespan,
    )
    app.state.token = settings.token.get_secret_value() if settings.token else None
    app.state.events_window = settings.events_window
    app.state.events_stopping = stopping if stopping is not None else asyncio.Event()
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.include_router(health_router)
    app.include_router(tasks_router)
    app.include_router(seed_router)
    app.include_router(events_router)
    return app
