"""End to end: a real Prefect server, the API and workers as processes, a real HTTP target on 127.0.0.1.

Each test creates tasks through a public interface and checks what a user would: what arrives at the target and
when, what a read says, what Prefect shows.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
from conftest import LATENESS_MS, Stack, StackFactory, wait_until
from support import HttpTarget, Received, Reply

from hexlabs_tasks import Task, TaskConflict, Tasks

pytestmark = pytest.mark.e2e

ON_TIME_MS = 1000  # the request arrives within this long after performAt


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def task_body(target: HttpTarget, path: str, perform_at: int, **extra: Any) -> dict[str, Any]:
    request = {
        "url": target.url_for(path) + "?fixed=1",
        "method": "POST",
        "headers": {"X-Source": "billing"},
        "params": {"page": 2, "q": "x", "dry": True},
        "body": {"some": "payload"},
        "timeout": 5,
    }
    request.update(extra.pop("request", {}))
    return {"request": request, "performAt": perform_at, **extra}


def assert_exact_request(got: Received, perform_at: int) -> None:
    assert got.method == "POST"
    assert got.headers["x-source"] == "billing"
    assert got.headers["content-type"] == "application/json"
    assert got.query_params == {"fixed": ["1"], "page": ["2"], "q": ["x"], "dry": ["true"]}
    assert json.loads(got.body) == {"some": "payload"}
    lateness = got.arrived_at_ms - perform_at
    LATENESS_MS.append(lateness)
    assert 0 <= lateness < ON_TIME_MS, f"arrived {lateness} ms after performAt"


def finished(client: Tasks, task_id: str, timeout: float = 20) -> Task:
    return client.wait(task_id, timeout=timeout, poll_interval=0.1)


def prefect_run(stack: Stack, flow_run_id: str) -> dict[str, Any]:
    response = httpx.get(f"{stack.prefect_api_url}/flow_runs/{flow_run_id}", timeout=10)
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


async def create_concurrently(stack: Stack, bodies: list[dict[str, Any]], concurrency: int = 8) -> list[str]:
    """Create tasks as several clients at once would."""
    limit = asyncio.Semaphore(concurrency)
    async with stack.async_client() as client:

        async def create(body: dict[str, Any]) -> str:
            async with limit:
                return (await client.create(body)).id

        return await asyncio.gather(*(create(body) for body in bodies))


def client_attempts(stack: Stack, task_id: str) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = httpx.get(f"{stack.url}/api/tasks/{task_id}/attempts").json()["data"]
    return data


def prefect_logs(stack: Stack, flow_run_id: str) -> list[str]:
    response = httpx.post(
        f"{stack.prefect_api_url}/logs/filter",
        timeout=10,
        json={"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "sort": "TIMESTAMP_ASC"},
    )
    response.raise_for_status()
    return [entry["message"] for entry in response.json()]


# -- every way in performs the exact request on time ------------------------------------------------------------


def test_rest_create_performs_the_exact_request_on_time(stack: Stack, target: HttpTarget, path: str) -> None:
    perform_at = now_ms() + 1500
    response = httpx.post(f"{stack.url}/api/tasks", json=task_body(target, path, perform_at))
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["status"] == "pending"
    assert created["flowRunId"]

    (got,) = target.wait_for(1, path, timeout=10)
    assert_exact_request(got, perform_at)
    task = wait_until(
        lambda: (t := httpx.get(f"{stack.url}/api/tasks/{created['id']}").json())["status"] == "completed" and t,
        timeout=10,
        what="completed",
    )
    assert task["attempts"] == 1
    assert task["lastResponse"]["status"] == 200
    assert task["lastResponse"]["body"] == "ok"
    assert task["completedAt"] >= got.arrived_at_ms


def test_seed_endpoint_create_performs_the_exact_request_on_time(stack: Stack, target: HttpTarget, path: str) -> None:
    perform_at = now_ms() + 1500
    response = httpx.post(
        f"{stack.url}/api/hexlabs",
        params={"service": "tasks"},
        json={"action": "create", "data": task_body(target, path, perform_at)},
    )
    assert response.status_code == 201, response.text
    task_id = response.json()["data"]["id"]

    (got,) = target.wait_for(1, path, timeout=10)
    assert_exact_request(got, perform_at)

    def read() -> dict[str, Any]:
        answer = httpx.post(f"{stack.url}/api/hexlabs", json={"service": "tasks", "action": "read", "id": task_id})
        data: dict[str, Any] = answer.json()["data"]
        return data

    task = wait_until(lambda: (t := read())["status"] == "completed" and t, timeout=10, what="completed")
    assert task["lastResponse"]["status"] == 200


def test_sync_sdk_create_performs_the_exact_request_on_time(client: Tasks, target: HttpTarget, path: str) -> None:
    perform_at = now_ms() + 1500
    task = client.create(task_body(target, path, perform_at))
    (got,) = target.wait_for(1, path, timeout=10)
    assert_exact_request(got, perform_at)
    done = finished(client, task.id)
    assert done.status == "completed"
    assert done.last_response is not None and done.last_response.status == 200


async def test_async_sdk_create_performs_the_exact_request_on_time(
    async_client: Any, target: HttpTarget, path: str
) -> None:
    perform_at = now_ms() + 1500
    task = await async_client.create(task_body(target, path, perform_at))
    (got,) = await target.await_for(1, path, timeout=10)
    assert_exact_request(got, perform_at)
    done = await async_client.wait(task.id, timeout=20, poll_interval=0.1)
    assert done.status == "completed"
    assert done.last_response.status == 200


def test_cli_create_performs_the_request_and_wait_reports_completed(
    stack: Stack, target: HttpTarget, path: str
) -> None:
    env = {**stack.env, "HEXLABS_TASKS_URL": stack.url}
    command = [
        sys.executable,
        "-m",
        "hexlabs_tasks",
        "create",
        "--url",
        target.url_for(path) + "?fixed=1",
        "--method",
        "post",
        "--header",
        "X-Source: billing",
        "--param",
        "page=2",
        "--param",
        "q=x",
        "--param",
        "dry=true",
        "--body",
        '{"some": "payload"}',
        "--in",
        "2s",
        "--retries",
        "1",
    ]
    created = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=60, check=True, cwd=stack.workdir
    )
    task = json.loads(created.stdout)
    assert task["retries"] == 1

    (got,) = target.wait_for(1, path, timeout=10)
    assert_exact_request(got, task["performAt"])
    waited = subprocess.run(
        [sys.executable, "-m", "hexlabs_tasks", "wait", task["id"], "--timeout", "20"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=stack.workdir,
    )
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["status"] == "completed"


# -- retries -------------------------------------------------------------------------------------------------------


def test_503_twice_then_200_completes_after_three_attempts_spaced_by_the_policy(
    client: Tasks, target: HttpTarget, path: str
) -> None:
    target.respond(path, Reply(503), Reply(503), Reply(200))
    policy = {"backoff": "exponential", "initialDelay": 0.5, "multiplier": 2.0, "jitter": 0}
    task = client.create(task_body(target, path, now_ms(), retryPolicy=policy))
    done = finished(client, task.id)

    assert done.status == "completed"
    assert done.attempts == 3
    arrivals = [r.arrived_at_ms for r in target.received(path)]
    assert len(arrivals) == 3
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert 500 <= gaps[0] < 500 + ON_TIME_MS
    assert 1000 <= gaps[1] < 1000 + ON_TIME_MS
    attempts = client.attempts(task.id)
    assert [a.status for a in attempts] == [503, 503, 200]


def test_404_fails_at_once(client: Tasks, target: HttpTarget, path: str) -> None:
    target.respond(path, Reply(404, body=b"no such hook"))
    task = client.create(task_body(target, path, now_ms(), retries=5))
    done = finished(client, task.id)
    assert done.status == "failed"
    assert done.attempts == 1
    assert "404" in (done.last_error or "")
    assert done.last_response is not None and done.last_response.body == "no such hook"
    assert len(target.received(path)) == 1


def test_target_that_never_answers_times_out_is_retried_and_fails(client: Tasks, target: HttpTarget, path: str) -> None:
    target.respond(path, Reply(hang=True))
    body = task_body(
        target, path, now_ms(), retries=1, request={"timeout": 0.5}, retryPolicy={"initialDelay": 0.2, "jitter": 0}
    )
    task = client.create(body)
    done = finished(client, task.id)
    assert done.status == "failed"
    assert done.attempts == 2
    assert "timed out" in (done.last_error or "")
    assert len(target.received(path)) == 2
    assert all(a.status is None and "timed out" in (a.error or "") for a in client.attempts(task.id))


def test_retry_after_is_honoured(client: Tasks, target: HttpTarget, path: str) -> None:
    target.respond(path, Reply(429, headers={"Retry-After": "2"}), Reply(200))
    task = client.create(task_body(target, path, now_ms(), retryPolicy={"initialDelay": 0.1, "jitter": 0}))
    done = finished(client, task.id)
    assert done.status == "completed"
    first, second = target.received(path)
    assert 2000 <= second.arrived_at_ms - first.arrived_at_ms < 2000 + ON_TIME_MS


# -- update, delete, requeue -----------------------------------------------------------------------------------


def test_update_moves_perform_at_keeping_id_and_flow_run(
    client: Tasks, stack: Stack, target: HttpTarget, path: str
) -> None:
    first_time = now_ms() + 4000
    task = client.create(task_body(target, path, first_time))
    new_time = first_time + 2000
    moved = client.update(task.id, {"performAt": new_time})
    assert (moved.id, moved.flow_run_id, moved.perform_at) == (task.id, task.flow_run_id, new_time)
    run = prefect_run(stack, task.flow_run_id or "")
    assert run["state"]["state_details"]["scheduled_time"].startswith(
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(new_time / 1000))
    )

    (got,) = target.wait_for(1, path, timeout=15)
    LATENESS_MS.append(got.arrived_at_ms - new_time)
    assert 0 <= got.arrived_at_ms - new_time < ON_TIME_MS  # at the new time, not the old one
    done = finished(client, task.id)
    assert (done.status, done.flow_run_id) == ("completed", task.flow_run_id)


def test_delete_before_due_never_performs_and_cancels_the_flow_run(
    client: Tasks, stack: Stack, target: HttpTarget, path: str
) -> None:
    perform_at = now_ms() + 1500
    task = client.create(task_body(target, path, perform_at))
    client.delete(task.id)
    response = httpx.get(f"{stack.url}/api/tasks/{task.id}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert prefect_run(stack, task.flow_run_id or "")["state"]["type"] == "CANCELLED"

    # Wait past the due time plus the lateness bound, checking that nothing arrives meanwhile.
    deadline = perform_at + 2 * ON_TIME_MS
    while now_ms() < deadline:
        assert target.received(path) == []
        time.sleep(0.1)
    assert target.received(path) == []


def test_update_of_running_task_is_a_conflict(client: Tasks, stack: Stack, target: HttpTarget, path: str) -> None:
    target.respond(path, Reply(200, delay=3))
    task = client.create(task_body(target, path, now_ms()))
    wait_until(lambda: client.read(task.id).status == "running", timeout=10, what="running")
    with pytest.raises(TaskConflict):
        client.update(task.id, {"retries": 5})
    response = httpx.patch(f"{stack.url}/api/tasks/{task.id}", json={"retries": 5})
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"
    assert finished(client, task.id).retries == 3  # unchanged


def test_failed_task_queued_again_runs_again(client: Tasks, target: HttpTarget, path: str) -> None:
    target.respond(path, Reply(400), Reply(200))
    task = client.create(task_body(target, path, now_ms()))
    failed = finished(client, task.id)
    assert failed.status == "failed"

    again = client.update(task.id, {"status": "pending"})
    assert (again.status, again.attempts, again.last_error) == ("pending", 0, None)
    assert again.flow_run_id != failed.flow_run_id  # a task queued again gets a new flow run
    done = finished(client, task.id)
    assert (done.status, done.attempts) == ("completed", 1)
    assert len(target.received(path)) == 2
    assert [a.status for a in client.attempts(task.id)] == [400, 200]  # the earlier history is kept


# -- Prefect shows each task -----------------------------------------------------------------------------------


def test_flow_run_mirrors_the_task_in_prefect(client: Tasks, stack: Stack, target: HttpTarget, path: str) -> None:
    target.respond(path, Reply(503), Reply(200))
    body = task_body(target, path, now_ms(), retryPolicy={"initialDelay": 0.2, "jitter": 0})
    task = client.create(body)
    done = finished(client, task.id)
    assert done.status == "completed"

    run = wait_until(
        lambda: (r := prefect_run(stack, task.flow_run_id or ""))["state"]["type"] == "COMPLETED" and r,
        timeout=15,
        what="the flow run Completed",
    )
    assert run["name"] == task.id
    assert "hexlabs-tasks" in run["tags"]
    assert run["parameters"] == {"task_id": task.id}
    logs = wait_until(
        lambda: len(lines := prefect_logs(stack, task.flow_run_id or "")) >= 2 and lines,
        timeout=15,
        what="two attempt log lines",
    )
    assert logs[0].startswith("attempt 1: POST") and "HTTP 503" in logs[0]
    assert logs[1].startswith("attempt 2: POST") and "HTTP 200" in logs[1]
    assert all("payload" not in line and "billing" not in line and "fixed=1" not in line for line in logs)


def test_failed_task_ends_its_flow_run_failed(client: Tasks, stack: Stack, target: HttpTarget, path: str) -> None:
    target.respond(path, Reply(410))
    task = client.create(task_body(target, path, now_ms()))
    assert finished(client, task.id).status == "failed"
    wait_until(
        lambda: prefect_run(stack, task.flow_run_id or "")["state"]["type"] == "FAILED",
        timeout=15,
        what="the flow run Failed",
    )


# -- workers: restarts, and two at once ----------------------------------------------------------------------


def test_worker_restart_while_task_waits_for_its_next_attempt(
    make_stack: StackFactory, target: HttpTarget, path: str
) -> None:
    stack = make_stack(workers=1)
    target.respond(path, Reply(503), Reply(200))
    with stack.client() as client:
        task = client.create(task_body(target, path, now_ms(), retryPolicy={"initialDelay": 3, "jitter": 0}))
        target.wait_for(1, path, timeout=10)
        wait_until(lambda: client.read(task.id).next_attempt_at, timeout=10, what="the retry to be scheduled")
        stack.stop(stack.workers[0], signal.SIGKILL)  # the worker dies while the task waits
        stack.start_worker()
        done = finished(client, task.id, timeout=30)
    assert (done.status, done.attempts) == ("completed", 2)
    assert len(target.received(path)) == 2


def test_worker_killed_mid_attempt_is_taken_over_and_the_task_completes(
    make_stack: StackFactory, target: HttpTarget, path: str
) -> None:
    stack = make_stack(workers=1)
    target.respond(path, Reply(200, delay=30), Reply(200))
    with stack.client() as client:
        task = client.create(task_body(target, path, now_ms(), retryPolicy={"initialDelay": 0.1, "jitter": 0}))
        target.wait_for(1, path, timeout=10)
        stack.stop(stack.workers[0], signal.SIGKILL)
        stack.start_worker()
        done = finished(client, task.id, timeout=40)
        attempts = client.attempts(task.id)
    assert done.status == "completed"
    assert attempts[0].status is None and "stopped before it finished" in (attempts[0].error or "")
    assert attempts[-1].status == 200


@pytest.mark.parametrize("database", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_two_workers_perform_each_of_200_tasks_exactly_once(
    database: str, make_stack: StackFactory, target: HttpTarget, path: str, request: pytest.FixtureRequest
) -> None:
    database_url = request.getfixturevalue("postgres_database")() if database == "postgres" else None
    stack = make_stack(database_url=database_url, workers=2)
    due = now_ms() + 5000
    ids = asyncio.run(create_concurrently(stack, [task_body(target, f"{path}/{n}", due) for n in range(200)]))
    with stack.client() as client:
        wait_until(
            lambda: len([r for r in target.received() if r.path.startswith(path + "/")]) >= 200,
            timeout=90,
            interval=0.2,
            what="200 requests",
        )
        page = wait_until(
            lambda: (p := client.list(status="completed", limit=1000)) and len(p.data) >= 200 and p,
            timeout=60,
            interval=0.5,
            what="200 completed",
        )
    arrived = [r.path for r in target.received() if r.path.startswith(path + "/")]
    twice = {p for p in arrived if arrived.count(p) > 1}
    why = {p: client_attempts(stack, ids[int(p.rsplit("/", 1)[1])]) for p in twice}
    assert sorted(arrived) == sorted(f"{path}/{n}" for n in range(200)), f"performed twice: {why}"  # each once
    assert {t.id for t in page.data} >= set(ids)
    for task in (t for t in page.data if t.id in ids):
        # A task may need a second attempt if a connection failed under the burst, but only one response came.
        responses = [a for a in client_attempts(stack, task.id) if a["status"] is not None]
        assert len(responses) == 1, (task.id, responses)
    stack.close()  # before the session drops its database


def test_a_stopped_worker_gives_its_running_attempt_back_uncounted(
    make_stack: StackFactory, target: HttpTarget, path: str
) -> None:
    stack = make_stack(workers=1)  # HEXLABS_TASKS_SHUTDOWN_GRACE is 3 s in these stacks
    target.respond(path, Reply(200, delay=30), Reply(200))
    with stack.client() as client:
        task = client.create(task_body(target, path, now_ms()))
        target.wait_for(1, path, timeout=10)
        started = time.monotonic()
        assert stack.stop(stack.workers[0], signal.SIGINT, timeout=20) == 0  # Ctrl-C: a clean exit
        assert time.monotonic() - started < 15
        given_back = client.read(task.id)
        assert (given_back.status, given_back.attempts) == ("pending", 0)  # not counted, never ran to the end
        assert given_back.next_attempt_at is not None
        stack.start_worker()
        done = finished(client, task.id)
    assert (done.status, done.attempts) == ("completed", 1)
    assert client_attempts(stack, task.id)[-1]["status"] == 200
