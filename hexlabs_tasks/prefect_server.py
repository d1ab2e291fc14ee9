"""Prefect's server as ``prefect server start`` runs it, with its garbage collector's full passes kept short.

A Prefect server holds ~420,000 objects after startup, nearly all from importing Prefect and building its app and
never freed. CPython's full collection walks every one of them: 210-320 ms every 12-45 s under a steady stream of
tasks, and every API call in flight waits (bench/findings.md, sections 5 and 6). Once the server has started (its
database migrated, its services running), this freezes what exists (``gc.freeze``), the way the API and the worker
freeze their own, so later collections walk only what the work allocates.

Run it as ``python -m hexlabs_tasks.prefect_server [options of prefect server start]``; ``serve`` starts its local
Prefect server this way. Everything else (options, settings, database, UI, services, exit code) is Prefect's own.
With ``--workers`` above 1 Prefect starts its server processes itself, and those are not frozen: run several
single-process servers behind a load balancer instead (docs/postgresql.md).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from fastapi import FastAPI

from hexlabs_tasks._gc import freeze_startup_objects

__all__ = ["FROZE_MESSAGE", "freezing_after_startup", "main"]

#: What the server logs once it has frozen its startup objects (tests and operators look for it).
FROZE_MESSAGE = "hexlabs-tasks: froze %d startup objects of the Prefect server"


def freezing_after_startup(create_app: Callable[..., FastAPI]) -> Callable[..., FastAPI]:
    """Wrap Prefect's ``create_app`` so that the app's lifespan freezes startup objects once startup is done."""

    def create(*args: Any, **kwargs: Any) -> FastAPI:
        app = create_app(*args, **kwargs)
        started = app.router.lifespan_context
        if getattr(started, "_hexlabs_freezes", False):  # the app is cached: wrapped already
            return app

        @contextlib.asynccontextmanager
        async def lifespan(app_: FastAPI) -> AsyncIterator[Any]:
            async with started(app_) as state:
                frozen = freeze_startup_objects()
                print(FROZE_MESSAGE % frozen, file=sys.stderr, flush=True)  # Prefect's logging may be quiet
                yield state

        lifespan._hexlabs_freezes = True  # type: ignore[attr-defined]
        app.router.lifespan_context = lifespan
        return app

    return create


def main(argv: Sequence[str] | None = None) -> None:
    """``prefect server start`` with ``argv`` as its options, freezing startup objects once it has started."""
    from prefect.cli import app
    from prefect.server.api import server

    # `prefect server start` imports create_app from this module when it runs, so the wrapper is what it calls.
    server.create_app = freezing_after_startup(server.create_app)
    options = sys.argv[1:] if argv is None else list(argv)
    sys.argv = ["prefect", "server", "start", *options]  # Prefect's CLI reads its arguments from sys.argv
    app()


if __name__ == "__main__":
    main()
