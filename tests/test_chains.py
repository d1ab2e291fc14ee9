"""Chained sequential workflows, end to end: a real Prefect server, API and worker processes, an HTTP target."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
from conftest import Stack, StackFactory, wait_until
from support import HttpTarget, Reply

from hexlabs_tasks import Task, Tasks, TaskValidationError

pytestmark = pytest.mark.e2e


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def step(target: HttpTarget, path: str, perform_at: int | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "request": {"url": target.url_for(path), "method": "post", "body": {"step": path}},
        "performAt": now_ms() if perform_at is None else perform_at,
        **extra,
    }


def final(client: Tasks, task_id: str, timeout: float = 30) -> Task:
    return client.wait(task_id, timeout=timeout, poll_interval=0.1)


def prefect_run(stack: Stack, flow_run_id: str | None) -> dict[str, Any]:
    data: dict[str, Any] = httpx.get(f"{stack.prefect_api_url}/flow_runs/{flow_run_id}").json()
    return data


def test_a_chain_of_three_runs_strictly_in_order(client: Tasks, stack: Stack, target: HttpTarget, path: str) -> None:
    paths = [f"{path}/{n}" for n in range(3)]
    for p in paths:
        target.respond(p, Reply(200, delay=0.3))  # each takes a while: the next must not start meanwhile
    first, second, third = client.chain([step(target, p) for p in paths])
    assert (first.depends_on, second.depends_on, third.depends_on) == ([], [first.id], [second.id])
    assert [t.status for t in (first, second, third)] == ["pending"] * 3
    assert second.next_attempt_at is None  # waiting for its dependency holds no slot and has no due time

    done = [final(client, t.id) for t in (first, second, third)]
    assert [t.status for t in done] == ["completed"] * 3
    arrivals = [target.received(p)[0].arrived_at_ms for p in paths]
    assert arrivals[1] >= (done[0].completed_at or 0)  # each request only after the previous one completed
    assert arrivals[2] >= (done[1].completed_at or 0)
    assert all(len(target.received(p)) == 1 for p in paths)

    tags = [prefect_run(stack, t.flow_run_id)["tags"] for t in done]
    assert all(f"chain:{first.id}" in t for t in tags)  # the runs can be found together...
    assert [f"chain-step:{n}" in t for n, t in enumerate(tags, start=1)] == [True] * 3  # ...and in order


def test_a_failing_middle_task_cancels_the_rest(client: Tasks, stack: Stack, target: HttpTarget, path: str) -> None:
    paths = [f"{path}/{n}" for n in range(4)]
    target.respond(paths[1], Reply(404))
    tasks = client.chain([step(target, p) for p in paths])
    assert final(client, tasks[1].id).status == "failed"
    third, fourth = final(client, tasks[2].id), final(client, tasks[3].id)
    assert third.status == "cancelled"
    assert tasks[1].id in (third.last_error or "")
    assert fourth.status == "cancelled"
    assert tasks[2].id in (fourth.last_error or "")  # and so on down the chain
    assert target.received(paths[2]) == []
    assert target.received(paths[3]) == []
    wait_until(
        lambda: prefect_run(stack, third.flow_run_id)["state"]["type"] == "CANCELLED",
        timeout=20,
        what="the third run Cancelled in Prefect",
    )


def test_deleting_the_first_task_cancels_the_rest(client: Tasks, stack: Stack, target: HttpTarget, path: str) -> None:
    later = now_ms() + 60_000
    first, second, third = client.chain([step(target, f"{path}/{n}", later) for n in range(3)])
    client.delete(first.id)
    second_now, third_now = client.read(second.id), client.read(third.id)
    assert (second_now.status, third_now.status) == ("cancelled", "cancelled")
    assert first.id in (second_now.last_error or "")
    assert "deleted" in (second_now.last_error or "")
    assert prefect_run(stack, second.flow_run_id)["state"]["type"] == "CANCELLED"
    assert prefect_run(stack, third.flow_run_id)["state"]["type"] == "CANCELLED"


def test_a_cycle_through_an_update_is_a_422_naming_the_ids(
    client: Tasks, stack: Stack, target: HttpTarget, path: str
) -> None:
    later = now_ms() + 60_000
    a, b, c = client.chain([step(target, f"{path}/{n}", later) for n in range(3)])
    response = httpx.patch(f"{stack.url}/api/tasks/{a.id}", json={"dependsOn": [c.id]})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["details"][0]["field"] == "dependsOn"
    assert set(error["details"][0]["ids"]) == {a.id, b.id, c.id}
    assert client.read(a.id).depends_on == []  # nothing changed
    with pytest.raises(TaskValidationError):
        client.update(a.id, {"dependsOn": [a.id]})  # a task cannot depend on itself


def test_unknown_dependency_ids_are_422s_naming_them_and_store_nothing(
    client: Tasks, stack: Stack, target: HttpTarget, path: str
) -> None:
    before = len(client.list(limit=1000).data)
    response = httpx.post(f"{stack.url}/api/tasks", json=step(target, path, dependsOn=["nope-1", "nope-2"]))
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["ids"] == ["nope-1", "nope-2"]
    chain = httpx.post(
        f"{stack.url}/api/tasks/chain", json={"tasks": [step(target, path), step(target, path, dependsOn=["nope-3"])]}
    )
    assert chain.status_code == 422
    assert "nope-3" in chain.text
    bad = httpx.post(f"{stack.url}/api/tasks/chain", json={"tasks": [step(target, path), {"performAt": 1}]})
    assert bad.status_code == 422
    assert any(d["field"].startswith("tasks.1.request") for d in bad.json()["error"]["details"])
    assert len(client.list(limit=1000).data) == before
    assert target.received(path) == []


def test_a_dependency_already_completed_does_not_hold_a_task_back(client: Tasks, target: HttpTarget, path: str) -> None:
    first = client.create(step(target, f"{path}/a"))
    assert final(client, first.id).status == "completed"
    due = now_ms() + 1000
    second = client.create(step(target, f"{path}/b", due, dependsOn=[first.id]))
    (got,) = target.wait_for(1, f"{path}/b", timeout=10)
    assert 0 <= got.arrived_at_ms - due < 1000
    assert final(client, second.id).status == "completed"


def test_a_dependent_runs_at_its_own_later_perform_at(client: Tasks, target: HttpTarget, path: str) -> None:
    due = now_ms() + 2500
    first, second = client.chain([step(target, f"{path}/a"), step(target, f"{path}/b", due)])
    assert final(client, first.id).status == "completed"
    assert client.read(second.id).next_attempt_at == due
    (got,) = target.wait_for(1, f"{path}/b", timeout=15)
    assert 0 <= got.arrived_at_ms - due < 1000  # the later of its performAt and its dependency's completion


def test_fifty_chains_of_three_created_at_once_all_run_in_order(
    make_stack: StackFactory, target: HttpTarget, path: str
) -> None:
    stack = make_stack(workers=1)

    async def create_all() -> list[list[Task]]:
        async with stack.async_client() as client:
            limit = asyncio.Semaphore(8)

            async def one(n: int) -> list[Task]:
                async with limit:
                    return await client.chain([step(target, f"{path}/{n}/{k}") for k in range(3)])

            return await asyncio.gather(*(one(n) for n in range(50)))

    chains = asyncio.run(create_all())
    wait_until(
        lambda: len([r for r in target.received() if r.path.startswith(path + "/")]) >= 150,
        timeout=120,
        interval=0.2,
        what="150 requests",
    )
    with stack.client() as client:
        for n, chain in enumerate(chains):
            done = [final(client, t.id) for t in chain]
            assert [t.status for t in done] == ["completed"] * 3
            arrivals = [target.received(f"{path}/{n}/{k}") for k in range(3)]
            assert [len(a) for a in arrivals] == [1, 1, 1]
            assert arrivals[0][0].arrived_at_ms <= arrivals[1][0].arrived_at_ms <= arrivals[2][0].arrived_at_ms
            assert arrivals[1][0].arrived_at_ms >= (done[0].completed_at or 0)
            assert arrivals[2][0].arrived_at_ms >= (done[1].completed_at or 0)


def test_killing_the_worker_right_after_a_dependency_completes_leaves_nothing_stuck(
    make_stack: StackFactory, target: HttpTarget, path: str
) -> None:
    stack = make_stack(workers=1)
    with stack.client() as client:
        due = now_ms() + 4000
        first, second = client.chain([step(target, f"{path}/a"), step(target, f"{path}/b", due)])
        wait_until(
            lambda: client.read(first.id).status == "completed",
            timeout=15,
            interval=0.02,
            what="the dependency completed",
        )
        stack.stop(stack.workers[0], signal.SIGKILL)  # dies right after the completion
        assert client.read(second.id).next_attempt_at == due  # released by the completion itself
        stack.start_worker()
        assert final(client, second.id).status == "completed"
    assert len(target.received(f"{path}/b")) == 1  # once


def test_cli_create_after_makes_a_dependent(stack: Stack, client: Tasks, target: HttpTarget, path: str) -> None:
    later = now_ms() + 60_000
    first = client.create(step(target, f"{path}/a", later))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hexlabs_tasks",
            "create",
            "--url",
            target.url_for(f"{path}/b"),
            "--method",
            "get",
            "--after",
            first.id,
            "--in",
            "1s",
        ],
        env={**stack.env, "HEXLABS_TASKS_URL": stack.url},
        cwd=stack.workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    dependent = json.loads(result.stdout)
    assert dependent["dependsOn"] == [first.id]
    assert dependent["status"] == "pending"
    assert dependent["nextAttemptAt"] is None
