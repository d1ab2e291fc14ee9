"""The FastAPI app factory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from hexlabs_tasks import __version__
from hexlabs_tasks._prefect import PrefectBridge, resolve_prefect_api_url
from hexlabs_tasks._service import TaskService
from hexlabs_tasks._settings import Settings, get_settings
from hexlabs_tasks._store import Store
from hexlabs_tasks.api._errors import install_error_handlers
from hexlabs_tasks.api._limits import BodyLimitMiddleware
from hexlabs_tasks.api._routes import health_router, seed_router, tasks_router

__all__ = ["create_app"]


def create_app(
    settings: Settings | None = None,
    *,
    service: TaskService | None = None,
    on_change: Callable[[], None] | None = None,
) -> FastAPI:
    """Build the API.

    Args:
        settings: configuration; read from the environment when None.
        service: an existing service to serve (``serve`` shares one with its worker); when None the app opens
            its own store and Prefect bridge for its lifetime, upgrading the schema and registering the
            deployment at start.
        on_change: passed to a service the app builds itself.
    """
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if service is not None:
            app.state.service = service
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
            try:
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
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.include_router(health_router)
    app.include_router(tasks_router)
    app.include_router(seed_router)
    return app
