"""The Prefect bridge against the session's real Prefect server: batched creates and states, and the fallback."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx
import pytest
import respx
from prefect.client.schemas.objects import StateType

from hexlabs_tasks._prefect import COMPLETED, FAILED, RUNNING, PrefectBridge
from hexlabs_tasks._serve import LocalPrefectServer


@pytest.fixture
async def bridge(prefect_server: LocalPrefectServer) -> AsyncIterator[PrefectBridge]:
    async with PrefectBridge(prefect_server.api_url) as opened:
        await opened.ensure_deployment()
        yield opened


def _ms(moment: datetime | None) -> int:
    assert moment is not None
    return int(moment.timestamp() * 1000)


async def test_concurrent_creates_share_bulk_calls_and_each_run_is_the_task_s(bridge: PrefectBridge) -> None:
    at = int(datetime.now(UTC).timestamp() * 1000) + 3_600_000
    ids = [uuid.uuid4().hex for _ in range(40)]
    runs = await asyncio.gather(
        *(bridge.create_run(t, generation=0, at_ms=at + n, tags=["x"]) for n, t in enumerate(ids))
    )
    assert len(set(runs)) == 40
    assert bridge._creates.batches < 40  # they went out together, not one call each
    for n, (task_id, run_id) in enumerate(zip(ids, runs, strict=True)):
        run = await bridge.read_run(run_id)
        assert run.name == task_id
        assert run.parameters == {"task_id": task_id}
        assert set(run.tags) >= {"hexlabs-tasks", "x"}
        assert run.state is not None and run.state.type is StateType.SCHEDULED
        assert _ms(run.state.state_details.scheduled_time) == at + n


async def test_the_same_task_and_generation_give_the_same_run_a_new_generation_a_new_one(bridge: PrefectBridge) -> None:
    task_id = uuid.uuid4().hex
    at = int(datetime.now(UTC).timestamp() * 1000) + 3_600_000
    first, again = await asyncio.gather(
        bridge.create_run(task_id, generation=0, at_ms=at), bridge.create_run(task_id, generation=0, at_ms=at)
    )
    later = await bridge.create_run(task_id, generation=0, at_ms=at)
    requeued = await bridge.create_run(task_id, generation=1, at_ms=at)
    assert first == again == later
    assert requeued != first


async def test_concurrent_state_changes_are_batched_and_land_on_every_run(bridge: PrefectBridge) -> None:
    at = int(datetime.now(UTC).timestamp() * 1000)
    runs = await asyncio.gather(*(bridge.create_run(uuid.uuid4().hex, generation=0, at_ms=at) for _ in range(30)))
    before = bridge._states.batches
    await asyncio.gather(*(bridge.set_state(run_id, RUNNING) for run_id in runs))
    await asyncio.gather(*(bridge.set_state(run_id, COMPLETED) for run_id in runs[:20]))
    await asyncio.gather(*(bridge.set_state(run_id, FAILED, message="HTTP 404") for run_id in runs[20:]))
    assert bridge._states.batches - before < 90
    for n, run_id in enumerate(runs):
        run = await bridge.read_run(run_id)
        assert run.state is not None
        if n < 20:
            assert run.state.type is StateType.COMPLETED
        else:
            assert run.state.type is StateType.FAILED
            assert run.state.message == "HTTP 404"
        assert run.start_time is not None  # it went through Running


async def test_a_state_for_a_run_prefect_does_not_have_is_skipped_without_failing_the_others(
    bridge: PrefectBridge,
) -> None:
    at = int(datetime.now(UTC).timestamp() * 1000)
    real = await bridge.create_run(uuid.uuid4().hex, generation=0, at_ms=at)
    await asyncio.gather(bridge.set_state(str(uuid.uuid4()), RUNNING), bridge.set_state(real, RUNNING))
    run = await bridge.read_run(real)
    assert run.state is not None and run.state.type is StateType.RUNNING


async def test_a_server_without_the_bulk_endpoints_gets_one_call_per_run(prefect_server: LocalPrefectServer) -> None:
    async with PrefectBridge(prefect_server.api_url) as bridge:
        # The same server, asked at routes it does not have: what an older Prefect answers.
        bridge.bulk_create_path = "/deployments/{id}/create_flow_run/no-such-bulk"
        bridge.bulk_state_path = "/flow_runs/no_such_bulk_set_state"
        at = int(datetime.now(UTC).timestamp() * 1000)
        task_ids = [uuid.uuid4().hex for _ in range(5)]
        runs = await asyncio.gather(*(bridge.create_run(t, generation=0, at_ms=at) for t in task_ids))
        assert bridge._bulk is False
        await asyncio.gather(*(bridge.set_state(run_id, COMPLETED) for run_id in runs))
        for task_id, run_id in zip(task_ids, runs, strict=True):
            run = await bridge.read_run(run_id)
            assert run.name == task_id
            assert run.state is not None and run.state.type is StateType.COMPLETED


async def test_runs_a_bulk_call_reports_as_not_done_are_done_again_one_by_one(
    prefect_server: LocalPrefectServer,
) -> None:
    """On SQLite the bulk endpoints report "database is locked" per run (200, status FAILED or ABORT) where the
    single endpoints answer 503, which the client retries; the bridge sends such runs again one by one.
    respx stands in for the bulk answers only; every other call reaches the real server."""
    async with PrefectBridge(prefect_server.api_url) as bridge:
        deployment_id = await bridge.ensure_deployment()
        at = int(datetime.now(UTC).timestamp() * 1000)
        task_ids = [uuid.uuid4().hex for _ in range(3)]
        locked = {"status": "FAILED", "flow_run_id": None, "error": "(sqlite3.OperationalError) database is locked"}
        with respx.mock(assert_all_called=True) as mock:
            mock.post(f"{prefect_server.api_url}/deployments/{deployment_id}/create_flow_run/bulk").mock(
                return_value=httpx.Response(200, json={"results": [locked, locked, locked]})
            )
            abort = {"status": "ABORT", "state": None, "details": {"type": "abort_details", "reason": "locked"}}
            state_route = mock.post(f"{prefect_server.api_url}/flow_runs/bulk_set_state")
            mock.route().pass_through()
            runs = await asyncio.gather(*(bridge.create_run(t, generation=0, at_ms=at) for t in task_ids))
            state_route.mock(
                return_value=httpx.Response(200, json={"results": [{"flow_run_id": r, **abort} for r in runs]})
            )
            await asyncio.gather(*(bridge.set_state(run_id, COMPLETED) for run_id in runs))
        assert bridge._bulk is True
        for task_id, run_id in zip(task_ids, runs, strict=True):
            run = await bridge.read_run(run_id)
            assert run.name == task_id
            assert run.state is not None and run.state.type is StateType.COMPLETED
