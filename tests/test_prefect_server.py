"""The Prefect server as hexlabs-tasks starts it: Prefect's own, its startup objects frozen once it has started."""

from __future__ import annotations

import gc
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
from fastapi import FastAPI

from hexlabs_tasks._serve import LocalPrefectServer
from hexlabs_tasks.prefect_server import FROZE_MESSAGE, freezing_after_startup


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def _app(events: list[str]) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        events.append(f"startup, {gc.get_freeze_count()} frozen")
        yield
        events.append("shutdown")

    return FastAPI(lifespan=lifespan)


async def test_startup_objects_are_frozen_once_prefect_s_own_startup_has_run() -> None:
    events: list[str] = []
    app = freezing_after_startup(lambda: _app(events))()

    async with app.router.lifespan_context(app):
        assert events == ["startup, 0 frozen"]  # Prefect's startup (migrations, services) ran first, unfrozen
        assert gc.get_freeze_count() > 1000  # then everything it left alive was frozen

    assert events == ["startup, 0 frozen", "shutdown"]  # and Prefect's shutdown still runs


async def test_an_app_prefect_returns_from_its_cache_is_not_wrapped_twice() -> None:
    events: list[str] = []
    cached = _app(events)
    create = freezing_after_startup(lambda: cached)

    first = create()
    lifespan = first.router.lifespan_context
    again = create()

    assert again is first
    assert again.router.lifespan_context is lifespan
    async with again.router.lifespan_context(again):
        pass
    assert events == ["startup, 0 frozen", "shutdown"]


@pytest.mark.e2e
def test_the_local_prefect_server_froze_what_its_startup_left_alive(prefect_server: LocalPrefectServer) -> None:
    pattern = re.escape(FROZE_MESSAGE).replace("%d", r"(\d+)")
    found = re.search(pattern, prefect_server.log_path.read_text(errors="replace"))

    assert found, f"no freeze reported in {prefect_server.log_path}"
    assert int(found.group(1)) > 100_000  # Prefect's modules and app: ~350,000-500,000 objects
